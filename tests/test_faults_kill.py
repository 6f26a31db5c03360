"""SIGKILL at named points of every stage: nothing partial is ever visible, and a re-run ends where an
uninterrupted run ends (same files; same bytes where the output is deterministic).

Each case runs `thumbs` in a subprocess with THUMBS_FAULT naming a fault point (common/faults.py); the
process announces the point and blocks there, and the test kills it with SIGKILL (no sleeping and
hoping). Cases: ingest mid-partition and between its renames, curate mid-snapshot, train mid-step and
mid-checkpoint, promote mid-copy and between registering and the alias write, export mid-copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fault_helpers import feedback, ingest_args, kill_at, thumbs, tree, visible

pytestmark = pytest.mark.slow

QUICK_TRAIN = "max_steps: 6\ncheckpoint_every: 2\nmicro_batch_size: 4\nmax_length: 128\nmax_prompt_length: 96\n" \
              "learning_rate: 1.0e-3\nquantize: none\n"


@pytest.mark.parametrize("point", ["ingest.mid_partition", "ingest.mid_commit"])
def test_ingest_killed_leaves_nothing_visible_and_the_rerun_writes_the_same_lake(point, tmp_path):
    from ingest.lake import feedback_dataset, quarantine_table

    source = feedback(tmp_path / "events.jsonl")
    straight = thumbs(*ingest_args(source, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    expected = tree(tmp_path / "straight", skip=tuple(p.name for p in (tmp_path / "straight" / "_sources").iterdir()))

    lake = tmp_path / "lake"
    kill_at(point, *ingest_args(source, lake), workdir=tmp_path)
    left = visible(tree(lake))
    # Between renames some files are in place, complete, but their source is not recorded: no reader sees them.
    assert all(expected.get(name) == digest for name, digest in left.items()), left
    assert not any(name.startswith("_sources") for name in left)
    assert feedback_dataset(lake).count_rows() == 0 and quarantine_table(lake).num_rows == 0

    rerun = thumbs(*ingest_args(source, lake))
    assert rerun.returncode == 0 and "1 source(s) read" in rerun.stdout, rerun.stderr
    assert {k: v for k, v in tree(lake).items() if not k.startswith("_sources")} == \
           {k: v for k, v in expected.items() if not k.startswith("_sources")}
    assert visible(tree(lake)).keys() == expected.keys()  # the killed run's temp files are gone too
    assert feedback_dataset(lake).count_rows() == 40


def test_curate_killed_mid_snapshot_leaves_no_snapshot_and_the_rerun_builds_the_same_one(tmp_path):
    import pyarrow.parquet as pq

    source = feedback(tmp_path / "events.jsonl")
    assert thumbs(*ingest_args(source, tmp_path / "lake")).returncode == 0
    args = ["curate", "--lake", tmp_path / "lake", "--json"]
    straight = thumbs(*args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    sid = json.loads(straight.stdout)["snapshot_id"]

    out = tmp_path / "snapshots"
    kill_at("curate.mid_snapshot", *args, "--out", out, workdir=tmp_path)
    assert visible(tree(out)) == {} and any(p.name.startswith(f".{sid}.") for p in out.iterdir())

    rerun = thumbs(*args, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    stats = json.loads(rerun.stdout)
    assert stats["snapshot_id"] == sid and not stats["reused"]
    assert visible(tree(out / sid)).keys() == tree(tmp_path / "straight" / sid).keys()
    assert (out / sid / "stats.json").read_bytes() == (tmp_path / "straight" / sid / "stats.json").read_bytes()
    for split in ("train", "eval"):
        def rows(root):
            return sorted(pq.read_table(root / sid / split).to_pylist(), key=lambda r: r["event_id"])
        assert rows(out) == rows(tmp_path / "straight")


# Kills the process right before the optimizer's update of step N: a step cut off half-way.
STEP_HOOK = ("import torch.optim.optimizer as o\nfrom common.faults import fault_point\n"
             "o.register_optimizer_step_pre_hook(lambda *a: fault_point('train.step'))")


@pytest.mark.parametrize("point", ["train.step@3", "train.mid_checkpoint@2"])
def test_training_killed_mid_step_or_mid_checkpoint_resumes_to_the_same_adapter(point, hh_snapshot, tiny_model,
                                                                                tmp_path):
    import torch
    from safetensors.torch import load_file

    (tmp_path / "train.yaml").write_text(QUICK_TRAIN)
    args = ["train", "--snapshot", hh_snapshot, "--base-model", tiny_model, "--config", tmp_path / "train.yaml"]
    straight = thumbs(*args, "--out", tmp_path / "straight", preamble=STEP_HOOK)
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    kill_at(point, *args, "--out", out, workdir=tmp_path, preamble=STEP_HOOK)
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert [c for c in checkpoints if not c.startswith(".")] == ["step-0000002"]  # step 4's is a hidden temp, if any
    assert not (out / "thumbs_meta.json").exists()

    resumed = thumbs(*args, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert visible(tree(out)).keys() == tree(tmp_path / "straight").keys()
    assert not (out / "checkpoints").exists()
    a, b = (load_file(str(p / "adapter_model.safetensors")) for p in (tmp_path / "straight", out))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def evaluated_adapter(hh_snapshot, tiny_model, tmp_path_factory) -> Path:
    from evaluation.evaluate import EvalConfig, evaluate
    from training.config import TrainConfig
    from training.trainer import train

    out = tmp_path_factory.mktemp("adapter") / "run"
    train(hh_snapshot, str(tiny_model), out, TrainConfig(max_steps=2, micro_batch_size=4, max_length=128,
                                                        max_prompt_length=96, quantize="none", checkpoint_every=0),
          log=lambda s: None)
    evaluate(out, hh_snapshot, config=EvalConfig(generation_prompts=0, resamples=20, device="cpu"), log=lambda s: None)
    return out


REGISTRY_VARIABLE = ("decision.json", "manifest.json", "aliases.json")  # timestamps inside


def promote_args(adapter: Path, registry) -> list:
    return ["promote", "--adapter", adapter, "--registry", registry, "--force"]


@pytest.mark.parametrize("point", ["registry.mid_copy", "promote.before_alias"])
def test_promotion_killed_mid_copy_or_before_the_alias_write_is_finished_by_the_rerun(point, evaluated_adapter,
                                                                                      tmp_path):
    from deploy.registry import Registry

    straight = thumbs(*promote_args(evaluated_adapter, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    expected = visible(tree(tmp_path / "straight", skip=REGISTRY_VARIABLE))

    registry = tmp_path / "registry"
    kill_at(point, *promote_args(evaluated_adapter, registry), workdir=tmp_path)
    assert Registry(registry).aliases()["production"] is None  # production never changed
    left = visible(tree(registry, skip=REGISTRY_VARIABLE))
    if point == "registry.mid_copy":
        assert Registry(registry).versions() == [] and not any("versions/v" in k for k in left)
    else:
        assert Registry(registry).versions() == ["v0001"]
        assert all(expected[k] == v for k, v in left.items())

    rerun = thumbs(*promote_args(evaluated_adapter, registry))
    assert rerun.returncode == 0, rerun.stderr
    assert Registry(registry).aliases()["production"] == "v0001" and Registry(registry).versions() == ["v0001"]
    assert visible(tree(registry, skip=REGISTRY_VARIABLE)) == expected


def test_export_killed_mid_copy_keeps_the_old_export_and_the_rerun_replaces_it_whole(evaluated_adapter, tmp_path):
    registry = tmp_path / "registry"
    assert thumbs(*promote_args(evaluated_adapter, registry)).returncode == 0
    args = ["export", "production", "--registry", registry, "--out"]
    assert thumbs(*args, tmp_path / "straight").returncode == 0
    serve = tmp_path / "serve"
    first = thumbs(*args, serve)
    assert first.returncode == 0, first.stderr
    before = tree(serve)
    (serve / "adapter_model.safetensors").write_bytes(b"an older export")  # so the rerun's replacement shows
    older = tree(serve)

    kill_at("export.mid_copy", *args, serve, workdir=tmp_path)
    assert tree(serve) == older  # the export serving before is untouched
    assert any(p.name.startswith(".serve.tmp-") for p in tmp_path.iterdir())

    rerun = thumbs(*args, serve)
    assert rerun.returncode == 0, rerun.stderr
    assert tree(serve) == before  # the killed export's staging is gone; the replaced export is kept as previous
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".serve.")] == [".serve.previous"]
    straight = tree(tmp_path / "straight")
    assert {k: v for k, v in tree(serve).items() if k != "serving.json"} == \
           {k: v for k, v in straight.items() if k != "serving.json"}
