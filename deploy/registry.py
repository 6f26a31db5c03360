"""The adapter registry: every evaluated adapter, its decision, and which one serves production.

    REGISTRY/<name>/versions/v0001/   adapter files, thumbs_meta.json, eval.json, report.md (+ PNGs), decision.json
    REGISTRY/<name>/aliases.json      {"production": "v0003", "previous": "v0002", "history": [...], "events": [...]}
    REGISTRY/<name>/.lock             held while anything writes

REGISTRY is a local folder or any fsspec URL (s3://, gs://, memory://, ...). Writes are ordered so a
crash never changes production: a version is copied under a temp name and renamed into place with
decision.json in it, and only then is aliases.json replaced (a rename locally; a single-object PUT,
atomic on object stores, elsewhere). `history` is the stack of versions that served production;
rollback pops it. A version folder without decision.json is an interrupted copy and is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, List, Optional

import fsspec

DECISION = "decision.json"
ALIASES = "aliases.json"
VERSION_RE = re.compile(r"^v(\d{4,})$")
LOCK_TIMEOUT_S = 120.0
STALE_REMOTE_LOCK_S = 900.0


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; nothing was changed."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Registry:
    def __init__(self, url: str, name: str = "default"):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise RegistryError(f"registry name {name!r}: use letters, digits, '.', '_' and '-'")
        self.url, self.name = str(url), name
        self.fs, root = fsspec.core.url_to_fs(str(url))
        self.root = posixpath.join(root, name)
        self.local = "file" in _protocols(self.fs)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # --- reading --------------------------------------------------------------------------------------------

    def versions(self) -> List[str]:
        """Registered versions (complete ones only), oldest first."""
        folder = self.path("versions")
        if not self.fs.exists(folder):
            return []
        names = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(folder, detail=False)]
        found = [n for n in names if VERSION_RE.match(n) and self.fs.exists(self.path("versions", n, DECISION))]
        return sorted(found, key=lambda n: int(n[1:]))

    def aliases(self) -> dict:
        """aliases.json, validated; an empty registry has no production."""
        path = self.path(ALIASES)
        if not self.fs.exists(path):
            return {"production": None, "previous": None, "history": [], "events": []}
        where = f"{self.url.rstrip('/')}/{self.name}/{ALIASES}"
        try:
            aliases = json.loads(self.fs.cat_file(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RegistryError(f"{where} is corrupt ({err}); nothing was changed. Restore it from a backup, or "
                                "rewrite it from the versions' decision.json files") from err
        history = aliases.get("history") if isinstance(aliases, dict) else None
        if not isinstance(history, list) or not all(isinstance(v, str) for v in history):
            raise RegistryError(f"{where} is corrupt (no list of versions under 'history'); nothing was changed")
        known = set(self.versions())
        missing = sorted(set(history) - known)
        if missing:
            raise RegistryError(f"{where} names versions that are not registered: {missing}; nothing was changed")
        if aliases.get("production") != (history[-1] if history else None) or \
                aliases.get("previous") != (history[-2] if len(history) > 1 else None):
            raise RegistryError(f"{where} is inconsistent: production/previous do not match the history")
        aliases.setdefault("events", [])
        return aliases

    def resolve(self, ref: str) -> str:
        """A version id from 'production', 'previous' or a version id."""
        if ref in ("production", "previous"):
            version = self.aliases()[ref]
            if version is None:
                raise RegistryError(f"registry {self.url} ({self.name}) has no {ref} version yet")
            return version
        if ref not in self.versions():
            raise RegistryError(f"version {ref!r} is not in registry {self.url} ({self.name}); "
                                f"registered: {', '.join(self.versions()) or 'none'}")
        return ref

    def read_json(self, version: str, name: str) -> Optional[dict]:
        path = self.path("versions", version, name)
        return json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else None

    @contextlib.contextmanager
    def checkout(self, version: str, scratch: Path) -> Iterator[Path]:
        """A local folder holding the version's files (the folder itself for a local registry)."""
        source = self.path("versions", version)
        if self.local:
            yield Path(source)
            return
        target = Path(scratch) / version
        self.fs.get(source.rstrip("/") + "/", str(target) + "/", recursive=True)
        yield target

    def listing(self) -> List[dict]:
        """One row per version: date, snapshot, key metrics, decision and status."""
        aliases = self.aliases()
        rolled_back = {e["version"] for e in aliases["events"] if e.get("action") == "rollback"}
        rows = []
        for version in self.versions():
            decision = self.read_json(version, DECISION) or {}
            candidate = (self.read_json(version, "eval.json") or {}).get("candidate") or {}
            if version == aliases["production"]:
                status = "production"
            elif version == aliases["previous"]:
                status = "previous"
            elif version in rolled_back:
                status = "rolled back"
            elif decision.get("promote") or decision.get("forced"):
                status = "retired" if version in _ever_live(aliases) else "approved, not live"
            else:
                status = "rejected"
            rows.append({"version": version, "registered_at": decision.get("registered_at"),
                         "snapshot_id": candidate.get("snapshot_id"), "status": status,
                         "auc": (candidate.get("preference") or {}).get("auc"),
                         "kl_per_token": (candidate.get("drift") or {}).get("kl_per_token"),
                         "reasons": decision.get("reasons", [])})
        return rows

    # --- writing (callers hold `lock()`) ---------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """One writer at a time: an OS file lock locally (released if the holder dies), a lock object elsewhere."""
        self.fs.makedirs(self.root, exist_ok=True)
        if self.local:
            with open(self.path(".lock"), "a+") as handle:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise RegistryError(f"registry {self.url} ({self.name}) is locked by another writer "
                                                f"for over {timeout:.0f}s; try again later") from None
                        time.sleep(0.2)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        with self._remote_lock(timeout):
            yield

    @contextlib.contextmanager
    def _remote_lock(self, timeout: float) -> Iterator[None]:
        # Object stores have no atomic create-if-absent in fsspec's API: write a token, read it back, and
        # treat a lock older than STALE_REMOTE_LOCK_S as abandoned. Good against a second nightly run; the
        # flows' one-retrain-per-model concurrency limit is the real guard.
        path, token = self.path(".lock"), uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        while True:
            held = self.fs.exists(path) and time.time() - _modified(self.fs, path) < STALE_REMOTE_LOCK_S
            if not held:
                self.fs.pipe_file(path, token.encode())
                time.sleep(0.05)
                if self.fs.cat_file(path).decode() == token:
                    break
            if time.monotonic() > deadline:
                raise RegistryError(f"registry {self.url} ({self.name}) is locked by another writer; try again later")
            time.sleep(0.5)
        try:
            yield
        finally:
            if self.fs.exists(path) and self.fs.cat_file(path).decode() == token:
                self.fs.rm_file(path)

    def add_version(self, files: Path, decision: dict) -> str:
        """Copy `files` (a local folder) in as the next version, decision.json last; return the version id."""
        versions = self.versions()
        version = f"v{(int(versions[-1][1:]) + 1) if versions else 1:04d}"
        final, tmp = self.path("versions", version), self.path("versions", f".tmp-{version}-{uuid.uuid4().hex[:8]}")
        self.fs.makedirs(tmp, exist_ok=True)
        for path in sorted(Path(files).iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.name != DECISION:
                self.fs.put_file(str(path), posixpath.join(tmp, path.name))
        decision = dict(decision, version=version, registered_at=now())
        self.fs.pipe_file(posixpath.join(tmp, DECISION), json.dumps(decision, indent=2).encode())
        self.fs.mv(tmp, final, recursive=True)
        return version

    def write_aliases(self, aliases: dict) -> None:
        data = json.dumps(aliases, indent=2).encode()
        if self.local:
            tmp = self.path(f".{ALIASES}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(ALIASES))
        else:
            self.fs.pipe_file(self.path(ALIASES), data)  # one PUT: readers see the old or the new object

    def clear_partial(self) -> None:
        """Temp copies left by a writer that died mid-copy."""
        folder = self.path("versions")
        if self.fs.exists(folder):
            for path in self.fs.ls(folder, detail=False):
                if posixpath.basename(path.rstrip("/")).startswith(".tmp-"):
                    self.fs.rm(path, recursive=True)


def with_production(aliases: dict, version: str, action: str, **detail) -> dict:
    history = aliases["history"] + [version]
    return {"production": version, "previous": history[-2] if len(history) > 1 else None, "history": history,
            "events": aliases["events"] + [dict(at=now(), action=action, version=version, **detail)]}


def without_production(aliases: dict) -> dict:
    """Rollback: production ← previous, and previous ← the version before it."""
    history = aliases["history"][:-1]
    return {"production": history[-1], "previous": history[-2] if len(history) > 1 else None, "history": history,
            "events": aliases["events"] + [dict(at=now(), action="rollback", version=aliases["production"],
                                                 restored=history[-1])]}


def _ever_live(aliases: dict) -> set:
    return {e["version"] for e in aliases["events"] if e.get("action") in ("promote", "force")}


def _protocols(fs) -> tuple:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _modified(fs, path: str) -> float:
    info = fs.info(path)
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created") or info.get("updated")
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return float(stamp) if stamp else time.time()
