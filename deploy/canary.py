"""The votes of a canary's window, from the lake's events: which count for which arm.

    window = window_votes(feedback_dataset(lake).to_table(), production="thumbs-v3", canary="thumbs-v4",
                          salt=rollout["salt"], share=rollout["share"], since=rollout["started"])
    decide_canary(window.production, window.canary, days, policy)   # evaluation/canary.py

A vote counts for an arm when that arm's model answered it (the event's `model_version`) and its user is
assigned to that arm (deploy/rollout.py): a request without a user id goes to production but is not a
randomised vote, and neither is one from a user the assignment puts in the other arm. Each user's latest vote on
an answer counts once. What is left out is counted by reason, for the decision's record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from deploy.rollout import CANARY, PRODUCTION, assign
from evaluation.canary import Arm


@dataclass(frozen=True)
class Window:
    production: Arm
    canary: Arm
    left_out: dict  # why votes of the window were not counted -> how many

    def to_dict(self) -> dict:
        return asdict(self)


def window_votes(events: pa.Table, production: str, canary: str, salt: str, share: float,
                 since: datetime) -> Window:
    """Each arm's votes among `events` (lake rows: timestamp, user_id, model_version, prompt, completion,
    desirable) since the canary started: a vote counts for an arm when that arm's model answered and its user is
    assigned to it (`deploy.rollout.assign`, so the comparison stays randomised), and only each user's latest
    vote on an answer counts (a changed mind is one vote, not two)."""
    recent = events.filter(pc.greater_equal(events.column("timestamp"), pa.scalar(since, events.schema.field(
        "timestamp").type)))
    left_out = {"no user id": 0, "another model": 0, "user not assigned to the arm that answered": 0,
                "earlier vote on the same answer": 0}
    served = {production: PRODUCTION, canary: CANARY}
    latest: dict = {}  # (user, model, answer) -> (timestamp, desirable)
    columns = [recent.column(n).to_pylist() for n in ("timestamp", "user_id", "model_version", "prompt",
                                                       "completion", "desirable")]
    for when, user, model, prompt, completion, desirable in zip(*columns):
        arm = served.get(model)
        if arm is None:
            left_out["another model"] += 1
        elif not user:
            left_out["no user id"] += 1
        elif assign(user, salt, share) != arm:
            left_out["user not assigned to the arm that answered"] += 1
        else:
            answer = hashlib.sha256(json.dumps([prompt, completion], sort_keys=True).encode()).hexdigest()
            key = (user, model, answer)
            if key in latest:
                left_out["earlier vote on the same answer"] += 1
            if key not in latest or when >= latest[key][0]:
                latest[key] = (when, desirable)
    up = {model: 0 for model in served}
    down = {model: 0 for model in served}
    for (_, model, _), (_, desirable) in latest.items():
        (up if desirable else down)[model] += 1
    return Window(Arm(up[production], down[production]), Arm(up[canary], down[canary]), left_out)
