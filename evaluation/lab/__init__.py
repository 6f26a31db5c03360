"""The alignment lab: the simulated world's nights through the real ingest, curation and trainer, arm by arm.

    python benchmarks/quality.py --nights 2 --seeds 3 --events 200 --arms poisoning     # or `make lab`

Modules: arms.py (the variants and what each changes: the day's events, curation, training),
nights.py (one variant on one seed: nights of serve → click → ingest → curate → train → ground truth),
report.py (mean and 95% interval over seeds per variant, paired differences, lab/report.md and a plot).
"""
