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

Nothing read back is trusted blindly, and nothing damaged is "cleaned": every reader of a version
(checkout, export, rollback, a retried promotion, `registry list`'s integrity column, any JSON file of it)
checks the files it uses against the version's manifest (size and sha256) first, and a damaged version
gives one error naming the file and the repair; it is never deleted. aliases.json is written before a
registry's first version, so a registry holding versions without a readable aliases.json is damaged
(not new): every command refuses it until `thumbs registry set-production` (or a restored file) repairs
it. The only copies ever removed are those this writer provably left half-done: a hidden `.tmp-` folder
locally, and on object stores a version folder named by its `.staging/` marker that never got its manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
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

from common.faults import fault_point
from common.leases import held, lease_body, newest_lease

DECISION = "decision.json"
ALIASES = "aliases.json"
MANIFEST = "manifest.json"
STAGING = ".staging"  # object stores: one marker per version being copied in place, removed after its manifest
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

    def location(self, *parts: str) -> str:
        """A path of the registry as the user wrote it (URL and name), for messages."""
        return "/".join((self.url.rstrip("/"), self.name, *parts))

    def repair_hint(self) -> str:
        return (f"`thumbs registry set-production VERSION --registry {self.url} --name {self.name}` makes a version "
                "that `thumbs registry list` shows as ok production (VERSION `none`: no production yet)")

    def manifest(self, version: str) -> Optional[dict]:
        """The version's manifest.json, or None when it is missing or unreadable."""
        try:
            manifest = json.loads(self.fs.cat_file(self.path("versions", version, MANIFEST)))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or not all(_plain_name(n) and isinstance(e, dict) for n, e in files.items()):
            return None
        return manifest

    def complete(self, version: str) -> bool:
        """Its manifest is written and every file it lists is there with its size (one listing, no reads)."""
        manifest = self.manifest(version)
        if manifest is None:
            return False
        sizes = {posixpath.basename(e["name"].rstrip("/")): e.get("size")
                 for e in self.fs.ls(self.path("versions", version), detail=True)}
        return all(sizes.get(name) == entry.get("size") for name, entry in manifest["files"].items())

    def verify(self, version: str, folder: Optional[Path] = None) -> dict:
        """Check every file of `version` (in the registry, or a local copy in `folder`) against the size and
        sha256 of its manifest; a version that fails is never served nor made production. Returns the manifest."""
        manifest = self._manifest_or_damage(version)
        for name, entry in manifest["files"].items():
            self._check_file(version, name, entry, folder)
        return manifest

    def check(self, version: str) -> Optional[str]:
        """What is wrong with `version` (the error `verify` would raise), or None when every byte is as listed."""
        try:
            self.verify(version)
        except RegistryError as err:
            return str(err)
        return None

    def _manifest_or_damage(self, version: str) -> dict:
        manifest = self.manifest(version)
        if manifest is None:
            raise RegistryError(f"{self.location('versions', version, MANIFEST)} is missing or unreadable: "
                                f"{self._damage(version)}")
        return manifest

    def _check_file(self, version: str, name: str, entry: dict, folder: Optional[Path] = None) -> bytes:
        """The file's bytes when `folder` is None and it is small JSON; raises when it does not match."""
        where = self.location("versions", version, name)
        try:
            handle = open(Path(folder) / name, "rb") if folder is not None else \
                self.fs.open(self.path("versions", version, name), "rb")
            size, digest, data = _digest(handle, keep=name.endswith(".json"))
        except FileNotFoundError:
            raise RegistryError(f"{where} is missing: {self._damage(version)}") from None
        if size != entry.get("size") or digest != entry.get("sha256"):
            raise RegistryError(f"{where} does not match {MANIFEST} (size or sha256 differs): {self._damage(version)}")
        return data

    def _damage(self, version: str) -> str:
        return (f"version {version} is damaged, so it is not served, exported nor made production (it is kept as "
                f"it is, never deleted). Restore {self.location('versions', version)} from a backup; or "
                + self.repair_hint().replace("makes a version", "makes another version", 1))

    def aliases(self) -> dict:
        """aliases.json, validated; a new registry (no versions) has no production."""
        path, where = self.path(ALIASES), self.location(ALIASES)
        if not self.local:
            self.fs.invalidate_cache()
        if not self.fs.exists(path):
            folders = self._version_folders()
            if not folders:
                return new_aliases()
            raise RegistryError(f"{where} is missing, but the registry holds versions ({', '.join(folders)}): "
                                "which one is production is unknown, so nothing was changed. Restore the file "
                                f"from a backup, or {self.repair_hint()}")
        try:
            aliases = json.loads(self.fs.cat_file(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RegistryError(f"{where} is corrupt ({err}); nothing was changed. Restore it from a backup, "
                                f"or {self.repair_hint()}") from err
        history = aliases.get("history") if isinstance(aliases, dict) else None
        if not isinstance(history, list) or not all(isinstance(v, str) for v in history) or \
                not isinstance(aliases.get("events", []), list):
            raise RegistryError(f"{where} is corrupt (no list of versions under 'history'); nothing was changed. "
                                f"Restore it from a backup, or {self.repair_hint()}")
        missing = sorted(set(history) - set(self._version_folders()))
        if missing:
            raise RegistryError(f"{where} names versions that are not in the registry: {missing}; nothing was "
                                f"changed. Restore their folders from a backup, or {self.repair_hint()}")
        if aliases.get("production") != (history[-1] if history else None) or \
                aliases.get("previous") != (history[-2] if len(history) > 1 else None):
            raise RegistryError(f"{where} is inconsistent: production/previous do not match the history; nothing "
                                f"was changed. Restore it from a backup, or {self.repair_hint()}")
        aliases.setdefault("events", [])
        canary = aliases.setdefault("canary", None)
        if canary is not None and not _valid_canary(canary, self._version_folders()):
            raise RegistryError(f"{where} has a damaged canary entry ({json.dumps(canary)[:200]}); nothing was changed. "
                                f"Restore it from a backup, or {self.repair_hint()}")
        return aliases

    def resolve(self, ref: str) -> str:
        """A version id from 'production', 'previous' or a version id."""
        if ref in ("production", "previous"):
            version = self.aliases()[ref]
            if version is None:
                raise RegistryError(f"registry {self.url} ({self.name}) has no {ref} version yet")
            return version
        if ref not in self._version_folders():  # a damaged version resolves: its reader says what is wrong
            raise RegistryError(f"version {ref!r} is not in registry {self.url} ({self.name}); "
                                f"registered: {', '.join(self.versions()) or 'none'}")
        return ref

    def read_json(self, version: str, name: str) -> Optional[dict]:
        """A JSON file of the version, checked against its manifest first; None when the version has none."""
        entry = self._manifest_or_damage(version)["files"].get(name)
        return None if entry is None else json.loads(self._check_file(version, name, entry))

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
        """One row per version folder: date, snapshot, key metrics, decision, status and integrity ("ok", or
        what is damaged: every file is checked against the manifest)."""
        aliases = self.aliases()
        rolled_back = {e["version"] for e in aliases["events"] if e.get("action") == "rollback"}
        canary_ends = {e["version"]: e for e in aliases["events"] if e.get("action") in CANARY_ENDS}
        running = aliases["canary"] or {}
        staged = set(self._staged())
        rows = []
        for version in self._version_folders():
            problem = "a copy in progress, or interrupted (the next promote removes it)" if version in staged \
                else self.check(version)
            decision = self.read_json(version, DECISION) or {} if problem is None else {}
            candidate = ((self.read_json(version, "eval.json") or {}) if problem is None else {}).get("candidate") or {}
            if version == aliases["production"]:
                status = "production"
            elif version == running.get("version"):
                status = f"canary ({running['share']:.0%} of users since {running['started']})"
            elif version == aliases["previous"]:
                status = "previous"
            elif version in rolled_back:
                status = "rolled back"
            elif version in canary_ends and canary_ends[version]["action"] != "canary-promote":
                status = "canary rolled back" if canary_ends[version]["action"] == "canary-rollback" \
                    else "canary withdrawn"
            elif decision.get("promote") or decision.get("forced"):
                status = "retired" if version in _ever_live(aliases) else "approved, not live"
            else:
                status = "rejected" if problem is None else "unknown (damaged)"
            rows.append({"version": version, "registered_at": decision.get("registered_at"),
                         "snapshot_id": candidate.get("snapshot_id"), "status": status,
                         "integrity": "ok" if problem is None else "copying" if version in staged else "damaged",
                         "problem": problem,
                         "auc": (candidate.get("preference") or {}).get("auc"),
                         "kl_per_token": (candidate.get("drift") or {}).get("kl_per_token"),
                         "reasons": decision.get("reasons", []),
                         "canary": _canary_sentence(version, running, canary_ends)})
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
                    self.fs.pipe_file(self.path(".locks", name), lease_body(lease_s), mode="create")
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
        try:
            with held(self.fs, self.path(".locks", f"{epoch + 1:012d}"), lease_s, still_mine=self.still_holds_lock):
                yield
        finally:
            self._lease = None

    def _lock_epoch(self) -> tuple:
        """(the newest lease's number, whether it is free to take)."""
        return newest_lease(self.fs, self.path(".locks"))

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
        if not self.local:  # the proof that a half-written `version` is this writer's, for clear_partial
            self.fs.pipe_file(self.path(STAGING, version), lease_body(0))
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
        else:
            self.fs.rm_file(self.path(STAGING, version))
        return version

    def write_aliases(self, aliases: dict) -> None:
        if not self.still_holds_lock():
            raise RegistryError(f"registry {self.url} ({self.name}): this writer's lease expired and another took "
                                "it; production was not changed. Run the command again")
        self._put_aliases(json.dumps(aliases, indent=2).encode())

    def start_aliases(self) -> None:
        """A new registry's aliases.json (no production), written before its first version: from then on a
        registry holding versions without a readable aliases.json is known to be damaged, not new."""
        if not self.fs.exists(self.path(ALIASES)):
            self._put_aliases(json.dumps(new_aliases(), indent=2).encode())

    def _put_aliases(self, data: bytes) -> None:
        if self.local:
            tmp = self.path(f".{ALIASES}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(ALIASES))
        else:
            self.fs.pipe_file(self.path(ALIASES), data)  # one PUT: readers see the old or the new object

    def keep_damaged_aliases(self) -> Optional[str]:
        """Before set-production rewrites a damaged aliases.json: a copy of it beside it (evidence, and what a
        person may rebuild the history from). Returns its location, None when there is no file."""
        path = self.path(ALIASES)
        if not self.fs.exists(path):
            return None
        name = f"{ALIASES}.damaged-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.fs.pipe_file(self.path(name), self.fs.cat_file(path))
        return self.location(name)

    def clear_partial(self, aliases: dict) -> None:
        """Remove the copies a writer of this registry provably left half-done (callers hold the lock):
        locally its hidden `.tmp-` folders (a version folder only ever appears by a rename); on object stores
        a version folder its `.staging/` marker names that never got its manifest, unless `aliases` names it.
        A version folder that is damaged but carries no such proof is reported by its readers, never removed."""
        if self.local:
            folder = self.path("versions")
            for path in self.fs.ls(folder, detail=False) if self.fs.exists(folder) else []:
                if posixpath.basename(path.rstrip("/")).startswith(".tmp-v"):
                    self.fs.rm(path, recursive=True)
            return
        for version in self._staged():
            folder = self.path("versions", version)
            if version not in aliases["history"] and not self.fs.exists(posixpath.join(folder, MANIFEST)) \
                    and self.fs.exists(folder):
                self.fs.rm(folder, recursive=True)
            self.fs.rm_file(self.path(STAGING, version))

    def _staged(self) -> List[str]:
        """Versions a writer began copying in place on an object store and has not finished (their markers)."""
        folder = self.path(STAGING)
        if self.local or not self.fs.exists(folder):
            return []
        names = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(folder, detail=False)]
        return sorted(n for n in names if VERSION_RE.match(n))


def new_aliases() -> dict:
    """A registry's aliases before anything was promoted."""
    return {"production": None, "previous": None, "history": [], "events": [], "canary": None}


def with_production(aliases: dict, version: str, action: str, **detail) -> dict:
    """`version` becomes production (a running canary keeps running, unless it is that version)."""
    history = aliases["history"] + [version]
    canary = aliases.get("canary")
    return dict(aliases, production=version, previous=history[-2] if len(history) > 1 else None, history=history,
                canary=None if canary and canary["version"] == version else canary,
                events=aliases["events"] + [dict(at=now(), action=action, version=version, **detail)])


def without_production(aliases: dict) -> dict:
    """Rollback: production ← previous, and previous ← the version before it."""
    history = aliases["history"][:-1]
    return dict(aliases, production=history[-1], previous=history[-2] if len(history) > 1 else None, history=history,
                events=aliases["events"] + [dict(at=now(), action="rollback", version=aliases["production"],
                                                 restored=history[-1])])


CANARY_ENDS = ("canary-promote", "canary-rollback", "canary-reject")  # the events that close a canary


def with_canary(aliases: dict, version: str, share: float, salt: str, **detail) -> dict:
    """`version` starts serving `share` of the users beside production (deploy/rollout.py assigns them by `salt`)."""
    canary = {"version": version, "share": share, "salt": salt, "started": now(), "against": aliases["production"]}
    return dict(aliases, canary=canary, events=aliases["events"] + [
        dict(at=canary["started"], action="canary-start", version=version, share=share, **detail)])


def without_canary(aliases: dict, action: str, **detail) -> dict:
    """The canary stops serving (`action`: canary-rollback or canary-reject); production is untouched."""
    return dict(aliases, canary=None, events=aliases["events"] + [
        dict(at=now(), action=action, version=aliases["canary"]["version"], **detail)])


def _canary_sentence(version: str, running: dict, ends: dict) -> Optional[str]:
    """The live test's last word on `version`: the running canary's last look, or the decision that ended it."""
    if running.get("version") == version:
        return (running.get("last") or {}).get("sentence") or "started; no look yet"
    end = ends.get(version)
    return None if end is None else (end.get("decision") or {}).get("sentence") or end["action"]


def _valid_canary(canary, folders: List[str]) -> bool:
    return (isinstance(canary, dict) and canary.get("version") in folders and isinstance(canary.get("salt"), str)
            and bool(canary["salt"]) and isinstance(canary.get("share"), (int, float)) and 0 < canary["share"] < 1
            and isinstance(canary.get("started"), str))


def _ever_live(aliases: dict) -> set:
    return {e["version"] for e in aliases["events"]
            if e.get("action") in ("promote", "force", "set-production", "canary-promote")}


def _protocols(fs) -> tuple:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)



def _sha256(handle) -> str:
    return _digest(handle)[1]


def _digest(handle, keep: bool = False) -> tuple:
    """(size, sha256, the bytes when `keep` else b"") of an open binary file, read in blocks; closes it."""
    digest, size, kept = hashlib.sha256(), 0, []
    with handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
            size += len(block)
            if keep:
                kept.append(block)
    return size, digest.hexdigest(), b"".join(kept)


def _plain_name(name) -> bool:
    """A manifest entry names a file of the version's own folder, never a path out of it."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
