"""A split's token ids, encoded once per (snapshot, tokenizer, limits), then memory-mapped from the cache.

    encoded, cached = encoded_split(snapshot, "train", tokenizer, model_files_fingerprint(model_dir),
                                    max_length=512, max_prompt_length=384)

Stored beside the snapshot in `SNAPSHOTS/.cache/<snapshot id>/tokens/<key>/` (`cache_dir`): the flat id arrays and
offsets (`training.data.Ragged`), labels, prompt groups and row numbers as `.npy`, and `encoded.json` with the
counts, the dropped rows with their reasons, and each array's size and sha256: its proof, written last, the folder
built under a temporary name and renamed into place whole. The key hashes the snapshot's manifest (its files and
their sha256), the split, the model's config and tokenizer files, the chat template, the truncation limits, the
versions of the libraries that tokenize, and the encoding's own version: a change to any of them never reuses a
stale cache. A retried or resumed run, the next epoch's process, and the reference pass read the ids from the page
cache through `np.load(mmap_mode="r")`: the kernel holds them, evictable, not the Python heap.

Like the reference cache, it is disposable and never trusted blindly: every array is checked against its size and
sha256 before it is mapped; on any doubt (no proof, a hash that differs, a missing or unreadable file) the split is
encoded again with a one-line notice, never fatal. Nothing is unpickled (`allow_pickle=False`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from common.atomic import write_json_atomic
from ingest.curate import snapshot as layout  # its names read at call time: one declaration each
from ingest.lake import file_proof
from training.data import Encoded, Ragged, check_trainable, encode

CACHE_VERSION = 1  # bump when encoding's output changes for the same inputs (training/data.py, sequences.py)
ARRAYS = ("prompt_values", "prompt_offsets", "completion_values", "completion_offsets", "desirable", "prompt_group",
          "rows")
MAPPED = ("prompt_values", "completion_values")  # the arrays that grow with the tokens: mapped, not read
PROOF = "encoded.json"
KEY_LIBRARIES = ("transformers", "tokenizers", "jinja2")


def cache_dir(snapshot: Path) -> Path:
    return layout.cache_dir(snapshot, "tokens")


def cache_key(snapshot: Path, split: str, model_files: str, chat_template: Optional[str], limits: dict) -> str:
    """`model_files` is `training.model.model_files_fingerprint` (config.json and the tokenizer files)."""
    manifest = Path(snapshot) / layout.MANIFEST
    parts = {"version": CACHE_VERSION, "manifest": hashlib.sha256(manifest.read_bytes()).hexdigest()
             if manifest.is_file() else None, "split": split, "model_files": model_files,
             "chat_template": chat_template, "limits": limits,
             "libraries": {name: _version(name) for name in KEY_LIBRARIES}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _version(name: str) -> Optional[str]:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def encoded_split(snapshot: Path, split: Optional[str], tokenizer, model_files: str, *, max_length: int,
                  max_prompt_length: int, check: bool = True, log: Callable[[str], None] = print) -> tuple[Encoded, bool]:
    """The split's (None: train) Encoded, its ids memory-mapped from the cache, and whether the cache held it.
    `check` raises DataError as `encode` does when the split cannot train KTO."""
    snapshot, split = Path(snapshot), split or layout.TRAIN
    key = cache_key(snapshot, split, model_files, tokenizer.chat_template,
                    {"max_length": max_length, "max_prompt_length": max_prompt_length})
    folder = cache_dir(snapshot) / key
    encoded, why = _load(folder)
    if encoded is not None:
        log(f"token ids: {len(encoded):,} {split} examples from the cache ({folder})")
        if check:
            check_trainable(encoded, split)
        return encoded, True
    if why:
        log(f"token ids: the cache at {folder} is not used ({why}); encoding {split} again")
    encoded = encode(layout.iter_split(snapshot, split), tokenizer, max_length, max_prompt_length, split=split, check=False)
    if _save(folder, encoded):
        mapped, _ = _load(folder)  # read back and checked, as every reader reads it
        encoded = mapped if mapped is not None else encoded
    if check:
        check_trainable(encoded, split)
    return encoded, False


def _arrays(encoded: Encoded) -> dict:
    return {"prompt_values": encoded.prompt_ids.values, "prompt_offsets": encoded.prompt_ids.offsets,
            "completion_values": encoded.completion_ids.values, "completion_offsets": encoded.completion_ids.offsets,
            "desirable": encoded.desirable, "prompt_group": encoded.prompt_group, "rows": encoded.rows}


def _save(folder: Path, encoded: Encoded) -> bool:
    """The arrays, then the proof, in a temporary folder renamed into place; False (and a warning) if the cache
    cannot be written: a read-only snapshot folder still trains."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            files = {}
            for name, values in _arrays(encoded).items():
                path = work / f"{name}.npy"
                np.save(path, np.ascontiguousarray(values), allow_pickle=False)
                files[name] = file_proof(path)
            write_json_atomic(work / PROOF, {"version": CACHE_VERSION, "examples": len(encoded), "files": files,
                                             "counts": encoded.counts,
                                             "dropped": [[int(r), why] for r, why in encoded.dropped]})
            if folder.exists():
                if _load(folder)[0] is not None:
                    return True  # another process (a rank beside this one) wrote the same cache first
                shutil.rmtree(folder)  # a cache that failed its check: this rebuild replaces it
            os.rename(work, folder)
        finally:
            if work.exists():
                shutil.rmtree(work)
        return True
    except OSError as err:
        print(f"warning: could not cache token ids at {folder}: {err}", file=sys.stderr)
        return False


def _load(folder: Path) -> tuple[Optional[Encoded], str]:
    """(Encoded, "") when every array matches its proof; else (None, why not), "" when there is no cache."""
    if not folder.exists():
        return None, ""
    try:
        proof = json.loads((folder / PROOF).read_bytes())
        files = proof["files"]
        arrays = {}
        for name in ARRAYS:
            path, want = folder / f"{name}.npy", files[name]
            if path.stat().st_size != want["bytes"] or file_proof(path)["sha256"] != want["sha256"]:
                return None, f"{path.name} does not match the size and sha256 in {PROOF}"
            arrays[name] = np.load(path, mmap_mode="r" if name in MAPPED else None, allow_pickle=False)
    except FileNotFoundError as err:
        return None, f"{Path(err.filename).name} is missing"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"unreadable: {type(err).__name__}: {err}"
    if proof.get("version") != CACHE_VERSION or len(arrays["desirable"]) != proof.get("examples"):
        return None, f"written by another version of the cache or torn ({PROOF} says {proof.get('examples')} examples)"
    encoded = Encoded(Ragged(arrays["prompt_values"], arrays["prompt_offsets"]),
                      Ragged(arrays["completion_values"], arrays["completion_offsets"]),
                      arrays["desirable"], arrays["prompt_group"], dict(proof["counts"]), rows=arrays["rows"],
                      dropped=[(int(r), why) for r, why in proof["dropped"]])
    return encoded, ""
