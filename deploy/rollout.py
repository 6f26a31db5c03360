"""Which arm of a canary release serves a user: a pure function the application calls on every request.

    from deploy.rollout import assign
    arm = assign(pseudonym, salt=serving["canary"]["salt"], share=serving["canary"]["share"])
    model = serving[arm]["name"]            # the versioned adapter name vLLM serves for that arm
    reply = client.chat.completions.create(model=model, messages=messages, user=pseudonym)
    log_event(..., user_id=pseudonym, model_version=model)  # what ingest reads back: the arm is in the lake

The user is assigned by a salted hash of their pseudonymous id (the id the lake holds, so the live decision can
check each vote's arm), never by request: a user sees one arm for the whole test, and the arms are a random
split of the users, so comparing their thumbs compares the models. A new salt per canary draws new arms. A
request without a user id goes to production: it could not be counted fairly anyway.
"""

from __future__ import annotations

import hashlib
from typing import Optional

PRODUCTION, CANARY = "production", "canary"
_SCALE = float(1 << 64)


def position(user_id: str, salt: str) -> float:
    """The user's place in [0, 1) under this salt: the first 8 bytes of sha256(salt, user id), uniform."""
    digest = hashlib.sha256(f"{salt}\x1f{user_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign(user_id: Optional[str], salt: str, share: float) -> str:
    """`CANARY` for the users whose place falls below `share` (0 to 1), `PRODUCTION` for the others and for a
    request without a user id."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the canary's share must be within [0, 1], got {share}")
    if not user_id:
        return PRODUCTION
    return CANARY if position(user_id, salt) < share else PRODUCTION
