"""A training run's folder: the one module that knows its layout. Training writes through it; evaluation,
the registry and the flows read through it.

    OUT/adapter_config.json, adapter_model.safetensors   the peft adapter
    OUT/tokenizer*.json, ...                             the tokenizer the run trained with
    OUT/metrics.jsonl                                    one line per optimizer step
    OUT/checkpoints/step-NNNNNNN/                        while unfinished (training/checkpoint.py)
    OUT/thumbs_meta.json                                 written last: base model, snapshot, resolved config, summary

Files are written under temp names and renamed; `thumbs_meta.json` comes last, so its presence
means the folder is complete. It carries the proof of the rest: each file training wrote, with its size
and sha256, and its own sha256; `read_meta` checks them all, so a torn, edited or missing file gives one
`RunFolderError` naming it instead of a wrong evaluation or export. (A folder written before the proof
existed has none to check; it is read as before.)
"""

from __future__ import annotations

import hashlib
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


def write_adapter(out: Path, model, tokenizer) -> list:
    """Adapter weights and config plus the tokenizer files, moved into `out` one rename each; their names."""
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
    return [src.name for src in moves]


def write_meta(out: Path, meta: dict, files: list) -> None:
    """thumbs_meta.json, last, with the proof of `files` (names in `out`) and of itself."""
    record = dict(meta, files={name: _proof(Path(out) / name) for name in sorted(files)})
    record = json.loads(json.dumps(record))  # the digest is of what a reader will parse (int keys become str)
    write_json_atomic(meta_path(out), dict(record, sha256=_digest(record)))


class RunFolderError(ValueError):
    """The folder is not a finished `thumbs train` output."""


def meta_path(out: Path) -> Path:
    return Path(out) / META


def metrics_path(out: Path) -> Path:
    return Path(out) / METRICS


def is_finished(out: Path) -> bool:
    return meta_path(out).is_file()


def read_meta(path: Path) -> dict:
    """thumbs_meta.json, after checking the folder is a finished `thumbs train` output whose files are as written."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"adapter folder {path} not found")
    missing = [name for name in (*ADAPTER_FILES, META) if not (path / name).is_file()]
    if missing:
        raise RunFolderError(f"{path} is not a finished `thumbs train` output: missing {', '.join(missing)}")
    try:
        meta = json.loads(meta_path(path).read_bytes())
    except (OSError, ValueError) as err:  # ValueError: not UTF-8 or not JSON
        raise _damaged(meta_path(path), f"unreadable ({err})") from err
    if not isinstance(meta, dict) or not {"base_model", "base_model_sha256", "config"} <= meta.keys():
        raise _damaged(meta_path(path), "not a thumbs_meta.json record")
    if "sha256" in meta or "files" in meta:
        record = {k: v for k, v in meta.items() if k != "sha256"}
        if meta.get("sha256") != _digest(record) or not isinstance(meta.get("files"), dict):
            raise _damaged(meta_path(path), "does not match its own sha256")
        for name, proof in meta["files"].items():
            if _proof(path / name) != proof:
                raise _damaged(path / name, "is missing or differs from the size and sha256 in thumbs_meta.json")
    return meta


def read_metrics(out: Path) -> list:
    """metrics.jsonl as a list of step records ([] when the run logged none); checked against thumbs_meta.json's
    proof once the run is finished, and line by line."""
    path = metrics_path(out)
    if not path.is_file():
        return []
    proof = _meta_files(out).get(METRICS)
    if proof is not None and _proof(path) != proof:
        raise _damaged(path, "differs from the size and sha256 in thumbs_meta.json")
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line else None
        except ValueError:
            row = "torn"
        if row is not None and not (isinstance(row, dict) and type(row.get("step")) is int):
            raise _damaged(path, f"line {number} is not a step record")
        rows += [row] if row else []
    return rows


def _meta_files(out: Path) -> dict:
    """The proof thumbs_meta.json records, verified; {} for an unfinished run or one without a proof."""
    return read_meta(out).get("files", {}) if is_finished(out) else {}


def _damaged(path: Path, why: str) -> RunFolderError:
    return RunFolderError(f"{path} is damaged: {why}. A run folder is not repaired: train again into a new folder "
                          "(`thumbs train --snapshot ... --out NEW`)")


def _digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _proof(path: Path) -> dict | None:
    """{"bytes", "sha256"} of a file, or None if there is none."""
    h, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
                size += len(block)
    except (FileNotFoundError, IsADirectoryError):
        return None
    return {"bytes": size, "sha256": h.hexdigest()}


def clear_partial(out: Path) -> None:
    """Leftovers of an export that was killed half-way."""
    for stale in Path(out).glob(".export-*"):
        shutil.rmtree(stale, ignore_errors=True)
