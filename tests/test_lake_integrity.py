"""Nothing the lake holds is lost, and nothing it reads back is trusted blindly (issue 26).

Classes tested, several cases each: two ingests of one source at once (real processes); every lake file
checked against its source's record (bit flips, truncation, deletion, on local disk and through the
object-store mirror), with one error naming the file and a repair command that works when followed;
torn or edited records; one pseudonym key per lake and per curate window; derived (pairs/hh) events
killed and re-run under another clock; bounded memory under a flood of bad lines; user ids in every
shape kept out of quarantine.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fault_helpers import ROOT, env, feedback, ingest_args, kill_at, moto_s3, thumbs, visible, tree
from ingest.intake.job import IngestConfig, ingest
from ingest.lake import LakeError, feedback_dataset, quarantine_table, read_record

DEV = ["--insecure-dev-key"]


def events(path: Path, n: int, day: str = "2026-11-20", prefix: str = "e") -> Path:
    lines = [json.dumps({"event_id": f"{prefix}{i}", "timestamp": f"{day}T03:00:00Z", "user_id": f"u{i % 7}",
                         "prompt": f"question {i % 10}", "completion": f"answer {i}",
                         "label": "up" if i % 3 else "down"}) for i in range(n)]
    path.write_text("\n".join(lines + ["not json"]) + "\n")
    return path


def record_of(lake: Path) -> tuple[Path, dict]:
    [path] = (lake / "_sources").glob("*.json")
    return path, json.loads(path.read_text())


def one_clear_error(result, *names: str, code: int = 2) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1, result.stderr
    for name in names:
        assert name in result.stderr, (name, result.stderr)


# --- 1. two runs of one source at once ------------------------------------------------------------------

def test_two_processes_ingesting_the_same_file_at_once_leave_it_whole(tmp_path):
    source, lake = events(tmp_path / "events.jsonl", 2000), tmp_path / "lake"
    procs = [subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, ingest_args(source, lake)), "--json"],
                              env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    read = sorted(json.loads(o[0])["sources_read"] for o in outs)
    assert read == [0, 0, 1]  # one run wrote it; the others waited and found it ingested
    assert feedback_dataset(lake).count_rows() == 2000 and quarantine_table(lake).num_rows == 1
    again = thumbs(*ingest_args(source, lake))
    assert again.returncode == 0 and "skipped" in again.stdout


@pytest.mark.parametrize("point", ["ingest.mid_partition", "ingest.mid_commit"])
def test_a_second_run_waits_for_the_first_and_loses_nothing_when_it_dies(point, tmp_path):
    """The first run holds the source (paused inside its write); the second waits instead of removing its
    files; the first is killed there; the second then writes the whole source."""
    source, lake = events(tmp_path / "events.jsonl", 500), tmp_path / "lake"
    marks = tmp_path / "marks"
    marks.mkdir()
    first = subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, ingest_args(source, lake))], cwd=ROOT,
                             env=env(THUMBS_FAULT=point, THUMBS_FAULT_DIR=str(marks)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (marks / f"{point}.pid").exists():
            assert first.poll() is None, "the first run ended before its fault point"
            time.sleep(0.02)
        log = (tmp_path / "second.err").open("w")
        second = subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, ingest_args(source, lake))],
                                  cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=log, text=True)
        deadline = time.monotonic() + 120
        while "waiting" not in (tmp_path / "second.err").read_text():
            assert second.poll() is None and time.monotonic() < deadline, "the second run did not wait"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    out, _ = second.communicate(timeout=120)
    log.close()
    assert second.returncode == 0 and "1 source(s) read" in out, (tmp_path / "second.err").read_text()
    assert feedback_dataset(lake).count_rows() == 500
    assert not [p for p in visible(tree(lake)) if p.endswith(".parquet")
                and p not in {f["path"] for f in record_of(lake)[1]["files"]}]


def test_different_files_into_one_lake_at_once_are_all_ingested(tmp_path):
    lake = tmp_path / "lake"
    sources = [events(tmp_path / f"s{i}.jsonl", 300, prefix=f"s{i}-") for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, ingest_args(s, lake))], env=env(),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in sources]
    assert all(p.wait(300) == 0 for p in procs)
    assert feedback_dataset(lake).count_rows() == 900 and quarantine_table(lake).num_rows == 3


# --- 2. every lake file against its record ----------------------------------------------------------------

def test_the_record_lists_every_file_with_rows_bytes_and_sha256(tmp_path):
    import hashlib

    lake = tmp_path / "lake"
    assert thumbs(*ingest_args(feedback(tmp_path / "f.jsonl"), lake)).returncode == 0
    _, record = record_of(lake)
    listed = {f["path"]: f for f in record["files"]}
    on_disk = {p for p in visible(tree(lake)) if not p.startswith("_sources/")}
    assert listed.keys() == on_disk and len(listed) == 3  # two partitions and the quarantine
    for rel, entry in listed.items():
        data = (lake / rel).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == pq.ParquetFile(lake / rel).metadata.num_rows
    assert sum(f["rows"] for f in record["files"] if f["path"].startswith("feedback/")) == 40


def test_parquet_pages_carry_checksums_that_readers_check(tmp_path):
    lake = tmp_path / "lake"
    assert thumbs(*ingest_args(events(tmp_path / "e.jsonl", 300), lake)).returncode == 0
    [part] = lake.glob("feedback/*/*.parquet")
    data = bytearray(part.read_bytes())
    data[60] ^= 0x01  # inside the first data page
    part.write_bytes(bytes(data))
    with pytest.raises(OSError):
        pq.read_table(part, page_checksum_verification=True)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {
    "bit flip": _flip,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-100]),
    "deleted": lambda p: p.unlink(),
    "replaced by another valid file": lambda p: p.write_bytes(next(
        q for q in p.parent.parent.glob("*/*.parquet") if q != p).read_bytes()),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_lake_file_is_one_error_naming_it_and_its_repair_works(damage, tmp_path):
    source, lake = feedback(tmp_path / "feedback.jsonl"), tmp_path / "lake"
    assert thumbs(*ingest_args(source, lake)).returncode == 0
    good = thumbs("curate", "--lake", lake, "--out", tmp_path / "snapshots", "--json")
    assert good.returncode == 0, good.stderr
    part = sorted(lake.glob("feedback/*/*.parquet"))[0]
    DAMAGE[damage](part)

    with pytest.raises(LakeError, match="thumbs ingest --force feedback.jsonl"):
        feedback_dataset(lake)
    refused = thumbs("curate", "--lake", lake, "--out", tmp_path / "other")
    one_clear_error(refused, str(part), "thumbs ingest --force feedback.jsonl")
    assert not (tmp_path / "other").exists() or not visible(tree(tmp_path / "other"))
    assert "skipped" in thumbs(*ingest_args(source, lake)).stdout  # a plain re-ingest does not hide it...

    repaired = thumbs(*ingest_args(source, lake), "--force")  # ...the advice repairs it
    assert repaired.returncode == 0 and "1 source(s) read" in repaired.stdout, repaired.stderr
    assert feedback_dataset(lake).count_rows() == 40
    again = thumbs("curate", "--lake", lake, "--out", tmp_path / "snapshots", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["snapshot_id"] == json.loads(good.stdout)["snapshot_id"]


@pytest.mark.parametrize("damage", ["bit flip", "deleted"])
def test_a_damaged_quarantine_file_is_refused_by_its_reader(damage, tmp_path):
    lake = tmp_path / "lake"
    assert thumbs(*ingest_args(feedback(tmp_path / "f.jsonl"), lake)).returncode == 0
    [qfile] = lake.glob("quarantine/*.parquet")
    DAMAGE[damage](qfile)
    with pytest.raises(LakeError, match=str(qfile)):
        quarantine_table(lake)


def test_a_forced_reingest_switches_files_with_its_record_and_leaves_no_stray(tmp_path):
    source, lake = feedback(tmp_path / "f.jsonl"), tmp_path / "lake"
    assert thumbs(*ingest_args(source, lake)).returncode == 0
    before = visible(tree(lake))
    assert thumbs(*ingest_args(source, lake), "--force").returncode == 0
    after = visible(tree(lake))
    assert {k: v for k, v in after.items() if not k.startswith("_sources")} == \
           {k: v for k, v in before.items() if not k.startswith("_sources")}  # same bytes, same names


def test_a_lake_from_before_checksums_is_read_with_a_notice_and_force_upgrades_it(tmp_path, capsys):
    source, lake = feedback(tmp_path / "f.jsonl"), tmp_path / "lake"
    assert thumbs(*ingest_args(source, lake)).returncode == 0
    path, record = record_of(lake)
    for name in ("files", "key_fingerprint", "record_version"):
        del record[name]
    path.write_text(json.dumps(record))
    assert feedback_dataset(lake).count_rows() == 40
    assert "recorded before lake files carried checksums" in capsys.readouterr().err
    assert thumbs(*ingest_args(source, lake), "--force").returncode == 0
    assert "files" in record_of(lake)[1] and feedback_dataset(lake).count_rows() == 40


@pytest.mark.parametrize("where", ["mirror", "store"])
@pytest.mark.parametrize("damage", ["bit flip", "deleted"])
def test_the_object_store_mirror_is_checked_against_the_records(where, damage, tmp_path, monkeypatch):
    """fsspec's in-memory store, a real fsspec filesystem: a damaged mirror copy is downloaded again; a
    damaged object in the store is one error naming it, and the advice repairs it."""
    import fsspec

    from ingest.remote import mirror_dir, pull_lake

    monkeypatch.setenv("THUMBS_CACHE", str(tmp_path / "cache"))
    url = f"memory://integrity-{where}-{damage.replace(' ', '-')}/lake"
    source = feedback(tmp_path / "f.jsonl")
    ingest([source], url, IngestConfig(insecure_dev_key=True), progress=False)
    rel = sorted(p.relative_to(mirror_dir(url)).as_posix() for p in mirror_dir(url).glob("feedback/*/*.parquet"))[0]
    fs = fsspec.filesystem("memory")
    key = url.removeprefix("memory://") + "/" + rel
    if where == "mirror":
        DAMAGE[damage](mirror_dir(url) / rel)
        assert feedback_dataset(pull_lake(url)).count_rows() == 40  # downloaded again, checked
        return
    data = bytearray(fs.cat_file(key))
    if damage == "deleted":
        fs.rm_file(key)
    else:
        data[len(data) // 2] ^= 0x10
        fs.pipe_file(key, bytes(data))
    DAMAGE[damage](mirror_dir(url) / rel)
    with pytest.raises(LakeError, match=rf"{url}/{rel}.*thumbs ingest --force f.jsonl --lake {url}"):
        pull_lake(url)
    ingest([source], url, IngestConfig(insecure_dev_key=True, force=True), progress=False)
    assert feedback_dataset(pull_lake(url)).count_rows() == 40


# --- 3. torn or edited records ------------------------------------------------------------------------------

TORN = {
    "cut short": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "not an object": lambda text: "[]",
    "files malformed": lambda text: json.dumps({**json.loads(text), "files": [{"path": 3}]}),
    "a file outside the lake": lambda text: json.dumps(
        {**json.loads(text), "files": [{"path": "../../etc/passwd", "bytes": 1, "sha256": "0" * 64, "rows": 1}]}),
}


@pytest.mark.parametrize("tear", TORN)
def test_a_torn_record_is_one_error_naming_it_and_force_repairs_it(tear, tmp_path):
    source, lake = feedback(tmp_path / "f.jsonl"), tmp_path / "lake"
    assert thumbs(*ingest_args(source, lake)).returncode == 0
    path, _ = record_of(lake)
    path.write_text(TORN[tear](path.read_text()))
    refused = thumbs("curate", "--lake", lake, "--out", tmp_path / "snapshots")
    one_clear_error(refused, str(path), "thumbs ingest --force")
    other = thumbs(*ingest_args(events(tmp_path / "other.jsonl", 5), lake))  # adding to the lake also refuses
    one_clear_error(other, str(path))
    repaired = thumbs(*ingest_args(source, lake), "--force")
    assert repaired.returncode == 0, repaired.stderr
    assert read_record(lake, path.stem)["files"] and feedback_dataset(lake).count_rows() == 40
    assert thumbs("curate", "--lake", lake, "--out", tmp_path / "snapshots").returncode == 0


# --- 4. one pseudonym key per lake ----------------------------------------------------------------------------

KEYS = {"rotated": ("first-secret-key", "second-secret-key"), "dev fallback": ("first-secret-key", None)}


def _with_key(key):
    return ({"THUMBS_PSEUDONYM_KEY": key}, []) if key else ({"THUMBS_PSEUDONYM_KEY": ""}, DEV)


@pytest.mark.parametrize("case", KEYS)
def test_a_second_key_is_refused_unless_allowed_and_curate_refuses_a_window_that_mixes_them(case, tmp_path):
    first, second = KEYS[case]
    lake = tmp_path / "lake"
    a = events(tmp_path / "a.jsonl", 30, day="2026-11-19", prefix="a")
    b = events(tmp_path / "b.jsonl", 30, day="2026-11-20", prefix="b")
    env_a, flags_a = _with_key(first)
    env_b, flags_b = _with_key(second)
    base = lambda src: ["ingest", src, "--lake", lake, "--quiet"]  # noqa: E731
    assert thumbs(*base(a), *flags_a, extra_env=env_a).returncode == 0
    refused = thumbs(*base(b), *flags_b, extra_env=env_b)
    one_clear_error(refused, "a.jsonl", "--allow-new-key")
    assert first not in refused.stderr and (second is None or second not in refused.stderr)  # never the key
    if second is None:
        assert "public dev key" in refused.stderr
    assert not list(lake.glob("feedback/date=2026-11-20/*"))

    assert thumbs(*base(b), *flags_b, "--allow-new-key", extra_env=env_b).returncode == 0
    mixed = thumbs("curate", "--lake", lake, "--out", tmp_path / "snapshots", "--min-per-class", "1")
    one_clear_error(mixed, "a.jsonl", "b.jsonl")
    fingerprints = {json.loads(p.read_text())["key_fingerprint"] for p in (lake / "_sources").glob("*.json")}
    assert len(fingerprints) == 2 and all(fp in mixed.stderr for fp in fingerprints)
    one_key = thumbs("curate", "--lake", lake, "--out", tmp_path / "snapshots", "--since", "2026-11-20",
                     "--min-per-class", "1")
    assert one_key.returncode == 0, one_key.stderr

    # The repair of a source pseudonymised under the wrong key: force it under the lake's key.
    fixed = thumbs(*base(b), *flags_a, "--force", extra_env=env_a)
    assert fixed.returncode == 0, fixed.stderr
    assert thumbs("curate", "--lake", lake, "--out", tmp_path / "snapshots", "--min-per-class", "1").returncode == 0


# --- 5. derived events killed and re-run under another clock --------------------------------------------------

def _derived(path: Path, fmt: str, n: int = 20) -> Path:
    lines = []
    for i in range(n):
        if fmt == "hh":
            head = f"\n\nHuman: question {i}\n\nAssistant:"
            lines.append(json.dumps({"chosen": f"{head} good {i}", "rejected": f"{head} bad {i}"}))
        else:
            lines.append(json.dumps({"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}))
    path.write_text("\n".join(lines + ["not json"]) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["pairs", "hh"])
@pytest.mark.parametrize("point", ["ingest.mid_partition", "ingest.mid_commit"])
def test_a_killed_derived_ingest_rerun_after_midnight_holds_each_event_once(fmt, point, tmp_path):
    source, lake = _derived(tmp_path / f"{fmt}.jsonl", fmt), tmp_path / "lake"
    args = [*ingest_args(source, lake), "--format", fmt]
    kill_at(point, *args, "--default-timestamp", "2026-11-20T23:59:00Z", workdir=tmp_path)
    rerun = thumbs(*args, "--default-timestamp", "2026-11-21T00:01:00Z")
    assert rerun.returncode == 0 and "1 source(s) read" in rerun.stdout, rerun.stderr
    table = feedback_dataset(lake).to_table()
    assert table.num_rows == 40 == len(set(table.column("event_id").to_pylist()))
    assert set(table.column("date").to_pylist()) == {"2026-11-21"}
    assert not list(lake.glob("feedback/date=2026-11-20/*"))  # the killed run's file is gone, not just unread
    done = thumbs("curate", "--lake", lake, "--out", tmp_path / "snapshots", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["counts"]["events_in"] == 40, done.stderr


# --- 6. memory under a flood of bad lines ---------------------------------------------------------------------

def test_quarantine_line_numbers_stay_exact_across_batches(tmp_path):
    """More lines than one parse batch (ingest.intake.validate.BATCH_LINES), good and bad mixed: every line lands once."""
    from ingest.intake.validate import BATCH_LINES

    n = 2 * BATCH_LINES + 123
    path = tmp_path / "mixed.jsonl"
    with path.open("w") as f:
        for i in range(1, n + 1):
            f.write(json.dumps({"event_id": f"e{i}", "timestamp": "2026-11-20T00:00:00Z", "prompt": "p",
                                "completion": f"c{i}", "label": "up"}) + "\n" if i % 997 == 0 else "\n")
    summary = ingest([path], tmp_path / "lake", IngestConfig(insecure_dev_key=True), progress=False)
    good = n // 997
    assert (summary.total("lines"), summary.total("accepted")) == (n, good)
    lines = quarantine_table(tmp_path / "lake").column("line").to_pylist()
    assert len(lines) == n - good and set(lines) == {i for i in range(1, n + 1) if i % 997}
    rows = feedback_dataset(tmp_path / "lake").to_table()
    assert sorted(rows.column("source_line").to_pylist()) == [i for i in range(1, n + 1) if i % 997 == 0]


FLOOD = {"blank lines": (b"\n", "events"), "bad json": (b"{\n", "events"), "wrong types": (b'{"event_id": 1}\n', "events"),
         "bad json, langfuse": (b"{\n", "langfuse"), "not an object, otel-genai": (b"[1]\n", "otel-genai")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", FLOOD)
def test_a_flood_of_bad_lines_ingests_in_bounded_memory(kind, tmp_path):
    n = 2_000_000
    path = tmp_path / "flood.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        for _ in range(n // 100_000):
            f.write(FLOOD[kind][0] * 100_000)
    # The peak of this process alone: ru_maxrss survives fork and exec, so a child of a big pytest process would
    # start at its parent's peak; /proc's VmHWM is the new program's own (ru_maxrss where there is no /proc).
    probe = ("import json, re, resource, sys\nfrom ingest.intake.job import IngestConfig, ingest\n"
             "s = ingest([sys.argv[1]], sys.argv[2], IngestConfig(format=sys.argv[3], insecure_dev_key=True),"
             " progress=False)\n"
             "try:\n    peak = int(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))\n"
             "except OSError:\n    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "print(json.dumps([s.total('lines'), sum(s.quarantined.values()), peak]))")
    done = subprocess.run([sys.executable, "-c", probe, str(path), str(tmp_path / "lake"), FLOOD[kind][1]], env=env(),
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    lines, quarantined, peak_kib = json.loads(done.stdout)
    assert lines == quarantined == n
    assert peak_kib < 600 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    from ingest.lake import QUARANTINE_DIR, committed

    assert sum(pq.ParquetFile(f).metadata.num_rows for f in committed(tmp_path / "lake", QUARANTINE_DIR)) == n


# --- 7. user ids in quarantine, in every shape ------------------------------------------------------------------

SECRET = "alice.secret-42"
HOSTILE = {
    "string": f'{{"user_id": "{SECRET}", "label": "maybe"}}',
    "list": f'{{"user_id": ["{SECRET}", "x"], "label": "up"}}',
    "object": f'{{"user_id": {{"name": "{SECRET}", "n": [1, {{"deep": "{SECRET}"}}]}}, "label": "up"}}',
    "escaped key": f'{{"user\\u005fid": "{SECRET}", "label": "maybe"}}',
    "escaped value": '{"user_id": "' + "".join(f"\\u{ord(c):04x}" for c in SECRET) + '", "label": 7}',
    "other spelling": f'{{"User-ID": "{SECRET}", "userId": "{SECRET}", "label": "up"}}',
    "nested": f'{{"metadata": {{"user_id": "{SECRET}"}}, "label": "maybe"}}',
    "json in a string": json.dumps({"metadata": json.dumps({"user_id": SECRET}), "label": "maybe"}),
    "cut off": f'{{"event_id": "e", "user_id": ["{SECRET}", "more',
    "cut off object": f'{{"user_id": {{"a": "{SECRET}"',
    "invalid utf-8": f'{{"user_id": "{SECRET}", "x": "\xff"}}',  # written as the lone byte 0xff
    "number": '{"user_id": 4242424242, "label": "maybe"}',
}


@pytest.mark.parametrize("scrub", [False, True])
def test_no_user_id_in_any_shape_reaches_any_quarantine_column(scrub, tmp_path):
    path = tmp_path / "hostile.jsonl"
    with path.open("wb") as f:
        for line in HOSTILE.values():
            f.write(line.encode("utf-8").replace("\xff".encode("utf-8"), b"\xff") + b"\n")
    ingest([path], tmp_path / "lake", IngestConfig(insecure_dev_key=True, scrub_pii=scrub), progress=False)
    table = quarantine_table(tmp_path / "lake")
    assert table.num_rows == len(HOSTILE)
    for row in table.to_pylist():
        for name, value in row.items():
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            for needle in (SECRET, "4242424242", "alice"):
                assert needle not in text, (name, text)


def test_a_string_user_id_in_quarantine_is_its_lake_pseudonym(tmp_path):
    from ingest.privacy import INSECURE_DEV_KEY, Pseudonymizer

    path = tmp_path / "one.jsonl"
    path.write_text(HOSTILE["escaped key"] + "\n")
    ingest([path], tmp_path / "lake", IngestConfig(insecure_dev_key=True), progress=False)
    [raw] = quarantine_table(tmp_path / "lake").column("raw").to_pylist()
    assert Pseudonymizer(INSECURE_DEV_KEY.encode())(SECRET).encode() in raw  # the same user as in the lake


# --- 1b. the same on an object store: two machines, one source, one S3 lake ---------------------------------

@pytest.fixture
def s3_lake(tmp_path):
    """(a fresh s3:// lake URL, environment for subprocesses) on moto's standalone S3 server."""
    with moto_s3("lake-integrity", THUMBS_LAKE_LEASE_S="3") as extra:
        yield "s3://lake-integrity/lake", extra


@pytest.mark.slow
@pytest.mark.services
def test_two_machines_ingesting_one_source_into_one_s3_lake_take_turns(s3_lake, tmp_path):
    from ingest.remote import pull_lake

    url, extra = s3_lake
    source = events(tmp_path / "events.jsonl", 800)
    procs = [subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, ingest_args(source, url)), "--json"],
                              env=env(**extra, THUMBS_CACHE=str(tmp_path / f"machine-{i}")), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert sorted(json.loads(o[0])["sources_read"] for o in outs) == [0, 1]
    os.environ["THUMBS_CACHE"] = str(tmp_path / "reader")
    try:
        lake = pull_lake(url)
    finally:
        os.environ.pop("THUMBS_CACHE")
    assert feedback_dataset(lake).count_rows() == 800 and quarantine_table(lake).num_rows == 1
