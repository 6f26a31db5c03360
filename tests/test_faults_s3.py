"""The registry on a real S3 API: moto's standalone server on 127.0.0.1 (the server s3fs tests itself
against), s3fs pointed at it through AWS_ENDPOINT_URL_S3, as a user would configure a MinIO or other
endpoint. Promote, rollback and export through s3://; a promotion killed mid-copy (S3 has no rename, so
the files are written in place) or before its alias write; a damaged version that a retry must not make
production; the lease lock, taken with S3's conditional write (If-None-Match).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from fault_helpers import kill_at, thumbs  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(bucket URL, environment for subprocesses); the server is stopped at the end."""
    import fsspec

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
           "THUMBS_REGISTRY_LEASE_S": "3"}  # a killed writer's lease blocks the rerun for 3s, not a minute
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("thumbs-test")
    try:
        yield "s3://thumbs-test", env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


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
