"""`thumbs promote` and `thumbs rollback`: apply the promotion decision to the registry, under its lock.

    thumbs promote --adapter RUN --registry REGISTRY [--name NAME] [--policy promotion.yaml] [--force]
    thumbs rollback --registry REGISTRY [--name NAME]
    thumbs registry set-production VERSION|none --registry REGISTRY [--name NAME]   # repair

`promote` needs the adapter's eval.json (`thumbs evaluate --registry REGISTRY`), so the candidate was
measured against the production adapter that is live now; if production changed since, it refuses.
Every candidate is registered, promoted or rejected, with its decision and reasons. Promoting the
same adapter twice registers it once. A version becomes production (promote's retry, rollback,
set-production) only after its files are checked against its manifest. `set-production` is the repair
for a missing, torn or inconsistent aliases.json: the damaged file is kept beside it, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tempfile
from pathlib import Path
from typing import Callable, Optional

from deploy.registry import (DECISION, Registry, RegistryError, new_aliases, with_canary, with_production,
                             without_production)
from evaluation.evaluate import EVAL_FILE, EvalConfig, evaluate, read_adapter
from evaluation.promotion import PromotionPolicy, decide_promotion
from common.faults import fault_point


def adapter_sha256(adapter: Path) -> str:
    h = hashlib.sha256()
    with (Path(adapter) / "adapter_model.safetensors").open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def evaluate_candidate(adapter: Path, snapshot: Path, registry: Optional[Registry], *, base_model: Optional[str] = None,
                       config: EvalConfig = EvalConfig(), out: Optional[Path] = None,
                       log: Callable[[str], None] = print) -> dict:
    """`evaluate` the candidate together with the registry's production adapter, when there is one."""
    version = registry.aliases()["production"] if registry is not None else None
    if version is None:
        return evaluate(adapter, snapshot, base_model=base_model, config=config, out=out, log=log)
    with tempfile.TemporaryDirectory(prefix="thumbs-eval-") as scratch, \
            registry.checkout(version, Path(scratch)) as incumbent:
        return evaluate(adapter, snapshot, incumbent=incumbent, incumbent_version=version, base_model=base_model,
                        config=config, out=out, log=log)


