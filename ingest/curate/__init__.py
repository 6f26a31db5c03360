"""Curation: the lake in, a snapshot (train/eval Parquet, KTO's λD and λU) out, on Apache Beam (`thumbs curate`).

Modules, in reading order:
    keys.py        example keys (NFC + whitespace folding) and stable hashes
    vote_caps.py   the poisoning defence: per-user vote caps and votes per example
    rules.py       CurateConfig and the curation rules on Arrow tables: dedupe, votes, filters, split, counts
    balance.py     KTO's class weights λD, λU from the class counts (pure)
    pipeline.py    `curate()`: the Beam job around rules.py, snapshot ids, publishing
    snapshot.py    a snapshot's layout on disk: every reader and writer of a snapshot goes through it
    manifest.py    a snapshot that proves itself: its manifest and the checks against its stats
    store.py       snapshots on an object store: published whole, read back verified
    portable.py    Beam's portable runner on this machine (job service + worker pool), for tests
"""
