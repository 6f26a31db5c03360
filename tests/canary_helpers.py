"""Feedback as an application logs it during a canary release, for the canary tests."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from deploy.registry import Registry
from deploy.rollout import assign
from ingest.privacy import INSECURE_DEV_KEY, Pseudonymizer


def canary_votes(path: Path, registry: Registry, arms: dict, users: int, alias: str = "thumbs") -> None:
    """An events file of `users` users, each assigned by deploy/rollout.py on their pseudonym (the dev key's) and
    answered by their arm's versioned model, now; `arms` (arm -> thumbs-up rate) sets how each arm's users vote,
    evenly spread within the arm, so the rates hold whatever the canary's random salt."""
    aliases = registry.aliases()
    canary = aliases["canary"]
    served = {"production": f"{alias}-{aliases['production']}", "canary": f"{alias}-{canary['version']}"}
    pseudonym, when = Pseudonymizer(INSECURE_DEV_KEY.encode()), datetime.now(timezone.utc).isoformat()
    lines, seen = [], {"production": 0, "canary": 0}
    for i in range(users):
        arm = assign(pseudonym(f"user-{i}"), canary["salt"], canary["share"])
        seen[arm] += 1
        up = (seen[arm] * 0.618034) % 1 < arms[arm]
        lines.append(json.dumps({"event_id": f"{path.stem}-{i}", "timestamp": when, "user_id": f"user-{i}",
                                 "model_version": served[arm], "prompt": f"{path.stem}: question {i}",
                                 "completion": f"answer {i}", "label": "up" if up else "down"}))
    path.write_text("\n".join(lines) + "\n")
