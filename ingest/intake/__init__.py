"""Intake: feedback logs in, validated rows in the Parquet lake out (`thumbs ingest`).

Modules, in reading order:
    records.py     the per-line reference validator (events, pairs, hh): one JSON line to rows or a BadRow
    arrow_path.py  the vectorised path: Arrow parses a block and accepts only rows the reference would accept
    sources.py     reading sources in bounded blocks (gzip sniffed), their sha256, expanding files/folders/globs
    validate.py    one block of lines to accepted rows and quarantined ones: the helpers every format shares
    summary.py     what an ingest did, per source and in total, for a person and as JSON
    job.py         `ingest()` and IngestConfig: sources to the lake, with progress and a summary
    formats/       TRL, Langfuse, LangSmith, OTel GenAI, OpenAI logs turned into events (see its __init__)
"""
