"""The registry on a real S3 API: moto's standalone server on 127.0.0.1 (the server s3fs tests itself
against), s3fs pointed at it through AWS_ENDPOINT_URL_S3, as a user would configure a MinIO or other
endpoint. Promote, rollback and export through s3://; a promotion killed mid-copy (S3 has no rename, so
the files are written in place) or before its alias write; a damaged version that a retry must not make
production; the lease lock, taken with S3's conditional write (If-None-Match). The lake and the snapshots
on s3:// (ingest/remote.py): the same files as a local run, and ingest or curate killed mid-upload leaves
nothing a reader takes, then the rerun finishes it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from fault_helpers import feedback, ingest_args, kill_at, moto_s3, thumbs, tree  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.services]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(bucket URL, environment for subprocesses); the server is stopped at the end."""
    with moto_s3("thumbs-test",
                 THUMBS_REGISTRY_LEASE_S="3",  # a killed writer's lease blocks the rerun for 3s, not a minute
                 THUMBS_LAKE_LEASE_S="3") as env:  # the same for a killed ingest's lease on its source
        yield "s3://thumbs-test", env


def train_and_evaluate(snapshot, base, out: Path, registry=None, seed: int = 42) -> Path:
    from deploy.promote import evaluate_candidate
    from evaluation.evaluate import EvalConfig
    from training.config import TrainConfig
    from training.trainer import train

    train(snapshot, str(base), out, TrainConfig(max_steps=2, micro_batch_size=4, max_length=128, max_prompt_length=96,
                                                quantize="none", checkpoint_every=0, seed=seed), log=lambda s: None)
    evaluate_candidate(out, snapshot, registry, config=EvalConfig(generation_prompts=0, resamples=20, device="cpu"),
                       log=lambda s: None)
    return out


def test_promote_rollback_and_export_through_s3(s3, hh_snapshot, tiny_model, tmp_path):
    from deploy.export import export
    from deploy.promote import promote, rollback
    from deploy.registry import MANIFEST, Registry
    from evaluation.promotion import PromotionPolicy

    url = f"{s3[0]}/registry-cli"
    first = train_and_evaluate(hh_snapshot, tiny_model, tmp_path / "a")
    assert promote(first, Registry(url), PromotionPolicy(), force=True, log=lambda s: None)["version"] == "v0001"
    # the next candidate is judged against production, checked out of S3 and verified against its manifest
    second = train_and_evaluate(hh_snapshot, tiny_model, tmp_path / "b", Registry(url), seed=7)
    assert promote(second, Registry(url), PromotionPolicy(), force=True, log=lambda s: None)["version"] == "v0002"
    registry = Registry(url)
    assert registry.aliases()["history"] == ["v0001", "v0002"]
    assert set(registry.manifest("v0002")["files"]) >= {"adapter_model.safetensors", "decision.json"}
    assert registry.fs.exists(registry.path("versions", "v0002", MANIFEST))

    rollback(Registry(url), log=lambda s: None)
    assert Registry(url).aliases()["production"] == "v0001"
    serving = export(Registry(url), "production", "peft", tmp_path / "serve", log=lambda s: None)
    assert serving["version"] == "v0001" and serving["registry"] == url
    assert (tmp_path / "serve" / "adapter_model.safetensors").read_bytes() == \
           (first / "adapter_model.safetensors").read_bytes()

    listed = thumbs("registry", "list", "--registry", url, "--json", extra_env=s3[1])
    assert listed.returncode == 0, listed.stderr
    assert [r["status"] for r in json.loads(listed.stdout)] == ["production", "rolled back"]


def test_a_promotion_killed_mid_copy_on_s3_never_counts_and_the_rerun_finishes_it(s3, hh_snapshot, tiny_model,
                                                                                 tmp_path):
    from deploy.registry import Registry

    url = f"{s3[0]}/registry-kill"
    adapter = train_and_evaluate(hh_snapshot, tiny_model, tmp_path / "a")
    args = ["promote", "--adapter", adapter, "--registry", url, "--force"]
    kill_at("registry.mid_copy", *args, workdir=tmp_path, extra_env=s3[1])
    registry = Registry(url)
    written = registry.fs.ls(registry.path("versions", "v0001"), detail=False)
    assert len(written) == 1  # one file in place, no manifest: an interrupted copy, not a version
    assert registry.versions() == [] and registry.aliases()["production"] is None

    kill_at("promote.before_alias", *args, workdir=tmp_path, extra_env=s3[1])  # the retry, killed again later
    assert Registry(url).versions() == ["v0001"] and Registry(url).aliases()["production"] is None

    rerun = thumbs(*args, extra_env=s3[1])
    assert rerun.returncode == 0 and "never made production; it is now" in rerun.stderr, rerun.stderr
    registry = Registry(url)
    assert registry.aliases()["production"] == "v0001" and registry.versions() == ["v0001"]
    registry.verify("v0001")  # every byte as its manifest says


