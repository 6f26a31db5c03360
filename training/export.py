"""The finished run's folder: a peft adapter, the tokenizer, metrics.jsonl and thumbs_meta.json.

Files are written under temp names and renamed; `thumbs_meta.json` comes last, so its presence
means the folder is complete.
"""

from __future__ import annotations

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
    write_json_atomic(Path(out) / META, meta)


def clear_partial(out: Path) -> None:
    """Leftovers of an export that was killed half-way."""
    for stale in Path(out).glob(".export-*"):
        shutil.rmtree(stale, ignore_errors=True)
