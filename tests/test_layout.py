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


def module_imports(path: Path, root: Path = ROOT) -> set:
    """The project modules a file imports (dotted names, nested imports included), `from a import b` counted as
    a.b where b is a module of the tree, else as a."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (root / sub.replace(".", "/")).with_suffix(".py").is_file() or (root / sub.replace(".", "/")).is_dir()
                names.add(sub if is_module else node.module)
    return names


def import_circles(packages, root: Path = ROOT) -> list:
    """Every circle of module imports among the packages' files (a package's __init__ stands for the package)."""
    def name(path: Path) -> str:
        parts = path.relative_to(root).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(p): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    graph = {m: sorted(n for n in module_imports(p, root) if n in modules and n != m) for m, p in modules.items()}
    circles, state = [], {}

    def visit(module: str, stack: list) -> None:  # depth first; a grey node met again closes a circle
        state[module] = "grey"
        stack.append(module)
        for nxt in graph[module]:
            if state.get(nxt) == "grey":
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[module] = "black"

    for module in graph:
        if module not in state:
            visit(module, [])
    return circles


def test_intake_and_curation_share_storage_but_not_each_other():
    """ingest/ holds two stages: intake writes the lake, curation reads it. Each may use the storage modules they
    share (schema, lake, remote, privacy, progress), never the other stage's; only the command line joins them."""
    crossings = []
    for stage, other in (("intake", "curate"), ("curate", "intake")):
        for path in sorted((ROOT / "ingest" / stage).rglob("*.py")):
            crossings += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(module_imports(path))
                          if name.startswith(f"ingest.{other}")]
    for path in sorted((ROOT / "ingest").glob("*.py")):
        if path.name != "cli.py":
            crossings += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(module_imports(path))
                          if name.startswith(("ingest.intake", "ingest.curate"))]
    assert crossings == [], "imports across ingest's stages:\n" + "\n".join(crossings)


def test_no_import_circle_anywhere():
    """A circle (job -> formats.batch -> job, say) means one of its files borrows what should have a home of its own."""
    circles = import_circles(LAYERS + ["benchmarks"])
    assert circles == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_circle_check_finds_a_circle_through_a_lazy_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("import os\n\ndef f():\n    from pkg.c import g\n")
    (tmp_path / "pkg" / "c.py").write_text("from pkg.a import x\n")
    (tmp_path / "pkg" / "d.py").write_text("from pkg import a\n")
    assert import_circles(["pkg"], tmp_path) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


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
    from ingest.curate import snapshot as layout
    from ingest.curate.pipeline import curate
    from ingest.curate.rules import CurateConfig
    from ingest.intake.job import IngestConfig, ingest
    from ingest.curate.manifest import verify_snapshot
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
