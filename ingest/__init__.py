"""Feedback in, curated snapshots out: parse and validate logs into the Parquet lake, then curate it on Beam.

Modules, in reading order:
    schema.py      the lake's Arrow schemas, the label vocabulary and the quarantine reason codes
    records.py     the per-line reference validator (events, pairs, hh): one JSON line to rows or a BadRow
    arrow_path.py  the vectorised path: Arrow parses a block and accepts only rows the reference would accept
    sources.py     reading sources in bounded blocks (gzip sniffed), their sha256, expanding files/folders/globs
    privacy.py     HMAC pseudonyms for user ids, e-mail and phone masking
    lake.py        the lake on disk: partitions, quarantine, the record of ingested sources, atomic Parquet
    job.py         `thumbs ingest`: sources → lake, with progress and a summary
    formats/       TRL, Langfuse, LangSmith, OTel GenAI, OpenAI logs turned into events (see its __init__)
    keys.py        example keys (NFC + whitespace folding) and stable hashes
    balance.py     KTO's class weights λD, λU from the class counts (pure)
    curation.py    the curation logic on Arrow tables: dedupe, votes, filters, split, counts
    curate.py      `thumbs curate`: the Beam job around curation.py, snapshot ids, publishing
    snapshot.py    a snapshot's layout on disk: every reader and writer of a snapshot goes through it
    manifest.py    a snapshot that proves itself: its manifest and the checks against its stats
    remote.py      the lake and snapshots on an object store (s3://): a local mirror, commit marks uploaded last
    portable.py    Beam's portable runner on this machine (job service + worker pool), for tests
    progress.py    progress lines for long jobs
    cli.py         the `thumbs ingest` and `thumbs curate` commands
"""
