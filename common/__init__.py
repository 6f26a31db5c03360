"""Small pieces every stage shares, with no stage's knowledge in them: nothing here imports ingest/, training/,
evaluation/, deploy/ or flows/, and nothing imports Prefect or torch.

Modules, in reading order:
    atomic.py      files that appear whole or not at all: write under a hidden temp name, fsync, rename
    configfile.py  typed config dataclasses from defaults → a YAML/JSON file → overrides; unknown keys refused
    faults.py      named fault points for the fault-injection tests, and one clear error for a full disk
    leases.py      writer leases on an object store (create-if-absent objects that expire): registry and lake
"""
