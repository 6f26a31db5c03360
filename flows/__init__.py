"""Prefect orchestration of the nightly retrain, and nothing else: the stage packages hold the logic.

Modules, in reading order:
    config.py       thumbs.yaml: the stages' configs composed (the flow's parameters, the UI's form), with
                    each value's source (default, file, flag, UI)
    stages.py       StageFailed and `stage`: a failing stage names itself in the run's message
    lock.py         one retrain at a time per model (a Prefect global concurrency limit)
    nightly.py      the flow `thumbs-nightly-retrain`, one task per stage, and `thumbs-train`
    artifacts.py    the eval table, decision and report as Prefect artifacts
    run.py          `thumbs run` (embedded server), `thumbs config show` and `thumbs unlock`
    deployments.py  `thumbs ui` / `thumbs deploy`: nightly (cron), ad hoc and training deployments
    demo.py         `make demo`: simulated nights of the real loop (the world is in evaluation/world/)
    cli.py          the `thumbs` command: every stage's sub-command
"""

import os

# Before anything here imports Prefect (a package's __init__ runs before its modules): every entry point, `thumbs`,
# `make demo` and the tests alike, runs Prefect's embedded server when no PREFECT_API_URL is set (a profile may have
# turned it off), and a first start creates its database: 8-30 s on a busy 2-core box, over Prefect's default 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
