"""The adapter registry: every evaluated adapter, its decision, and which one serves production.

    REGISTRY/<name>/versions/v0001/   adapter files, thumbs_meta.json, eval.json, report.md (+ PNGs), decision.json,
                                      manifest.json (every file's name, size and sha256; written last)
    REGISTRY/<name>/aliases.json      {"production": "v0003", "previous": "v0002", "history": [...], "events": [...]}
    REGISTRY/<name>/.lock             held while anything writes (local); .locks/ on object stores

REGISTRY is a local folder or any fsspec URL (s3://, gs://, memory://, ...; an S3 endpoint from
AWS_ENDPOINT_URL_S3 or FSSPEC_S3_ENDPOINT_URL). Writes are ordered so a crash never changes production:
a version's files are copied, then its manifest.json, and only then is aliases.json replaced (a rename
locally; a single-object PUT, atomic on object stores, elsewhere). A version counts as registered only
when its manifest is there and every file it lists has its size; before a version is served (checkout,
export) or made production by a retried promotion, the files' sha256 are checked too. Object stores
have no rename (fsspec's `mv` is copy-then-delete, one object at a time), so there the files are written
straight into the version's folder and the manifest marks it complete; locally they go to a hidden
temp folder renamed into place, so no half-copied folder is ever visible. `history` is the stack of
versions that served production; rollback pops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, List, Optional

import fsspec

from common.faults import fault_point

DECISION = "decision.json"
ALIASES = "aliases.json"
MANIFEST = "manifest.json"
VERSION_RE = re.compile(r"^v(\d{4,})$")
LOCK_TIMEOUT_S = 120.0
LEASE_ENV = "THUMBS_REGISTRY_LEASE_S"  # how long a dead writer's remote lease blocks others (renewed while alive)
DEFAULT_LEASE_S = 60.0


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
        self._lease: Optional[int] = None  # the remote lease this writer holds

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # --- reading --------------------------------------------------------------------------------------------

    def versions(self) -> List[str]:
        """Registered versions (complete ones only), oldest first."""
        return [n for n in self._version_folders() if self.complete(n)]

    def _version_folders(self) -> List[str]:
        folder = self.path("versions")
        if not self.local:
            self.fs.invalidate_cache()  # another process may have written since this one listed
        if not self.fs.exists(folder):
            return []
        names = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(folder, detail=False)]
        return sorted((n for n in names if VERSION_RE.match(n)), key=lambda n: int(n[1:]))

    def manifest(self, version: str) -> Optional[dict]:
        """The version's manifest.json, or None when it is missing or unreadable (an interrupted copy)."""
        try:
            manifest = json.loads(self.fs.cat_file(self.path("versions", version, MANIFEST)))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None

    def complete(self, version: str) -> bool:
        """Its manifest is written and every file it lists is there with its size (one listing, no reads)."""
        manifest = self.manifest(version)
        if manifest is None:
            return False
        sizes = {posixpath.basename(e["name"].rstrip("/")): e.get("size")
                 for e in self.fs.ls(self.path("versions", version), detail=True)}
        return all(sizes.get(name) == entry["size"] for name, entry in manifest["files"].items())

    def verify(self, version: str, folder: Optional[Path] = None) -> dict:
        """Check every file of `version` (in the registry, or a local copy in `folder`) against the sha256 of
        its manifest; a version that fails is never served nor made production. Returns the manifest."""
        manifest = self.manifest(version)
        where = f"{self.url.rstrip('/')}/{self.name}/versions/{version}"
        if manifest is None:
            raise RegistryError(f"{where} has no readable {MANIFEST}: it is an interrupted copy, not a version")
        for name, entry in manifest["files"].items():
            if folder is not None:
                digest = _sha256(open(Path(folder) / name, "rb"))
            else:
                digest = _sha256(self.fs.open(self.path("versions", version, name), "rb"))
            if digest != entry["sha256"]:
                raise RegistryError(f"{where}/{name} does not match {MANIFEST} (sha256 differs): the version is "
                                    "damaged and will not be served or made production; restore it from a backup, "
                                    "or remove its folder and promote the adapter again")
        return manifest

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
            raise RegistryError(f"{where} names versions that are not registered, or whose files no longer match their "
                                f"{MANIFEST}: {missing}; nothing was changed")
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
            self.verify(version)
            yield Path(source)
            return
        target = Path(scratch) / version
        self.fs.get(source.rstrip("/") + "/", str(target) + "/", recursive=True)
        self.verify(version, target)
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
        # A lease, taken by creating the next object in .locks/ with an atomic create-if-absent (S3
        # If-None-Match: *; a local or memory file opened exclusively): of two writers, one gets the
        # object and the other a FileExistsError. The lease is free when its holder wrote a `.released`
        # marker, or expired: a live holder renews its lease every third of THUMBS_REGISTRY_LEASE_S, so a
        # killed one blocks others for at most that long. Before the alias write `still_holds_lock` checks
        # that the lease was not taken over.
        deadline = time.monotonic() + timeout
        lease_s = float(os.environ.get(LEASE_ENV) or DEFAULT_LEASE_S)
        while True:
            epoch, free = self._lock_epoch()
            if free:
                name = f"{epoch + 1:012d}"
                try:
                    self.fs.pipe_file(self.path(".locks", name), _lease(lease_s), mode="create")
                    break
                except FileExistsError:
                    pass  # another writer took this lease first
            if time.monotonic() > deadline:
                raise RegistryError(f"registry {self.url} ({self.name}) is locked by another writer (lease "
                                    f"{self.path('.locks', f'{epoch:012d}')}); try again later")
            time.sleep(0.5)
        self._lease = epoch + 1
        for old in range(max(1, epoch - 1), epoch):  # leases before the last are history
            for suffix in ("", ".released"):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self.path(".locks", f"{old:012d}{suffix}"))
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(self.path(".locks", f"{epoch + 1:012d}"), lease_s, stop),
                                   daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            self._lease = None
            self.fs.pipe_file(self.path(".locks", f"{epoch + 1:012d}.released"), b"")

    def _renew(self, path: str, lease_s: float, stop: threading.Event) -> None:
        while not stop.wait(lease_s / 3):
            if self.still_holds_lock():
                self.fs.pipe_file(path, _lease(lease_s))

    def _lock_epoch(self) -> tuple:
        """(the newest lease's number, whether it is free to take)."""
        folder = self.path(".locks")
        self.fs.invalidate_cache()
        names = {posixpath.basename(p.rstrip("/")) for p in self.fs.ls(folder, detail=False)} \
            if self.fs.exists(folder) else set()
        epochs = [int(n) for n in names if n.isdigit()]
        if not epochs:
            return 0, True
        epoch = max(epochs)
        if f"{epoch:012d}.released" in names:
            return epoch, True
        try:
            lease = json.loads(self.fs.cat_file(self.path(".locks", f"{epoch:012d}")))
        except (FileNotFoundError, json.JSONDecodeError):
            return epoch, False
        return epoch, time.time() > float(lease.get("expires", 0))

    def still_holds_lock(self) -> bool:
        """Locally always (an OS lock); remotely, whether this writer's lease is still the newest."""
        if self.local or self._lease is None:
            return True
        epoch, _ = self._lock_epoch()
        return epoch == self._lease

    def add_version(self, files: Path, decision: dict) -> str:
        """Copy `files` (a local folder) in as the next version, decision.json and manifest.json last."""
        folders = self._version_folders()
        version = f"v{(int(folders[-1][1:]) + 1) if folders else 1:04d}"
        final = self.path("versions", version)
        # Locally: a hidden temp folder renamed into place. Object stores: no rename to trust, so in place,
        # where the manifest written last is what makes the version exist.
        target = self.path("versions", f".tmp-{version}-{uuid.uuid4().hex[:8]}") if self.local else final
        self.fs.makedirs(target, exist_ok=True)
        entries = {}
        for path in sorted(Path(files).iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.name not in (DECISION, MANIFEST):
                self.fs.put_file(str(path), posixpath.join(target, path.name))
                entries[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path.open("rb"))}
                fault_point("registry.mid_copy")
        data = json.dumps(dict(decision, version=version, registered_at=now()), indent=2).encode()
        self.fs.pipe_file(posixpath.join(target, DECISION), data)
        entries[DECISION] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {"version": version, "files": entries, "written_at": now()}
        self.fs.pipe_file(posixpath.join(target, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
        if self.local:
            os.replace(target, final)
        return version

    def write_aliases(self, aliases: dict) -> None:
        if not self.still_holds_lock():
            raise RegistryError(f"registry {self.url} ({self.name}): this writer's lease expired and another took "
                                "it; production was not changed. Run the command again")
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
        """Copies left by a writer that died mid-copy: temp folders, and version folders with no manifest."""
        folder = self.path("versions")
        if self.fs.exists(folder):
            for path in self.fs.ls(folder, detail=False):
                name = posixpath.basename(path.rstrip("/"))
                if name.startswith(".tmp-") or (VERSION_RE.match(name) and self.manifest(name) is None):
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


def _lease(seconds: float) -> bytes:
    return json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "at": time.time(),
                       "expires": time.time() + seconds}).encode()


def _sha256(handle) -> str:
    digest = hashlib.sha256()
    with handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
