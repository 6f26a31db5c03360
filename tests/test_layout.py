"""The package layering, read from the source: each stage imports only stages below it, and only flows/ imports Prefect.

    common ← ingest ← training ← evaluation ← deploy ← flows

An arrow from a lower package to a higher one (evaluation importing deploy, say) is how a pure policy
ends up dragging a CLI, a registry or an orchestrator into every test that touches it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["common", "ingest", "training", "evaluation", "deploy", "flows"]
NO_PREFECT = LAYERS[:-1]


def imported_packages(path: Path) -> set:
    """Top-level names of every import in the file, nested ones (inside functions) included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def sources(package: str) -> list:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return files


def test_no_stage_imports_a_stage_above_it():
    upward = []
    for rank, package in enumerate(LAYERS):
        above = set(LAYERS[rank + 1:])
        for path in sources(package):
            for name in sorted(imported_packages(path) & above):
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == [], "imports that run up the layers:\n" + "\n".join(upward)


def test_only_flows_imports_prefect():
    offenders = [str(path.relative_to(ROOT)) for package in NO_PREFECT for path in sources(package)
                 if "prefect" in imported_packages(path)]
    assert offenders == []


def test_the_layer_check_sees_nested_imports(tmp_path):
    """The check must not pass by reading only the top of a file: a lazy import counts too."""
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from deploy.promote import promote\n    import prefect.artifacts\n")
    assert imported_packages(module) == {"os", "deploy", "prefect"}


@pytest.mark.slow
def test_renaming_a_layout_constant_changes_every_reader_and_writer(tmp_path, monkeypatch, tiny_model):
    """The snapshot's and the run folder's names live in one module each: rename them there, and curate,
    verification, training, its cache and evaluation all follow, with no file under the old names."""
    import gzip

    from deploy.cli import evaluate_command  # noqa: F401  (the command module imports cleanly under the rename)
    from evaluation.evaluate import EvalConfig, evaluate
    from ingest import snapshot as layout
    from ingest.curate import curate
    from ingest.curation import CurateConfig
    from ingest.job import IngestConfig, ingest
    from ingest.manifest import verify_snapshot
    from tests.conftest import HH_PATH
    from training import run_folder
    from training.config import TrainConfig
    from training.refcache import cache_dir
    from training.trainer import train

    renames = {(layout, "STATS"): "stats-x.json", (layout, "MANIFEST"): "manifest-x.json", (layout, "CACHES"): ".cache-x",
               (layout, "TRAIN"): "train-x", (layout, "EVAL"): "eval-x", (run_folder, "META"): "meta-x.json",
               (run_folder, "METRICS"): "metrics-x.jsonl"}
    for (module, name), value in renames.items():
        monkeypatch.setattr(module, name, value)
    monkeypatch.setattr(layout, "SPLITS", (layout.TRAIN, layout.EVAL))

    with gzip.open(HH_PATH, "rt") as f:
        (tmp_path / "hh.jsonl").write_text("".join(next(f) for _ in range(60)))
    ingest([tmp_path / "hh.jsonl"], tmp_path / "lake", IngestConfig(format="hh", insecure_dev_key=True), progress=False)
    snapshot = Path(curate(tmp_path / "lake", tmp_path / "snapshots", config=CurateConfig(eval_fraction=0.2))["path"])
    assert sorted(p.name for p in snapshot.iterdir()) == ["eval-x", "manifest-x.json", "stats-x.json", "train-x"]
    assert verify_snapshot(snapshot) == []

    out = tmp_path / "run"
    config = TrainConfig(max_steps=2, micro_batch_size=4, max_length=128, max_prompt_length=64, checkpoint_every=0,
                         quantize="none", device="cpu")
    train(snapshot, str(tiny_model), out, config, log=lambda line: None)
    assert (out / "meta-x.json").is_file() and (out / "metrics-x.jsonl").is_file()
    assert not (out / "thumbs_meta.json").exists() and not (out / "metrics.jsonl").exists()
    assert ".cache-x" in cache_dir(snapshot).parts and list(cache_dir(snapshot).glob("*.npy"))
    assert sorted(p.name for p in snapshot.iterdir()) == ["eval-x", "manifest-x.json", "stats-x.json", "train-x"]

    result = evaluate(out, snapshot, config=EvalConfig(generation_prompts=0, resamples=10, device="cpu"),
                      log=lambda line: None)
    assert result["eval_examples"]["examples"] > 0 and result["eval_examples"]["desirable"] > 0
