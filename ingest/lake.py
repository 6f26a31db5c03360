"""The lake on disk: Hive-partitioned feedback Parquet, quarantine, and the records of ingested sources.

    LAKE/feedback/date=YYYY-MM-DD/part-<source sha256[:16]>-<file sha256[:16]>.parquet   accepted events, zstd
    LAKE/quarantine/<source sha256[:16]>-<file sha256[:16]>.parquet                      bad rows with their reasons
    LAKE/_sources/<source sha256>.json                                                   one per finished source

Every artefact carries its proof. A source's record is written last and is its commit: it lists each file
the source committed with its rows, bytes and sha256, and the fingerprint of the pseudonym key that made
its user ids. Readers (`feedback_dataset`, `quarantine_table`, curate's `partition_files`) take only the
files a record lists, each checked against it first; Parquet is written with page checksums and read with
them verified. A missing or damaged file, or a torn record, raises one `LakeError` naming the file and the
command that repairs it: `thumbs ingest --force SOURCE --lake LAKE` writes the source afresh and switches
to it with the one rename of its record.

Files are written under a hidden temporary name and renamed into place. Their names end in their content's
hash, so a re-run writes the same names for the same bytes, and a forced re-ingest never renames over a
file the current record lists with other bytes. A run killed before its record left files no record lists:
never read, removed by the next run of that source. A run holds its source's claim (`claim`: an OS lock on
LAKE/.locks/<sha256>.lock, released if the holder dies) from "already ingested?" to its record: two runs
of one source take turns, the second finds it ingested, and neither removes a file the other committed.

Records written before checksums (no `files`) are still read, by their files' name prefix, unchecked, with
a notice on stderr saying how to give them their proof (`thumbs ingest --force SOURCE`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import sys
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from common.atomic import write_json_atomic
from common.faults import disk_full, fault_point
from ingest.privacy import INSECURE_DEV_KEY
from ingest.schema import FEEDBACK_SCHEMA, QUARANTINE_SCHEMA

FEEDBACK_DIR = "feedback"
QUARANTINE_DIR = "quarantine"
SOURCES_DIR = "_sources"
LOCKS_DIR = ".locks"  # hidden: no reader, listing or upload takes it
GENERATIONS_DIR = "_generations"  # ingest/intake/formats/generations.py's store; its files are listed in records too
COMPRESSION = "zstd"
RECORD_VERSION = 2  # 2: records list their files with sha256 and the pseudonym key's fingerprint


class LakeError(ValueError):
    """A lake file missing, damaged or disagreeing with its record; the message names it and the repair."""


def key_fingerprint(key: bytes) -> str:
    """Which pseudonym key made a source's user ids, without revealing the key."""
    return hmac.new(key, b"thumbs-key-fingerprint", hashlib.sha256).hexdigest()[:16]


def _key_name(fingerprint: str) -> str:
    dev = fingerprint == key_fingerprint(INSECURE_DEV_KEY.encode("utf-8"))
    return f"{fingerprint} (the public dev key)" if dev else fingerprint


def file_proof(path: Path) -> dict:
    """{bytes, sha256} of a file, as records hold them."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def parquet_format() -> ds.ParquetFileFormat:
    """Parquet as lake readers read it: every page checked against its checksum."""
    return ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
        page_checksum_verification=True))


class AtomicParquet:
    """A Parquet file, with page checksums, that appears under its name only when `commit` is called.

    `content_named`: the name gets the first 16 hex digits of the file's sha256 (`x.parquet` becomes
    `x-<hash>.parquet`), so a commit never renames over a file of other bytes."""

    def __init__(self, path: Path, schema: pa.Schema, content_named: bool = False):
        self.path = path
        self.content_named = content_named
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        with disk_full(path):
            self._writer = pq.ParquetWriter(self._tmp, schema, compression=COMPRESSION, write_page_checksum=True)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            with disk_full(self.path):
                self._writer.write_table(table)
            self.rows += table.num_rows

    def commit(self) -> dict:
        """Rename into place (`path` becomes the final name); returns the proof {rows, bytes, sha256}."""
        with disk_full(self.path):
            self._writer.close()
            with open(self._tmp, "rb") as f:
                os.fsync(f.fileno())
        proof = {"rows": self.rows, **file_proof(self._tmp)}
        if self.content_named:
            self.path = self.path.with_name(f"{self.path.stem}-{proof['sha256'][:16]}{self.path.suffix}")
        os.replace(self._tmp, self.path)
        return proof

    def abort(self) -> None:
        """Remove the temporary file; a committed file is not this object's to remove."""
        try:
            self._writer.close()
        except OSError:  # the disk that failed a write may fail the close too; the file goes anyway
            pass
        self._tmp.unlink(missing_ok=True)


