"""Feedback where it already lives: TRL datasets, Langfuse, LangSmith, OpenTelemetry GenAI and OpenAI logs.

One module per format turns its JSON lines into thumbs events (`base.py` says how); `run.py` drives a
run of sources through the same validation, quarantine, pseudonyms and atomic writes as `--format
events`, joining ratings to generations across the run's sources (`join.py`) and earlier runs
(`generations.py`), and rescuing, in a later run, ratings whose generation was missing (`orphans.py`).
Kept free of imports so that `ingest.job` can import `ingest.formats.options` without a cycle.
"""
