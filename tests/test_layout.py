"""The package layering, read from the source: each stage imports only stages below it, and only flows/ imports Prefect.

    common ← ingest ← training ← evaluation ← deploy ← flows

An arrow from a lower package to a higher one (evaluation importing deploy, say) is how a pure policy
ends up dragging a CLI, a registry or an orchestrator into every test that touches it.
"""

from __future__ import annotations

import ast
from pathlib import Path

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