# --- claims: one run per source at a time -------------------------------------------------------------------

@dataclass
class Claim:
    """This process's hold on one source of one lake, and what the run writes it under."""
    lake: Path
    sha: str
    key_fingerprint: str
    replace: bool  # --force: write the source again even though it is recorded
    thread: int  # the thread that holds it


_claims: dict[tuple[str, str], Claim] = {}


def _claim_key(lake: Path | str, sha: str) -> tuple[str, str]:
    return str(Path(lake).resolve()), sha


def _lock(path: Path) -> int:
    """An exclusive OS lock on `path` (created if missing), waiting for another holder; returns its fd."""
    told = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a holder removed the empty folder as it left
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not told:
                print(f"ingest: another run is ingesting source {path.name[:12]}; waiting for it", file=sys.stderr)
                told = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # the holder removes the file before unlocking: a lock on a removed file locks nothing
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def claim(lake: Path | str, sha: str, key_fingerprint: str, replace: bool = False) -> Iterator[Claim]:
    """Hold source `sha` of `lake` for this run (waits while another process holds it)."""
    key = _claim_key(lake, sha)
    if key in _claims and _claims[key].thread == threading.get_ident():
        raise RuntimeError(f"source {sha[:12]} is claimed twice by one thread")  # it would wait for itself
    path = Path(lake) / LOCKS_DIR / f"{sha}.lock"
    fd = _lock(path)  # an OS lock per open file: threads of one process take turns too
    _claims[key] = Claim(Path(lake), sha, key_fingerprint, replace, threading.get_ident())
    try:
        yield _claims[key]
    finally:
        del _claims[key]
        path.unlink(missing_ok=True)  # still locked: a waiter sees its file gone and locks afresh
        os.close(fd)
        with contextlib.suppress(OSError):  # leave no trace in the lake; another holder's file keeps it
            path.parent.rmdir()


@contextlib.contextmanager
def claims(lake: Path | str, shas, key_fingerprint: str, replace: bool = False) -> Iterator[None]:
    """`claim` several sources, in one order for every run (two runs never wait on each other in a circle)."""
    with contextlib.ExitStack() as stack:
        for sha in sorted(set(shas)):
            stack.enter_context(claim(lake, sha, key_fingerprint, replace))
        yield


# --- records ------------------------------------------------------------------------------------------------

def _repair(lake: Path, record: dict | None, sha: str) -> str:
    source = record.get("source") if isinstance(record, dict) else None
    name = source or f"FILE (the source whose sha256 is {sha}; `sha256sum FILE` finds it)"
    return (f"repair it by ingesting that source again: thumbs ingest --force {name} --lake {lake} "
            "(add the flags it was first ingested with, such as --format)")


def _check_record(record, path: Path) -> str | None:
    """Why `record` is not a record, or None."""
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return "it is not a source record"
    files = record.get("files")
    if files is None:
        return None
    for entry in files if isinstance(files, list) else [None]:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("sha256"), str)):
            return "its list of files is malformed"
        rel = PurePosixPath(entry["path"])
        if rel.is_absolute() or ".." in rel.parts:
            return f"it lists a file outside the lake ({entry['path']})"
    return None


