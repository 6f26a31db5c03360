"""Feedback where it already lives: TRL datasets, Langfuse, LangSmith, OpenTelemetry GenAI and OpenAI logs.

One module per format turns its JSON lines into thumbs events (`base.py` says how); `batch.py` drives a
batch of sources through the same validation, quarantine, pseudonyms and atomic writes as `--format
events`, joining ratings to generations across the batch's sources (`join.py`) and earlier batches
(`generations.py`), and rescuing, in a later batch, ratings whose generation was missing (`orphans.py`).
Kept free of imports so that `ingest.intake.job` can import `ingest.intake.formats.options` without a cycle.
"""
