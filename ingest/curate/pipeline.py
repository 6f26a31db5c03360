"""`thumbs curate`: the lake's feedback in a date window to a train/eval snapshot, on Apache Beam.

    from ingest.curate.pipeline import curate
    stats = curate("lake/", "snapshots/", since="2026-11-01", until="2026-11-20")
    stats["path"], stats["desirable_weight"], stats["undesirable_weight"]

Arrow record batches, not rows, move through the pipeline (Beam pays per element): batches are
keyed by a hash bucket of each row's example key, buckets are grouped, and dedupe and votes run in
pyarrow inside the DoFn (`ingest/curate/rules.py`). The bucket count bounds each worker's memory.

Local default runner: FnApiRunner, in-process. Measured with Beam 2.77 on these machines: the
default runner and DirectRunner first try to download the Prism binary and fall back only after a
logged failure offline; FnApiRunner needs no download. `--direct_running_mode=multi_processing` was
correct in 5 of 5 runs, `multi_threading` lost records in 2 of 9: thumbs refuses the latter. Every
other option after `--` passes through. Tested here on FnApiRunner, BundleBasedDirectRunner and
PortableRunner (job service + external worker pool, the protocol Flink, Spark and Dataflow speak).

Whatever the runner, nothing is published unverified: before the rename, the files written are
re-read and checked against the counts (`ingest/curate/manifest.py`); a mismatch stops the run, names the
runner and the difference, and leaves nothing under `--out`. A snapshot is built in a hidden work
folder `OUT/.SID.PID.RANDOM/SID/` beside an owner file; a curate that dies leaves that folder, and the
next curate into OUT removes it once the owner's process is gone. A published snapshot whose proof
fails (`ingest/curate/snapshot.py`) is moved aside to `OUT/.damaged-SID-TIME/` (kept) and built again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Callable

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.parquetio import ReadAllFromParquetBatched, WriteToParquetBatched
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from common.faults import as_disk_full, fault_point, one_error_for_disk_full
from ingest import remote
from ingest.curate import snapshot as layout, store
from ingest.curate.balance import class_weights
from ingest.curate.manifest import check_stats
from ingest.curate.rules import (CURATED_SCHEMA, CurateConfig, add_keys, eval_cut, lowest_draws, merge_lowest,
                                 resolve_examples, split_at, split_by_bucket, sum_counts)
from ingest.curate.vote_caps import user_caps
from ingest.lake import FEEDBACK_DIR, committed
from ingest.schema import FEEDBACK_SCHEMA

SNAPSHOT_VERSION = 1
DEFAULT_RUNNER = "FnApiRunner"
WORK_OWNER = "owner.json"  # in each work folder: the pid and host of the curate writing it
ABANDONED_AFTER_S = 3 * 24 * 3600  # a work folder from another host is taken as abandoned after this long
_WORK_NAME = re.compile(r"\.[0-9a-f]{16}\.[0-9]+\.[a-z0-9_]{8}")  # .SNAPSHOT_ID.PID.RANDOM (mkdtemp's 8)


class CurateError(RuntimeError):
    pass


class KeyByBucket(beam.PTransform):
    """Record batches to (bucket, batch of that bucket's rows)."""

    def __init__(self, n_buckets: int):
        super().__init__()
        self.n_buckets = n_buckets

    def expand(self, batches):
        return batches | "Key" >> beam.ParDo(_KeyByBucketFn(self.n_buckets))


class _KeyByBucketFn(beam.DoFn):
    def __init__(self, n_buckets: int):
        self.n_buckets = n_buckets
        self.rows_read = Metrics.counter("curate", "rows_read")

    def process(self, batch):
        if not batch.num_rows:
            return
        self.rows_read.inc(batch.num_rows)
        yield from split_by_bucket(add_keys(batch.cast(FEEDBACK_SCHEMA), self.n_buckets))


class ResolveVotes(beam.PTransform):
    """(bucket, batch) pairs to {"train", "eval": curated batches, "counts": a dict of counts per bucket and split}.

    The train/eval cut is the window's (`rules.eval_cut`: at least `eval_examples` held out), so each bucket's
    curated examples wait for it: every bucket sends its count and lowest split draws to one combine, whose
    single value the split reads as a side input."""

    def __init__(self, config: CurateConfig, user_keep: dict | None = None):
        super().__init__()
        self.config, self.user_keep = config, user_keep or {}

    def expand(self, keyed):
        # Every tagged output is read by exactly one consumer (a sink, a combine, the split or the counts' flatten):
        # nothing is broadcast, so portable runners route it as written (tests/test_curate_runners.py).
        resolved = (keyed
                    | "GroupBuckets" >> beam.GroupByKey()
                    | "Resolve" >> beam.ParDo(_ResolveFn(self.config, self.user_keep)).with_outputs(
                        "draws", "counts", main="curated"))
        cut = resolved.draws | "EvalCut" >> beam.CombineGlobally(_EvalCut(self.config))
        parts = resolved.curated | "Split" >> beam.ParDo(_SplitFn(), beam.pvalue.AsSingleton(cut)).with_outputs(
            "eval", "counts", main="train")
        counts = (resolved.counts, parts.counts) | "AllCounts" >> beam.Flatten()
        return {"train": parts.train, "eval": parts.eval, "counts": counts}


class _ResolveFn(beam.DoFn):
    def __init__(self, config: CurateConfig, user_keep: dict):
        self.config, self.user_keep = config, user_keep
        self.examples = Metrics.counter("curate", "examples")

    def process(self, element):
        import pyarrow as pa

        _, batches = element
        curated, counts = resolve_examples(pa.concat_tables(list(batches)), self.config, self.user_keep)
        self.examples.inc(counts["examples"])
        if curated.num_rows:
            yield curated
        yield beam.pvalue.TaggedOutput("draws", (curated.num_rows, lowest_draws(curated, self.config)))
        yield beam.pvalue.TaggedOutput("counts", counts)


class _EvalCut(beam.CombineFn):
    """Buckets' (examples, lowest draws) to the window's train/eval cut."""

    def __init__(self, config: CurateConfig):
        self.config = config

    def create_accumulator(self):
        return merge_lowest([], self.config)

    def add_input(self, accumulator, element):
        return merge_lowest([accumulator, element], self.config)

    def merge_accumulators(self, accumulators):
        return merge_lowest(accumulators, self.config)

    def extract_output(self, accumulator):
        examples, lowest = accumulator
        return eval_cut(lowest, examples, self.config)


class _SplitFn(beam.DoFn):
    def process(self, curated, cut):
        train, eval_, counts = split_at(curated, cut)
        if train.num_rows:
            yield train
        if eval_.num_rows:
            yield beam.pvalue.TaggedOutput("eval", eval_)
        yield beam.pvalue.TaggedOutput("counts", counts)


def parquet_writer(prefix: str) -> beam.PTransform:
    """The sink for one split: zstd Parquet shards `PREFIX-SSSSS-of-NNNNN.parquet`."""
    return WriteToParquetBatched(prefix, schema=CURATED_SCHEMA, codec="zstd", file_name_suffix=".parquet")


class Curate(beam.PTransform):
    """Parquet files of the lake to a snapshot written under `out_dir` (train/, eval/, counts).

    `writer` makes each split's sink from its path prefix; a test swaps in a faulty one to show that
    curate refuses what a faulty sink or runner writes.
    """

    def __init__(self, files: list[str], out_dir: str, config: CurateConfig,
                 writer: Callable[[str], beam.PTransform] = parquet_writer, user_keep: dict | None = None):
        super().__init__()
        self.files, self.out_dir, self.config, self.writer, self.user_keep = files, out_dir, config, writer, user_keep

    def expand(self, pbegin):
        resolved = (pbegin
                    | "ListFiles" >> beam.Create(self.files)
                    | "ReadBatches" >> ReadAllFromParquetBatched(columns=FEEDBACK_SCHEMA.names)
                    | "KeyByBucket" >> KeyByBucket(self.config.n_buckets)
                    | "ResolveVotes" >> ResolveVotes(self.config, self.user_keep))
        for tag, split in (("train", layout.TRAIN), ("eval", layout.EVAL)):  # Beam's output tags, the folders
            _ = resolved[tag] | f"Write{tag.title()}" >> self.writer(str(layout.split_dir(self.out_dir, split) / "part"))
        return (resolved["counts"]
                | "SumCounts" >> beam.CombineGlobally(sum_counts)
                | "CountsJson" >> beam.Map(json.dumps)
                | "WriteCounts" >> beam.io.WriteToText(os.path.join(self.out_dir, "counts"), shard_name_template=""))


def partition_files(lake: str | Path, since: date | None, until: date | None) -> list[Path]:
    """The lake's Parquet files whose date partition lies in [since, until], sorted: only files a source's
    record lists, each checked against it, all of one pseudonym key (CurateError naming the file or keys)."""
    from ingest.lake import LakeError, check_one_key

    root = Path(lake) / FEEDBACK_DIR
    if not root.is_dir():
        raise CurateError(f"no lake at {lake}: {root} does not exist (run `thumbs ingest` first)")

    def in_window(rel: str) -> bool:  # feedback/date=YYYY-MM-DD/<file>
        day = date.fromisoformat(rel.split("/")[1].split("=", 1)[1])
        return (since is None or day >= since) and (until is None or day <= until)

    try:
        files = committed(lake, FEEDBACK_DIR, in_window)
        check_one_key(lake, files)
    except LakeError as err:
        raise CurateError(str(err)) from None
    return files


def snapshot_id(files: list[Path], lake: Path, config: CurateConfig, since, until) -> str:
    """A content hash of the input files, the window and the config."""
    digest = hashlib.sha256()
    identity = {"version": SNAPSHOT_VERSION, "config": config.to_dict(), "since": str(since), "until": str(until)}
    if config.max_user_share < 1.0:  # the user cap counts shares per class since 2026-12-06: not the older snapshots
        identity["user_cap"] = "share of the class"
    digest.update(json.dumps(identity, sort_keys=True).encode())
    for path in files:
        digest.update(str(path.relative_to(lake)).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    args = list(beam_args)
    if any("multi_threading" in a for a in args):
        raise CurateError("--direct_running_mode=multi_threading lost records on these machines; "
                          "use multi_processing or in_memory")
    if not any(a.startswith("--runner") for a in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    return PipelineOptions(args)


def curate(lake: str | Path, out: str | Path, since: date | None = None, until: date | None = None,
           config: CurateConfig | None = None, beam_args: list[str] = (),
           writer: Callable[[str], beam.PTransform] = parquet_writer) -> dict:
    """Build (or find) the snapshot for this lake, window and config; returns its stats with `path`.

    A published snapshot whose proof fails (ingest/curate/snapshot.py) is moved aside, kept, and built again.
    Raises CurateError, publishing nothing, when the files written disagree with the counts."""
    config = config or CurateConfig()
    if remote.is_remote(lake):
        lake = remote.pull_lake(str(lake))
    if remote.is_remote(out):
        return _curate_to_store(Path(lake), str(out), since, until, config, beam_args, writer)
    lake, out = Path(lake), Path(out)
    files = partition_files(lake, since, until)
    if not files:
        raise CurateError(f"no feedback in {lake} between {since or 'the start'} and {until or 'the end'}")
    sid = snapshot_id(files, lake, config, since, until)
    final = out / sid
    for stale in remove_abandoned_work(out) if out.is_dir() else ():
        print(f"curate: removed {stale}, left by a curate that did not finish", file=sys.stderr, flush=True)
    published = _published_or_set_aside(final)
    if published is not None:  # a finished snapshot is never rewritten
        return {**published, "path": str(final), "reused": True}

    user_keep = user_caps(config, files)  # per-user totals span buckets: counted once, before the job
    n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    runner = next((a.split("=", 1)[1] for a in beam_args if a.startswith("--runner=")), DEFAULT_RUNNER)
    print(f"curate: {n_rows:,} events in {len(files)} file(s) -> snapshot {sid}, on Beam's {runner}",
          file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    building = None
    try:
        building = _start_work(out, sid)
        with one_error_for_disk_full(), beam.Pipeline(options=pipeline_options(beam_args)) as pipeline:
            _ = pipeline | Curate([str(f) for f in files], str(building), config, writer, user_keep)
        stats = _stats(sid, _read_counts(building, runner), config, since, until, files, lake)
        entries = _prove(building, stats, runner, n_rows)
        layout.write_stats(building, stats, entries, runner=runner, events_in=n_rows)  # last: seals, marks done
        fault_point("curate.mid_snapshot")  # every file written, the snapshot not yet renamed into place
        _publish(building, final)
    except BaseException as err:
        if building is not None:
            shutil.rmtree(building.parent, ignore_errors=True)
        full = as_disk_full(out, err)
        if full is not None:
            raise full from err
        raise
    shutil.rmtree(building.parent, ignore_errors=True)  # the work folder, now holding only its owner file
    return {**stats, "path": str(final), "reused": False}


def _start_work(out: Path, sid: str) -> Path:
    """A hidden work folder `.SID.PID.RANDOM` holding its owner file and SID/, the snapshot being built.

    SID/ is made by a plain mkdir, so the published folder gets the mode any folder gets here (0755 under
    umask 022; mkdtemp's 0700 would hide it from a vLLM server or GPU worker running as another user)."""
    work = Path(tempfile.mkdtemp(prefix=f".{sid}.{os.getpid()}.", dir=out))
    try:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        (work / WORK_OWNER).write_text(json.dumps(owner) + "\n")
        (work / sid).mkdir()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work / sid


def remove_abandoned_work(out: Path) -> list[Path]:
    """Remove the work folders of curates that died (SIGKILL, power loss); returns them.

    Only folders that are provably a curate's: the name `.SID.PID.RANDOM` and a readable owner file; and
    only when the process that wrote it is gone (this host) or it is older than ABANDONED_AFTER_S
    (another host sharing the folder). Anything else, hidden or not, is never touched."""
    removed = []
    for entry in sorted(out.iterdir()):
        if _WORK_NAME.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink() and _abandoned(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _abandoned(work: Path) -> bool:
    try:
        owner = json.loads((work / WORK_OWNER).read_text())
        age = time.time() - (work / WORK_OWNER).stat().st_mtime
    except (OSError, ValueError):
        return False  # no readable owner file: not provably ours
    if not isinstance(owner, dict):
        return False
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0:
        return not _running(pid)
    return age > ABANDONED_AFTER_S


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _published_or_set_aside(final: Path) -> dict | None:
    """The stats of the whole snapshot at `final`; None when there is none, or it was damaged: then it is
    moved aside (renamed, never deleted: it is evidence) to be built again."""
    if not final.exists():
        return None
    try:
        return layout.check(final)
    except layout.SnapshotError:
        _, problems = layout.audit(final)
    try:
        aside = layout.set_aside(final)
    except FileNotFoundError:  # another curate of the same id moved it first
        return None
    print(f"curate: snapshot {final} is damaged ({final}/{problems[0]}): moved aside to {aside}, kept as "
          "evidence; building it again", file=sys.stderr, flush=True)
    return None


def _publish(building: Path, final: Path) -> None:
    """Rename the finished folder into place; another run's identical snapshot there wins."""
    try:
        os.rename(building, final)
    except OSError:
        if layout.is_published(final):
            return  # another run finished the same snapshot first: it is identical
        if not final.exists():
            raise
        _published_or_set_aside(final)  # damaged after this run looked: set it aside as well
        os.rename(building, final)


def _curate_to_store(lake: Path, url: str, since, until, config: CurateConfig, beam_args, writer) -> dict:
    """Curate into the store's local mirror, then publish the snapshot there, stats.json last (ingest/remote.py)."""
    files = partition_files(lake, since, until)
    if files:
        target = f"{url.rstrip('/')}/{snapshot_id(files, lake, config, since, until)}"
        if store.remote_published(target):  # a finished snapshot is never rewritten, there either
            local = store.local_snapshot(target)
            return {**layout.read_stats(local), "path": target, "local_path": str(local), "reused": True}
    stats = curate(lake, remote.mirror_dir(url), since, until, config, beam_args, writer)
    target = f"{url.rstrip('/')}/{stats['snapshot_id']}"
    store.publish_snapshot(Path(stats["path"]), target)
    return {**stats, "path": target, "local_path": stats["path"], "reused": False}


def _read_counts(work: Path, runner: str) -> dict:
    if not (work / "counts").is_file():
        raise CurateError(f"curate refused to publish: Beam's {runner} finished without writing the counts "
                          "(a runner that drops outputs); nothing was published. Run with the default runner "
                          "(FnApiRunner) or one of those README's curate section lists as tested.")
    counts = json.loads((work / "counts").read_text())
    (work / "counts").unlink()
    return counts


def _prove(work: Path, stats: dict, runner: str, n_rows: int) -> list[dict]:
    """Re-read what the pipeline wrote; refuse to publish if it is not what the counts say."""
    entries, stray = layout.describe_files(work)
    problems = [f"unexpected entry {name} left in the snapshot" for name in stray]
    problems += check_stats(stats, entries, events_in=n_rows)
    if problems:
        raise CurateError(
            f"curate refused to publish snapshot {stats['snapshot_id']}: what Beam's {runner} wrote disagrees "
            f"with the counts it computed ({'; '.join(problems)}). Nothing was published. The runner or sink "
            "lost or added data: run with the default runner (FnApiRunner) or one README's curate section lists "
            "as tested, and report the runner.")
    return entries


def _stats(sid: str, counts: dict, config: CurateConfig, since, until, files: list[Path], lake: Path) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        weights = class_weights(counts.get("train_desirable", 0), counts.get("train_undesirable", 0),
                                target=config.balance_target, min_per_class=config.min_per_class)
    return {
        "snapshot_id": sid,
        "n_desirable": weights.n_desirable,
        "n_undesirable": weights.n_undesirable,
        "desirable_weight": weights.desirable_weight,
        "undesirable_weight": weights.undesirable_weight,
        "balance_ratio": weights.ratio,
        "balance_in_band": weights.in_band,
        "warnings": [str(w.message) for w in caught],
        "counts": counts,
        "window": {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None},
        "config": config.to_dict(),
        "inputs": [str(f.relative_to(lake)) for f in files],
        "version": SNAPSHOT_VERSION,
    }