def read_record(lake: Path | str, sha: str) -> dict | None:
    """The record of source `sha`, or None; a torn or edited one raises LakeError naming it."""
    lake = Path(lake)
    path = lake / SOURCES_DIR / f"{sha}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise LakeError(f"the source record {path} cannot be read ({err}); {_repair(lake, None, sha)}") from err
    try:
        record = json.loads(text)
    except ValueError as err:
        raise LakeError(f"the source record {path} is damaged (not whole JSON: {err}); the lake cannot tell what "
                        f"that source committed: {_repair(lake, None, sha)}") from None
    problem = _check_record(record, path)
    if problem:
        raise LakeError(f"the source record {path} is damaged ({problem}); {_repair(lake, record, sha)}")
    return record


def ingested_record(lake: Path | str, sha: str) -> dict | None:
    """The record that makes a run skip source `sha`: None when there is none, or when this run claimed
    the source to replace it (--force, which also repairs a damaged record)."""
    held = _claims.get(_claim_key(lake, sha))
    if held is not None and held.replace:
        return None
    return read_record(lake, sha)


def records(lake: Path | str, skip=()) -> dict[str, dict]:
    """{source sha256: record} of every committed source but those in `skip` (whose records are not read)."""
    folder = Path(lake) / SOURCES_DIR
    if not folder.is_dir():
        return {}
    return {p.stem: read_record(lake, p.stem) for p in sorted(folder.glob("*.json"))
            if not p.name.startswith(".") and p.stem not in skip}


def recorded_prefixes(lake: Path | str) -> set[str]:
    """The file-name prefixes (sha256[:16]) of the committed sources."""
    folder = Path(lake) / SOURCES_DIR
    return {p.name[:16] for p in folder.glob("*.json") if not p.name.startswith(".")} if folder.is_dir() else set()


def _own_files(lake: Path, sha: str) -> list[str]:
    """Every visible file under the data folders whose name says it is source `sha`'s."""
    prefix = sha[:16]
    found = [*lake.glob(f"{FEEDBACK_DIR}/date=*/part-{prefix}*.parquet"),
             *lake.glob(f"{QUARANTINE_DIR}/{prefix}*.parquet"), *lake.glob(f"{GENERATIONS_DIR}/*/{prefix}*.parquet")]
    return sorted(p.relative_to(lake).as_posix() for p in found if not p.name.startswith("."))


def _listed(lake: Path, sha: str, record: dict) -> list[tuple[str, dict | None]]:
    """(relative path, its proof) of the files a record committed; a record before checksums: (path, None)."""
    if record.get("files") is None:
        return [(rel, None) for rel in _own_files(lake, sha)]
    return [(e["path"], e) for e in record["files"]]


_told_legacy: set[str] = set()


def _notice_legacy(lake: Path, names: list[str]) -> None:
    if str(lake) in _told_legacy:
        return
    _told_legacy.add(str(lake))
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    print(f"notice: {len(names)} source(s) of {lake} ({shown}) were recorded before lake files carried checksums: "
          f"their files are read unchecked. Ingest each again with `thumbs ingest --force SOURCE --lake {lake}` "
          "to give them their proof.", file=sys.stderr)


def verify_file(lake: Path, rel: str, proof: dict, record: dict) -> None:
    """Raise LakeError unless LAKE/rel is the file `record` committed (its bytes and sha256)."""
    path = lake / rel
    what = (f"lake file {path} ({proof.get('rows', '?')} row(s) of source {record.get('source')!r}, "
            f"recorded in {lake / SOURCES_DIR / (record['sha256'] + '.json')})")
    if not path.is_file():
        raise LakeError(f"{what} is missing; {_repair(lake, record, record['sha256'])}")
    found = file_proof(path)
    if found["bytes"] != proof["bytes"] or found["sha256"] != proof["sha256"]:
        raise LakeError(f"{what} is damaged: its bytes differ from what its record holds "
                        f"({found['bytes']:,} bytes, sha256 {found['sha256'][:16]}... for {proof['bytes']:,}, "
                        f"{proof['sha256'][:16]}...); {_repair(lake, record, record['sha256'])}")


