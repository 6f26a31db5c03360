"""Reference log-probs of every train example: computed once per (base model, tokenizer, data), then cached.

The reference never changes during training, so log πref(y|x) for the matched examples is one
no-grad pass over the snapshot, stored beside it in `SNAPSHOTS/.cache/<snapshot id>/refcache/<key>.npy` (`cache_dir`). The key
hashes the base's weights, its config.json and tokenizer files, the chat template, the truncation limits,
the quantisation and compute dtype, the device kind (GPU and CPU kernels round differently), the versions
of the libraries that compute it, and every token id: a change to any of them never reuses a stale cache.
Under torch.distributed each process scores a share and the shares are summed.

The cache is disposable and carries its own proof: `<key>.json`, written after the values, records their
size and sha256. Values are used only when that proof holds and their shape is right; on any doubt (no
proof, a hash that differs, a short or unreadable file) they are recomputed with a one-line notice, never
trusted and never fatal. Nothing is unpickled (`allow_pickle=False`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from common.atomic import write_json_atomic
from ingest.curate.snapshot import cache_dir as snapshot_cache_dir
from training.data import Encoded, collate, passes
from training.model import Scorer

CACHE_VERSION = 2
KEY_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes")


def cache_dir(snapshot: Path) -> Path:
    """Where a snapshot's reference log-probs are cached: beside the snapshot (ingest/curate/snapshot.py), never in it."""
    return snapshot_cache_dir(snapshot, "refcache")


def cache_key(model_fingerprint: str, quantize: str, dtype: torch.dtype, device: torch.device,
              data_fingerprint: str, *, model_files: str, chat_template: Optional[str], limits: dict,
              libraries: dict) -> str:
    """`data_fingerprint` is `Encoded.fingerprint()`: every token id and label; `model_files` is
    `model_files_fingerprint` (config.json and the tokenizer files); `limits` the truncation limits."""
    parts = {"version": CACHE_VERSION, "model": model_fingerprint, "model_files": model_files,
             "chat_template": chat_template, "limits": limits, "quantize": quantize, "dtype": str(dtype),
             "device": device.type, "data": data_fingerprint,
             "libraries": {name: libraries.get(name) for name in KEY_LIBRARIES}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def reference_logps(scorer: Scorer, encoded: Encoded, *, key: str, cache_dir: Optional[Path], tokens_per_pass: int,
                    max_length: int, pad_id: int, device: torch.device, rank: int = 0, world: int = 1,
                    log=print) -> tuple:
    """(N,) float32 tensor of log πref(y|x) for every example, and whether it came from the cache."""
    path = cache_dir / f"{key}.npy" if cache_dir is not None else None
    if path is not None:
        values, doubt = _load(path, len(encoded))
        if values is not None:
            log(f"reference log-probs: cached at {path}")
            return torch.from_numpy(values), True
        if doubt:
            log(f"reference log-probs: not using the cache at {path} ({doubt}); recomputing")
    values = _score_all(scorer, encoded, tokens_per_pass, max_length, pad_id, device, rank, world, log)
    if path is not None and rank == 0:
        _save(path, values.numpy(), log)
    if world > 1:
        dist.barrier()
    return values, False


def proof_path(path: Path) -> Path:
    """`<key>.json` beside `<key>.npy`: the size and sha256 of the values, written after them."""
    return path.with_suffix(".json")


def _load(path: Path, n: int) -> tuple:
    """(values, "") if the cache at `path` holds `n` values that match their proof; else (None, why not),
    with why "" when there is simply no cache yet."""
    if not path.exists() and not proof_path(path).exists():
        return None, ""
    try:
        proof = json.loads(proof_path(path).read_bytes())
        data = path.read_bytes()
    except FileNotFoundError as err:
        return None, f"{Path(err.filename).name} is missing"
    except (OSError, ValueError) as err:  # ValueError: a proof that is not JSON
        return None, f"unreadable: {err}"
    if not isinstance(proof, dict) or proof.get("bytes") != len(data) or \
            proof.get("sha256") != hashlib.sha256(data).hexdigest():
        return None, f"its {len(data):,} bytes do not match the size and sha256 in {proof_path(path).name}"
    try:
        values = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as err:
        return None, f"unreadable: {err}"
    if values.dtype != np.float32 or values.shape != (n,):
        return None, f"it holds {values.dtype} {values.shape}, not float32 ({n},)"
    return values, ""


def _score_all(scorer, encoded, tokens_per_pass, max_length, pad_id, device, rank, world, log) -> torch.Tensor:
    # longest first, similar lengths together (little padding), each batch within the training's pass budget
    batches = passes(encoded, np.arange(len(encoded)), max_length, tokens_per_pass)
    mine = batches[rank::world]
    values = torch.zeros(len(encoded), dtype=torch.float64)
    start = last = time.monotonic()
    with torch.no_grad(), scorer.reference_mode():
        for k, idx in enumerate(mine, 1):
            batch = collate(encoded, idx, max_length, pad_id).to(device)
            values[torch.from_numpy(idx)] = scorer(batch).double().cpu()
            now = time.monotonic()
            if now - last > 5 or k == len(mine):
                last, rate = now, k / (now - start)
                log(f"  reference log-probs: {k}/{len(mine)} batches, ETA {(len(mine) - k) / rate:,.0f}s")
    if world > 1:
        values = values.to(device)  # NCCL reduces only GPU tensors
        dist.all_reduce(values, op=dist.ReduceOp.SUM)  # each example was scored by exactly one process
    return values.float().cpu()


def _save(path: Path, values: np.ndarray, log) -> None:
    """The values, then their proof; a reader that finds one without the other recomputes."""
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    data = buffer.getvalue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        proof_path(path).unlink(missing_ok=True)  # a stale proof must never vouch for the new values
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        write_json_atomic(proof_path(path), {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                             "examples": len(values), "version": CACHE_VERSION})
        log(f"reference log-probs: cached at {path}")
    except OSError as err:  # a read-only snapshot still trains; it just recomputes next time
        print(f"warning: could not cache reference log-probs at {path}: {err}", file=sys.stderr)