def test_a_damaged_version_is_never_made_production_by_the_retry(s3, hh_snapshot, tiny_model, tmp_path):
    from deploy.registry import Registry

    url = f"{s3[0]}/registry-damaged"
    adapter = train_and_evaluate(hh_snapshot, tiny_model, tmp_path / "a")
    args = ["promote", "--adapter", adapter, "--registry", url, "--force"]
    kill_at("promote.before_alias", *args, workdir=tmp_path, extra_env=s3[1])
    registry = Registry(url)
    weights = registry.path("versions", "v0001", "adapter_model.safetensors")
    size = registry.fs.size(weights)
    registry.fs.pipe_file(weights, b"\0" * size)  # same size: only the sha256 tells

    retry = thumbs(*args, extra_env=s3[1])
    assert retry.returncode == 2 and "does not match manifest.json" in retry.stderr, retry.stderr
    assert Registry(url).aliases()["production"] is None
    export = thumbs("export", "v0001", "--registry", url, "--out", tmp_path / "serve", extra_env=s3[1])
    assert export.returncode == 2 and "does not match" in export.stderr and not (tmp_path / "serve").exists()

    registry.fs.rm_file(weights)  # a missing file: the version no longer counts; the retry registers it anew
    again = thumbs(*args, extra_env=s3[1])
    assert again.returncode == 0, again.stderr
    assert Registry(url).aliases()["production"] == "v0002" and Registry(url).versions() == ["v0002"]


def test_the_lease_lock_on_s3_admits_one_writer_and_survives_a_dead_holder(s3):
    from deploy.registry import Registry, RegistryError

    url = f"{s3[0]}/registry-lock"
    first, second = Registry(url), Registry(url)
    with first.lock():
        with pytest.raises(RegistryError, match="locked by another writer"):
            with second.lock(timeout=1):
                pass
        assert first.still_holds_lock()
    with second.lock(timeout=5):  # released: the next writer gets it
        pass

    # A holder killed with SIGKILL leaves its lease: it stops counting once it expires.
    dead = {"host": "gone", "pid": 1, "at": time.time() - 1000, "expires": time.time() - 1}
    epoch = max(int(p.rsplit("/", 1)[1]) for p in first.fs.ls(first.path(".locks"), detail=False)
                if p.rsplit("/", 1)[1].isdigit())
    first.fs.pipe_file(first.path(".locks", f"{epoch + 1:012d}"), json.dumps(dead).encode(), mode="create")
    with second.lock(timeout=5):
        assert second.still_holds_lock()
        # the same create-if-absent that a racing writer would try is refused while the lease is held
        with pytest.raises(FileExistsError):
            second.fs.pipe_file(second.path(".locks", f"{second._lease:012d}"), b"{}", mode="create")


# --- the lake and the snapshots on S3 ---------------------------------------------------------------------------

def store_tree(url: str, skip: tuple = ()) -> dict:
    """{relative key: sha256} of every object under url, as `tree` gives for a folder; hidden keys (an
    ingest's lease in LAKE/.locks/) are left out, as readers leave them out."""
    import hashlib

    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {key[len(root) + 1:]: None if key.rsplit("/", 1)[1] in skip else hashlib.sha256(fs.cat_file(key)).hexdigest()
            for key in sorted(fs.find(root)) if not any(p.startswith(".") for p in key[len(root) + 1:].split("/"))}


def without_records(files: dict) -> dict:
    """A lake's files with each source record's content left out (it holds the time of the ingest)."""
    return {k: (None if k.startswith("_sources/") else v) for k, v in files.items()}


def split_rows(snapshot: Path, split: str) -> list:
    import pyarrow.parquet as pq

    return sorted(pq.read_table(snapshot / split).to_pylist(), key=lambda r: r["event_id"]) \
        if (snapshot / split).is_dir() else []