def _owned(lake: Path, under: str, where: Callable[[str], bool] | None) -> list[tuple[str, dict | None, dict]]:
    picked, legacy = [], []
    for sha, record in records(lake).items():
        if record.get("files") is None:
            legacy.append(record.get("source") or sha[:12])
        for rel, proof in _listed(lake, sha, record):
            if rel.startswith(f"{under}/") and (where is None or where(rel)):
                picked.append((rel, proof, record))
    if legacy:
        _notice_legacy(lake, legacy)
    return sorted(picked, key=lambda item: item[0])


def committed(lake: Path | str, under: str, where: Callable[[str], bool] | None = None) -> list[Path]:
    """The files under LAKE/<under> that recorded sources committed, sorted, each checked against its record
    (LakeError names the first missing or damaged one); `where(relative path)` picks which are wanted."""
    lake = Path(lake)
    picked = _owned(lake, under, where)
    for rel, proof, record in picked:
        if proof is not None:
            verify_file(lake, rel, proof, record)
    return [lake / rel for rel, _, _ in picked]


# --- pseudonym keys -----------------------------------------------------------------------------------------

def _by_key(items) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for record in items:
        if record.get("key_fingerprint"):  # a record before fingerprints cannot tell: it mixes with any
            out.setdefault(record["key_fingerprint"], []).append(record.get("source", record["sha256"][:12]))
    return out


def _keys_text(by_key: dict[str, list[str]]) -> str:
    return " and ".join(f"key {_key_name(fp)} ({len(names)} source(s): {', '.join(sorted(set(names))[:3])}"
                        f"{', ...' if len(set(names)) > 3 else ''})" for fp, names in sorted(by_key.items()))


def check_key(lake: Path | str, fingerprint: str, allow_new_key: bool, replacing=()) -> None:
    """Refuse to add sources under a pseudonym key other than the one the lake's sources were made with
    (sources in `replacing` do not count: they are being written again)."""
    if allow_new_key:
        return
    others = _by_key(records(lake, skip=set(replacing)).values())
    others.pop(fingerprint, None)
    if others:
        raise LakeError(
            f"the lake {lake} holds sources pseudonymised under {_keys_text(others)}, and this run's key is "
            f"{_key_name(fingerprint)}: every user would be split in two. Set THUMBS_PSEUDONYM_KEY to the lake's "
            "key; if the key was rotated on purpose, pass --allow-new-key (curate then refuses a window that "
            "mixes the two keys)")


def check_one_key(lake: Path | str, files: list[Path]) -> None:
    """Refuse files (a curate window) whose sources were pseudonymised under different keys."""
    lake = Path(lake)
    wanted = {Path(f).relative_to(lake).as_posix() for f in files}
    owners = [r for sha, r in records(lake).items() if any(rel in wanted for rel, _ in _listed(lake, sha, r))]
    by_key = _by_key(owners)
    if len(by_key) > 1:
        raise LakeError(f"the window mixes sources pseudonymised under different keys: {_keys_text(by_key)}. One "
                        "user would count as two (latest vote and vote caps break). Curate a window of one key "
                        "(--since/--until), or ingest the other key's sources again with --force under the right key")


# --- writing a source ---------------------------------------------------------------------------------------

