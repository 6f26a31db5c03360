"""Feedback in, curated snapshots out: two stages, and the storage they share.

    intake/        `thumbs ingest`: parse and validate logs (six formats) into the Parquet lake
    curate/        `thumbs curate`: the lake to a train/eval snapshot and KTO's class weights, on Beam

Shared by both (neither imports the other):
    schema.py      the lake's Arrow schemas, the label vocabulary and the quarantine reason codes
    lake.py        the lake on disk: partitions, quarantine, the record of ingested sources, atomic Parquet
    remote.py      the lake on an object store (s3://): a local mirror, commit marks uploaded last
    privacy.py     HMAC pseudonyms for user ids, e-mail and phone masking
    progress.py    progress lines for long jobs
    cli.py         the `thumbs ingest` and `thumbs curate` commands
"""
