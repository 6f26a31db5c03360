"""A canary release's live test: which votes count for which arm, and the nightly look that settles it.

    record = settle(Registry("registry/"), "lake/", PromotionPolicy.load().canary)   # under the registry's lock
    record["outcome"]   # promote | rollback | reject | continue: saved in aliases.json with its numbers and sentence
    stop(Registry("registry/"))                                                      # a person's rollback

`settle` reads the lake's events since the canary started (`window_votes`), decides with
`evaluation.canary.decide_canary` and writes the outcome: promote makes the canary production (the old production
becomes `previous`); rollback and reject end the canary, production untouched; continue keeps it, with its last look.

A vote counts for an arm when that arm's model answered it (the event's `model_version`: the versioned name the
application asked vLLM for, `thumbs-v0004`, from serving.json) and its user is assigned to that arm
(deploy/rollout.py): a request without a user id goes to production but is not a randomised vote, and neither is
one from a user the assignment puts in the other arm. Each user's latest vote on an answer counts once. What is
left out is counted by reason, for the decision's record."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Union

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from deploy.registry import Registry, RegistryError, with_production, without_canary
from deploy.rollout import CANARY, PRODUCTION, assign
from deploy.serving import versioned_name
from evaluation.canary import Arm, CanaryPolicy, decide_canary

WINDOW_COLUMNS = ["timestamp", "user_id", "model_version", "prompt", "completion", "desirable"]


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


def settle(registry: Registry, lake: Union[str, Path], policy: CanaryPolicy, *, alias: str = "thumbs",
           now: Optional[datetime] = None, log: Callable[[str], None] = print) -> Optional[dict]:
    """The night's look at the running canary (None when there is none): decide on the lake's votes since it
    started, write the outcome into aliases.json under the registry's lock, and return the decision's record."""
    from ingest.lake import feedback_dataset

    with registry.lock():
        aliases = registry.aliases()
        canary = aliases["canary"]
        if canary is None:
            log(f"canary: registry {registry.url} ({registry.name}) has no canary running")
            return None
        started = datetime.fromisoformat(canary["started"])
        now = now or datetime.now(timezone.utc)
        names = {"production": versioned_name(alias, aliases["production"]),
                 "canary": versioned_name(alias, canary["version"])}
        dataset = feedback_dataset(lake)
        events = dataset.to_table(columns=WINDOW_COLUMNS, filter=ds.field("timestamp") >= pa.scalar(
            started, dataset.schema.field("timestamp").type))
        window = window_votes(events, names["production"], names["canary"], canary["salt"], canary["share"], started)
        days = (now - started).total_seconds() / 86400
        decision = decide_canary(window.production, window.canary, days, policy)
        record = dict(decision.to_dict(), version=canary["version"], against=aliases["production"],
                      served_as=names, left_out=window.left_out, at=now.isoformat(timespec="seconds"))
        if decision.outcome == "promote":
            registry.verify(canary["version"])  # a damaged version never becomes production
            new = with_production(aliases, canary["version"], "canary-promote", replaced=aliases["production"],
                                  decision=record)
        elif decision.outcome in ("rollback", "reject"):
            new = without_canary(aliases, f"canary-{decision.outcome}", decision=record)
        else:
            new = dict(aliases, canary=dict(canary, last=record))
        registry.write_aliases(new)
    log(f"canary {canary['version']} vs production {aliases['production']}, day {days:.1f}: {decision.outcome}: "
        f"{decision.sentence}")
    return record


def stop(registry: Registry, *, reason: str = "stopped by a person", log: Callable[[str], None] = print) -> dict:
    """Roll the running canary back now: it stops serving, production is untouched. Returns the new aliases."""
    with registry.lock():
        aliases = registry.aliases()
        if aliases["canary"] is None:
            raise RegistryError(f"registry {registry.url} ({registry.name}) has no canary running; production is "
                                f"{aliases['production'] or 'none'} (`thumbs rollback` changes production)")
        new = without_canary(aliases, "canary-rollback", decision={"outcome": "rollback", "sentence": reason})
        registry.write_aliases(new)
    log(f"canary: {aliases['canary']['version']} rolled back ({reason}); production stays "
        f"{aliases['production']}")
    return new


def canary_folder(out: Union[str, Path]) -> Path:
    """Where the running canary's adapter is exported, beside production's export `out`: `<out>.canary`."""
    out = Path(out)
    return out.with_name(f"{out.name}.canary")


def export_canary(registry: Registry, out: Union[str, Path], *, base_model: Optional[str] = None,
                  max_lora_rank: Optional[int] = None, for_vllm: bool = True, protect=(),
                  log: Callable[[str], None] = print) -> Optional[Path]:
    """Export the running canary (peft, for vLLM) to `canary_folder(out)` unless it holds it already, its serving.json
    stating the share, salt and assignment rule; returns the folder. With no canary running, an earlier canary's
    export there is removed (an application reading it would route users to an adapter no longer served), and
    None is returned. `for_vllm`: the export feeds a vLLM server (bases vLLM serves without LoRA refused, as for
    production's export)."""
    from deploy.export import export, holds, remove_export, serving_record

    folder, canary = canary_folder(out), registry.aliases()["canary"]
    if canary is None:
        if serving_record(folder).get("registry") == registry.url:
            remove_export(folder, log)
        return None
    current = serving_record(folder)
    if not holds(current, registry, canary["version"], "peft") or current.get("canary", {}).get("salt") != canary["salt"]:
        export(registry, canary["version"], "peft", folder, base_model=base_model, max_lora_rank=max_lora_rank,
               for_vllm=for_vllm, protect=protect, log=log)
    return folder