class SourceWriter:
    """Everything one source adds to the lake, committed together at the end, under the run's `claim`."""

    def __init__(self, lake: Path, source_sha256: str):
        self.lake = lake
        self.sha = source_sha256
        self.claim = _claims.get(_claim_key(lake, source_sha256))
        if self.claim is None:
            raise RuntimeError(f"source {source_sha256[:12]} is written without its claim (ingest.lake.claim)")
        self._partitions: dict[date, AtomicParquet] = {}
        self._quarantine: AtomicParquet | None = None
        self._placed: list[str] = []
        # A run of this source killed earlier may have left files: none was ever listed, none is read.
        self._remove_unlisted(self._recorded())
        for d in (FEEDBACK_DIR, QUARANTINE_DIR, GENERATIONS_DIR):
            for stale in lake.glob(f"{d}/**/.*{source_sha256[:16]}*.tmp"):
                stale.unlink(missing_ok=True)
        for stale in lake.glob(f"{SOURCES_DIR}/.{source_sha256}.json.*.tmp"):
            stale.unlink(missing_ok=True)

    def _recorded(self) -> set[str] | None:
        """The files the current record lists; None when it cannot be read (keep everything until replaced)."""
        try:
            record = read_record(self.lake, self.sha)
        except LakeError:
            return None
        return {rel for rel, _ in _listed(self.lake, self.sha, record)} if record else set()

    def _remove_unlisted(self, keep: set[str] | None, only=None) -> None:
        if keep is None:
            return
        for rel in (only if only is not None else _own_files(self.lake, self.sha)):
            if rel not in keep:
                (self.lake / rel).unlink(missing_ok=True)

    def write_rows(self, rows: pa.Table) -> None:
        """Route accepted rows to their date partitions."""
        if not rows.num_rows:
            return
        days = pc.cast(rows.column("timestamp"), pa.date32())
        for day in pc.unique(days).to_pylist():
            part = rows.filter(pc.equal(days, pa.scalar(day, pa.date32())))
            writer = self._partitions.get(day)
            if writer is None:
                path = self.lake / FEEDBACK_DIR / f"date={day.isoformat()}" / f"part-{self.sha[:16]}.parquet"
                writer = self._partitions[day] = AtomicParquet(path, FEEDBACK_SCHEMA, content_named=True)
            writer.write(part)
            fault_point("ingest.mid_partition")

    def write_quarantine(self, rows: pa.Table) -> None:
        if not rows.num_rows:
            return
        if self._quarantine is None:
            path = self.lake / QUARANTINE_DIR / f"{self.sha[:16]}.parquet"
            self._quarantine = AtomicParquet(path, QUARANTINE_SCHEMA, content_named=True)
        self._quarantine.write(rows)

    def commit(self, record: dict) -> list[str]:
        """Rename every file into place, then write the record listing them. Returns the partitions."""
        proofs = {}
        for writer in self._all():
            proof = writer.commit()
            rel = writer.path.relative_to(self.lake).as_posix()
            self._placed.append(rel)
            proofs[rel] = proof
            fault_point("ingest.mid_commit")  # files in place, the source not yet recorded: readers skip them
        # ingest/intake/formats/generations.py's store of this source, renamed into place just before
        for path in sorted(self.lake.glob(f"{GENERATIONS_DIR}/*/{self.sha[:16]}.parquet")):
            proofs[path.relative_to(self.lake).as_posix()] = {"rows": pq.ParquetFile(path).metadata.num_rows,
                                                               **file_proof(path)}
        record = {**record, "record_version": RECORD_VERSION, "key_fingerprint": self.claim.key_fingerprint,
                  "files": [{"path": rel, **proof} for rel, proof in sorted(proofs.items())]}
        write_json_atomic(self.lake / SOURCES_DIR / f"{self.sha}.json", record)
        self._remove_unlisted(set(proofs))  # a replaced record's files: no record lists them now
        return sorted(f"date={day.isoformat()}" for day in self._partitions)

    def abort(self) -> None:
        """Remove what this run wrote and no record lists: temp files, files renamed into place before it."""
        for writer in self._all():
            writer.abort()
        self._remove_unlisted(self._recorded(), only=self._placed)

    def _all(self) -> list[AtomicParquet]:
        return list(self._partitions.values()) + ([self._quarantine] if self._quarantine else [])


# --- reading ------------------------------------------------------------------------------------------------

def feedback_dataset(lake: Path | str) -> ds.Dataset:
    """The lake's accepted events (recorded sources only, each file checked) as one Arrow dataset,
    partitioned by `date`."""
    schema = FEEDBACK_SCHEMA.append(pa.field("date", pa.string()))
    root = Path(lake) / FEEDBACK_DIR
    files = committed(lake, FEEDBACK_DIR)
    return ds.dataset([str(f) for f in files], schema=schema, format=parquet_format(), partition_base_dir=str(root),
                      partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"))


def quarantine_table(lake: Path | str) -> pa.Table:
    files = committed(lake, QUARANTINE_DIR)
    if not files:
        return QUARANTINE_SCHEMA.empty_table()
    return ds.dataset([str(f) for f in files], schema=QUARANTINE_SCHEMA, format=parquet_format()).to_table()