@pytest.fixture
def local_run(tmp_path):
    """The same feedback ingested and curated on the local disk: what every S3 run must equal."""
    source = feedback(tmp_path / "events.jsonl")
    assert thumbs(*ingest_args(source, tmp_path / "local-lake")).returncode == 0
    done = thumbs("curate", "--lake", tmp_path / "local-lake", "--out", tmp_path / "local-snapshots", "--json")
    assert done.returncode == 0, done.stderr
    sid = json.loads(done.stdout)["snapshot_id"]
    return source, tmp_path / "local-lake", tmp_path / "local-snapshots" / sid


def test_ingest_curate_and_train_on_s3_write_what_a_local_run_writes(s3, local_run, tiny_model, tmp_path):
    from ingest.curate.store import local_snapshot

    source, local_lake, local_snap = local_run
    env = {**s3[1], "THUMBS_CACHE": str(tmp_path / "cache")}
    lake, snapshots = f"{s3[0]}/same/lake", f"{s3[0]}/same/snapshots"
    assert thumbs(*ingest_args(source, lake), extra_env=env).returncode == 0
    assert without_records(store_tree(lake)) == without_records(tree(local_lake))

    done = thumbs("curate", "--lake", lake, "--out", snapshots, "--json", extra_env=env)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["snapshot_id"] == local_snap.name and stats["path"] == f"{snapshots}/{local_snap.name}"
    remote = store_tree(stats["path"])
    assert remote.keys() == tree(local_snap).keys()
    assert remote["stats.json"] == tree(local_snap)["stats.json"]  # the counts, weights and inputs, byte for byte

    # Another machine (an empty cache) reads the published snapshot: downloaded, checked against its manifest.
    os.environ["THUMBS_CACHE"] = str(tmp_path / "other-machine")
    try:
        copy = local_snapshot(stats["path"])
    finally:
        os.environ.pop("THUMBS_CACHE")
    assert copy.is_relative_to(tmp_path / "other-machine")
    for split in ("train", "eval"):
        assert split_rows(copy, split) == split_rows(local_snap, split)

    verified = thumbs("curate", "--verify-only", stats["path"], extra_env=env)
    assert verified.returncode == 0 and "verified" in verified.stdout, verified.stderr
    import fsspec

    fsspec.filesystem("s3").pipe_file(f"{stats['path']}/eval/notes.txt".removeprefix("s3://"), b"stray")
    damaged = thumbs("curate", "--verify-only", stats["path"], extra_env=env)
    assert damaged.returncode == 1 and "eval/notes.txt" in damaged.stderr, damaged.stderr  # what S3 holds now
    fsspec.filesystem("s3").rm_file(f"{stats['path']}/eval/notes.txt".removeprefix("s3://"))

    again = thumbs("curate", "--lake", lake, "--out", snapshots, extra_env=env)
    assert again.returncode == 0 and "unchanged, reusing" in again.stdout, again.stderr
    trained = thumbs("train", "--snapshot", stats["path"], "--base-model", tiny_model, "--out", tmp_path / "adapter",
                     "--max-steps", "1", "--micro-batch-size", "4", "--quantize", "none", "--json", extra_env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    from training.run_folder import read_meta

    assert json.loads(trained.stdout)["steps"] == 1 and read_meta(tmp_path / "adapter")["snapshot_id"] == local_snap.name


@pytest.mark.parametrize("machine", ["same", "other"])
def test_ingest_killed_mid_upload_to_s3_shows_nothing_and_the_rerun_finishes(s3, local_run, machine, tmp_path):
    """Killed after one data file reached S3, before the source's record: no reader takes that file. The rerun
    on the same machine uploads what its mirror holds; one on another machine (no mirror) ingests again."""
    source, local_lake, _ = local_run
    lake = f"{s3[0]}/ingest-kill-{machine}/lake"
    env = {**s3[1], "THUMBS_CACHE": str(tmp_path / "cache")}
    kill_at("remote.mid_upload", *ingest_args(source, lake), workdir=tmp_path, extra_env=env)
    left = store_tree(lake)
    assert len(left) == 1 and not any(k.startswith("_sources/") for k in left)
    assert all(tree(local_lake)[k] == v for k, v in left.items())  # whole, and exactly what the local run wrote
    refused = thumbs("curate", "--lake", lake, "--out", tmp_path / "snapshots",
                     extra_env={**env, "THUMBS_CACHE": str(tmp_path / "reader")})
    assert refused.returncode == 2 and "no feedback" in refused.stderr, refused.stderr  # the file is not committed

    if machine == "other":
        env["THUMBS_CACHE"] = str(tmp_path / "other-cache")
    rerun = thumbs(*ingest_args(source, lake), extra_env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert without_records(store_tree(lake)) == without_records(tree(local_lake))


def test_curate_killed_mid_upload_to_s3_publishes_nothing_and_the_rerun_publishes_it_whole(s3, local_run, tmp_path):
    from ingest.curate.store import local_snapshot
    from ingest.curate.snapshot import SnapshotError

    source, _, local_snap = local_run
    env = {**s3[1], "THUMBS_CACHE": str(tmp_path / "cache")}
    lake, snapshots = f"{s3[0]}/curate-kill/lake", f"{s3[0]}/curate-kill/snapshots"
    assert thumbs(*ingest_args(source, lake), extra_env=env).returncode == 0
    args = ["curate", "--lake", lake, "--out", snapshots, "--json"]
    kill_at("remote.mid_upload", *args, workdir=tmp_path, extra_env=env)
    url = f"{snapshots}/{local_snap.name}"
    assert len(store_tree(url)) == 1 and "stats.json" not in store_tree(url)
    os.environ["THUMBS_CACHE"] = str(tmp_path / "reader")
    try:
        with pytest.raises(SnapshotError, match="not a finished"):  # training and evaluation refuse it
            local_snapshot(url)
    finally:
        os.environ.pop("THUMBS_CACHE")

    import fsspec

    # a shard a differently-sharding runner left under the same id: not this snapshot's, removed before the mark
    fsspec.filesystem("s3").pipe_file(f"{url}/train/part-00001-of-00002.parquet".removeprefix("s3://"), b"other run")
    rerun = thumbs(*args, extra_env=env)
    assert rerun.returncode == 0, rerun.stderr
    stats = json.loads(rerun.stdout)
    assert stats["path"] == url and not stats["reused"]
    assert store_tree(url).keys() == tree(local_snap).keys()
    assert store_tree(url)["stats.json"] == tree(local_snap)["stats.json"]


def test_the_nightly_flow_runs_with_its_lake_snapshots_and_registry_on_s3(s3, style_snapshot, tiny_model, tmp_path,
                                                                          monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from deploy.registry import Registry
    from flows.config import ThumbsConfig
    from flows.run import run_config

    monkeypatch.setenv("THUMBS_CACHE", str(tmp_path / "cache"))
    root = f"{s3[0]}/nightly"
    config = ThumbsConfig.model_validate({
        "run": {"sources": [str(style_snapshot.parents[1] / "feedback.jsonl")], "workdir": str(tmp_path / "work"),
                "lake": f"{root}/lake", "snapshots": f"{root}/snapshots", "registry": f"{root}/registry",
                "base_model": str(tiny_model)},
        "ingest": {"insecure_dev_key": True}, "curate": {"eval_fraction": 0.2},
        "train": {"max_steps": 12, "learning_rate": 5e-3, "micro_batch_size": 8},
        "evaluate": {"generation_prompts": 2, "max_new_tokens": 8}})
    with prefect_test_harness(server_startup_timeout=120):
        state = run_config(config)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["events"] == 300 and summary["promoted"] and summary["version"] == "v0001"
    assert Registry(f"{root}/registry").aliases()["production"] == "v0001"
    published = store_tree(f"{root}/snapshots/{summary['snapshot_id']}")
    assert {"stats.json", "manifest.json"} <= published.keys()
    assert any(k.startswith("_sources/") for k in store_tree(f"{root}/lake"))
    assert not (tmp_path / "work" / "lake").exists() and not (tmp_path / "work" / "snapshots").exists()


def test_runs_publishing_the_same_snapshot_at_once_leave_one_whole_snapshot(s3, local_run):
    """Two models' nightlies on one lake curate the same snapshot id at the same moment: each upload checks
    itself before the mark, the mark is create-if-absent, and nothing is deleted that another run wrote."""
    from concurrent.futures import ThreadPoolExecutor

    from ingest.curate.store import publish_snapshot, verify_remote

    _, _, local_snap = local_run
    url = f"{s3[0]}/concurrent/snapshots/{local_snap.name}"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: publish_snapshot(local_snap, url), range(4)))  # each returns, none raises
    assert store_tree(url) == tree(local_snap)
    assert verify_remote(url) == []