def promote(adapter: Path, registry: Registry, policy: PromotionPolicy, *, force: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Decide, register the candidate, and make it production if it passed (or `force`). Returns the record."""
    adapter = Path(adapter)
    read_adapter(adapter)
    evaluation = _read_eval(adapter)
    sha = adapter_sha256(adapter)
    with registry.lock():
        aliases = registry.aliases()  # a corrupt or missing aliases.json stops everything here, before any write
        registry.clear_partial(aliases)
        evaluated_against = (evaluation.get("incumbent") or {}).get("version")
        existing = _registered(registry, sha)
        if existing is not None:
            record = dict(registry.read_json(existing, DECISION), version=existing, already_registered=True)
            ever_live = any(e.get("version") == existing for e in aliases["events"])
            if (record["promote"] or record.get("forced")) and not ever_live \
                    and aliases["production"] == evaluated_against:
                # Registered, but the alias write never happened (a crash or I/O error in between): finish it,
                # if its files are still those its manifest lists (a damaged copy never becomes production).
                registry.verify(existing)
                if record.get("rollout") == "canary":
                    log(f"promote: {existing} was registered but its canary never started; "
                        + _start_canary(registry, aliases, existing, policy))
                else:
                    action = "force" if record.get("forced") else "promote"
                    registry.write_aliases(with_production(aliases, existing, action, replaced=aliases["production"]))
                    log(f"promote: {existing} was registered but never made production; it is now")
            else:
                log(f"promote: {adapter} is already registered as {existing}; nothing to do")
            return record
        if evaluated_against != aliases["production"]:
            raise RegistryError(
                f"{adapter}/{EVAL_FILE} compares the candidate with production "
                f"{evaluated_against or '(none)'}, but production is now {aliases['production'] or '(none)'}: "
                f"re-run `thumbs evaluate --adapter {adapter} --snapshot ... --registry {registry.url}`")
        decision = decide_promotion(evaluation["candidate"], evaluation.get("incumbent"), policy)
        # A canary needs a production to compare with, and --force means "make it production now".
        canary = policy.rollout == "canary" and decision.promote and not force and aliases["production"] is not None
        record = dict(decision.to_dict(), adapter_sha256=sha, source=str(adapter), forced=force and not decision.promote,
                      rollout="canary" if canary else "direct")
        registry.start_aliases()  # a new registry's, before its first version
        version = registry.add_version(adapter, record)
        fault_point("promote.before_alias")  # registered, not yet production: a retry finishes it
        live = decision.promote or force
        if canary:
            verdict = _start_canary(registry, aliases, version, policy)
        elif live:
            registry.write_aliases(with_production(aliases, version, "force" if record["forced"] else "promote",
                                                   replaced=aliases["production"]))
    record["version"] = version
    if not canary:
        verdict = ("promoted to production" if decision.promote else
                   "FORCED to production despite failing checks" if live else "rejected (registered, not live)")
    log(f"promote: {version} {verdict}")
    for reason in decision.reasons:
        log(f"  - {reason}")
    return record


def _start_canary(registry: Registry, aliases: dict, version: str, policy: PromotionPolicy) -> str:
    """`version` becomes the canary unless one is running (then it waits, registered and approved); the verdict."""
    running = aliases["canary"]
    if running is not None:
        return (f"passed, and waits: canary {running['version']} is running (started {running['started']}); the "
                "next candidate evaluated after it settles takes its place")
    registry.write_aliases(with_canary(aliases, version, policy.canary.share, secrets.token_hex(8)))
    return (f"passed; now the canary for {policy.canary.share:.0%} of the users beside production "
            f"{aliases['production']}: their thumbs decide (`thumbs canary settle`, nightly)")


def rollback(registry: Registry, log: Callable[[str], None] = print) -> dict:
    """Production ← previous; the version it replaces stays registered, marked rolled back."""
    with registry.lock():
        aliases = registry.aliases()
        if aliases["previous"] is None:
            raise RegistryError(f"registry {registry.url} ({registry.name}) has no previous production version "
                                f"to roll back to (production: {aliases['production'] or 'none'})")
        registry.verify(aliases["previous"])  # a damaged version never becomes production
        new = without_production(aliases)
        registry.write_aliases(new)
    log(f"rollback: production {aliases['production']} -> {new['production']}")
    return new


def set_production(registry: Registry, ref: str, log: Callable[[str], None] = print) -> dict:
    """Repair: make version `ref` production (after checking its files), or with `ref` 'none' record that no
    version is. When aliases.json is missing, torn or inconsistent it is written anew (its history restarts
    here) and the damaged file is kept as aliases.json.damaged-TIME."""
    with registry.lock():
        try:
            aliases = registry.aliases()
        except RegistryError as err:
            kept = registry.keep_damaged_aliases()
            log(f"set-production: {err}".split(". Restore")[0] + (f"; kept as {kept}" if kept else "")
                + "; writing a new aliases.json")
            aliases = new_aliases()
        if ref == "none":
            if aliases["production"] is not None:
                raise RegistryError(f"production is {aliases['production']}: `thumbs rollback` or set-production "
                                    "VERSION change it; `none` only repairs a registry with no production")
            registry.write_aliases(aliases)
            log(f"set-production: registry {registry.url} ({registry.name}) has no production version")
            return aliases
        version = registry.resolve(ref)
        registry.verify(version)
        new = aliases if aliases["production"] == version else \
            with_production(aliases, version, "set-production", replaced=aliases["production"])
        registry.write_aliases(new)
    log(f"set-production: production is {version}")
    return new


def _read_eval(adapter: Path) -> dict:
    path = adapter / EVAL_FILE
    if not path.is_file():
        raise RegistryError(f"{path} not found: run `thumbs evaluate --adapter {adapter} --snapshot ... "
                            "--registry ...` first")
    return json.loads(path.read_text())


def _registered(registry: Registry, sha: str) -> Optional[str]:
    for version in reversed(registry.versions()):  # the newest copy, if a damaged one was registered again
        try:
            decision = registry.read_json(version, DECISION) or {}
        except RegistryError:
            continue  # a damaged decision.json says nothing to trust; the version itself stays as it is
        if decision.get("adapter_sha256") == sha:
            return version
    return None
