"""Held-out metrics of a trained adapter against production, and the promotion decision.

Modules, in reading order:
    metrics.py    ROC AUC, accuracy and stratified bootstrap intervals (pure numpy)
    scoring.py    implied rewards and exact KL per eval example, all adapters on one copy of the base
    generate.py   answers rendered as training rendered prompts: length drift and task suites
    suites.py     task-suite JSONL: load and score
    report.py     report.md and its PNG plots
    evaluate.py   `thumbs evaluate`'s work: eval.json for the candidate and the incumbent
    promotion.py  decide_promotion(candidate, incumbent, policy) -> Decision, pure; promotion.yaml holds the policy
    world/        the simulated world of `make demo`: users with a hidden taste, their clicks, the ground truth
"""
