"""A training run's folder: the one module that knows its layout. Training writes through it; evaluation,
the registry and the flows read through it.

    OUT/adapter_config.json, adapter_model.safetensors   the peft adapter
    OUT/tokenizer*.json, ...                             the tokenizer the run trained with
    OUT/metrics.jsonl                                    one line per optimizer step
    OUT/checkpoints/step-NNNNNNN/                        while unfinished (training/checkpoint.py)
    OUT/thumbs_meta.json                                 written last: base model, snapshot, resolved config, summary

Files are written under temp names and renamed; `thumbs_meta.json` comes last, so its presence
means the folder is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from common.atomic import write_json_atomic

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
META = "thumbs_meta.json"
METRICS = "metrics.jsonl"
LIBRARIES = ("thumbs", "torch", "transformers", "peft", "bitsandbytes", "safetensors", "numpy")


def library_versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_adapter(out: Path, model, tokenizer) -> None:
    """Adapter weights and config plus the tokenizer files, moved into `out` one rename each."""
    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        tmp = Path(tmp)
        model.save_pretrained(tmp / "adapter")
        tokenizer.save_pretrained(tmp / "tokenizer")
        moves = [tmp / "adapter" / name for name in ADAPTER_FILES]
        moves += sorted((tmp / "tokenizer").iterdir())
        for src in moves:
            if not src.exists():
                raise FileNotFoundError(f"peft did not write {src.name}")
            os.replace(src, out / src.name)


def write_meta(out: Path, meta: dict) -> None:
    write_json_atomic(meta_path(out), meta)


class RunFolderError(ValueError):
    """The folder is not a finished `thumbs train` output."""


def meta_path(out: Path) -> Path:
    return Path(out) / META


def metrics_path(out: Path) -> Path:
    return Path(out) / METRICS


def is_finished(out: Path) -> bool:
    return meta_path(out).is_file()


def read_meta(path: Path) -> dict:
    """thumbs_meta.json, after checking the folder is a finished `thumbs train` output."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"adapter folder {path} not found")
    missing = [name for name in (*ADAPTER_FILES, META) if not (path / name).is_file()]
    if missing:
        raise RunFolderError(f"{path} is not a finished `thumbs train` output: missing {', '.join(missing)}")
    try:
        return json.loads(meta_path(path).read_text())
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{meta_path(path)} is not valid JSON: {err}") from err


def read_metrics(out: Path) -> list:
    """metrics.jsonl as a list of step records ([] when the run logged none)."""
    path = metrics_path(out)
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def clear_partial(out: Path) -> None:
    """Leftovers of an export that was killed half-way."""
    for stale in Path(out).glob(".export-*"):
        shutil.rmtree(stale, ignore_errors=True)
