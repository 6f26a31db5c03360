"""Resumable checkpoints: adapter weights, optimizer, scheduler, RNG and the data position, every N steps.

    OUT/checkpoints/step-NNNNNNN/adapter.safetensors     the trainable (LoRA) weights
                                 optimizer.safetensors   every tensor of the optimizer, scheduler and RNG states
                                 optimizer.json          the rest of those states, tensors named by key
                                 trainer_state.json      written last: step, run identity, and the proof

Nothing here is pickled: a planted file can at worst fail to load, never run code. The proof in
`trainer_state.json` holds each file's size and sha256, and the record's own sha256; `read` checks them
all before anything is used, so a truncated, bit-flipped or missing file raises `CheckpointError` naming
the checkpoint, and `--resume` falls back to the one before it (training/trainer.py).

Each checkpoint is built in a hidden temp folder, flushed to disk and renamed into place, so a kill at
any moment leaves either the previous checkpoint or the new one, never half of one. A full disk raises
`DiskFull` naming the checkpoint, with the temp folder removed and the previous checkpoints kept: after
freeing space, `--resume` continues from the last one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors, save as save_tensors

from common.faults import disk_full, fault_point

STATE = "trainer_state.json"
ADAPTER, TENSORS, TREE = "adapter.safetensors", "optimizer.safetensors", "optimizer.json"
FILES = (ADAPTER, TENSORS, TREE)


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: a file missing, truncated or changed since it was written."""


@dataclass
class Checkpoint:
    path: Path
    state: dict  # trainer_state.json without its proof: the step and the identity of the run that saved it
    blobs: dict  # file name -> bytes, each already checked against the proof


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def saved(out: Path) -> List[Path]:
    """Every checkpoint folder, newest first. Each appeared whole by a rename; whether it is still whole
    is for `read` to say."""
    return sorted((p for p in checkpoint_dir(out).glob("step-*") if p.is_dir()), reverse=True)


def latest(out: Path) -> Optional[Path]:
    found = saved(out)
    return found[0] if found else None


def save(out: Path, step: int, model: torch.nn.Module, optimizer, scheduler, state: dict, keep: int) -> Path:
    root = checkpoint_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    for stale in root.glob(".tmp-step-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    try:
        with disk_full(final):
            tmp.mkdir()
            adapter = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
            files = {ADAPTER: _write(tmp / ADAPTER, save_tensors(adapter))}
            fault_point("train.mid_checkpoint")
            tensors: dict = {}
            tree = _to_tree({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "rng_cpu": torch.get_rng_state(),
                             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                            tensors)
            files[TENSORS] = _write(tmp / TENSORS, save_tensors(tensors))
            files[TREE] = _write(tmp / TREE, json.dumps(tree).encode())
            record = json.loads(json.dumps(dict(state, step=step, files=files)))  # as a reader parses it
            _write(tmp / STATE, json.dumps(dict(record, sha256=_digest(record)), indent=2, sort_keys=True).encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # a damaged one of this step, which resume skipped
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read(path: Path) -> Checkpoint:
    """The checkpoint at `path` after checking every file against the proof in trainer_state.json."""
    try:
        record = json.loads((path / STATE).read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is damaged: {STATE} is missing") from None
    except (OSError, ValueError) as err:  # ValueError: not UTF-8 or not JSON
        raise CheckpointError(f"checkpoint {path} is damaged: {STATE} is unreadable ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or "sha256" not in record:
        raise CheckpointError(f"checkpoint {path} carries no proof of its files (written by a thumbs before "
                              "checkpoints were verified, or damaged)")
    state = {k: v for k, v in record.items() if k != "sha256"}
    if _digest(state) != record["sha256"]:
        raise CheckpointError(f"checkpoint {path} is damaged: {STATE} does not match its own sha256")
    blobs = {}
    for name in FILES:
        blobs[name] = _read_checked(path / name, record["files"].get(name))
    del state["files"]
    return Checkpoint(path, state, blobs)


def restore(checkpoint: Checkpoint, model: torch.nn.Module, optimizer, scheduler) -> None:
    """Put a `read` checkpoint's adapter weights, optimizer, scheduler and RNG states in place."""
    try:
        adapter = load_tensors(checkpoint.blobs[ADAPTER])
        blob = _from_tree(json.loads(checkpoint.blobs[TREE]), load_tensors(checkpoint.blobs[TENSORS]))
    except (SafetensorError, ValueError, KeyError, TypeError) as err:  # its proof held: written by another thumbs
        raise CheckpointError(f"checkpoint {checkpoint.path} cannot be read by this thumbs: {err}") from err
    params = dict(model.named_parameters())
    missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(adapter))
    if missing:
        raise ValueError(f"checkpoint {checkpoint.path} lacks adapter weights {missing[:3]}...: was it made with "
                         "other LoRA settings?")
    with torch.no_grad():
        for name, value in adapter.items():
            params[name].copy_(value)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng_cpu"])
    if blob["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng_cuda"])


def load(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """`read` then `restore`; the checkpoint's state (step and run identity)."""
    checkpoint = read(path)
    restore(checkpoint, model, optimizer, scheduler)
    return checkpoint.state


def remove_all(out: Path) -> None:
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)


# --- the proof --------------------------------------------------------------------------------------------

def _digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _write(path: Path, data: bytes) -> dict:
    """Write and flush `data`; its proof."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the rename that commits the folder must not reach the disk before the bytes
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _read_checked(path: Path, proof: Optional[dict]) -> bytes:
    where = f"checkpoint {path.parent} is damaged: {path.name}"
    if not isinstance(proof, dict):
        raise CheckpointError(f"{where} is not in the proof of {STATE}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{where} is missing") from None
    except OSError as err:
        raise CheckpointError(f"{where} is unreadable ({err})") from err
    if len(data) != proof.get("bytes"):
        raise CheckpointError(f"{where} holds {len(data):,} bytes, {proof.get('bytes')} were written")
    if hashlib.sha256(data).hexdigest() != proof.get("sha256"):
        raise CheckpointError(f"{where} does not match its sha256 (changed since it was written)")
    return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- optimizer and scheduler states as JSON + named tensors (no pickle) ------------------------------------

def _to_tree(obj, tensors: dict):
    """`obj` as JSON, each tensor moved into `tensors` and replaced by {"tensor": its key}."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
        return {"tensor": key}
    if isinstance(obj, dict):
        if not all(isinstance(k, (int, str)) for k in obj):
            raise TypeError(f"cannot checkpoint a dict keyed by {sorted({type(k).__name__ for k in obj})}")
        return {"dict": [[k, _to_tree(v, tensors)] for k, v in obj.items()]}  # a list keeps int keys ints
    if isinstance(obj, tuple):
        return {"tuple": [_to_tree(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_to_tree(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _from_tree(node, tensors: dict):
    if isinstance(node, list):
        return [_from_tree(v, tensors) for v in node]
    if isinstance(node, dict):
        (kind, value), = node.items()
        if kind == "tensor":
            return tensors[value]
        if kind == "tuple":
            return tuple(_from_tree(v, tensors) for v in value)
        if kind == "dict":
            return {k: _from_tree(v, tensors) for k, v in value}
        raise ValueError(f"unknown node {kind!r} in {TREE}")
    return node
