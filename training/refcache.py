"""Reference log-probs of every train example: computed once per (base model, tokenizer, data), then cached.

The reference never changes during training, so log πref(y|x) for the matched examples is one
no-grad pass over the snapshot, stored beside it in `SNAPSHOT/refcache/<key>.npy` (`cache_dir`). The key
hashes the base's weights, its config.json and tokenizer files, the chat template, the truncation limits,
the quantisation and compute dtype, the device kind (GPU and CPU kernels round differently), the versions
of the libraries that compute it, and every token id: a change to any of them never reuses a stale cache.
Under torch.distributed each process scores a share and the shares are summed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from training.data import Encoded, collate
from training.model import Scorer

CACHE_VERSION = 2
KEY_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes")


def cache_dir(snapshot: Path) -> Path:
    """Where a snapshot's reference log-probs are cached (the one place that decides it)."""
    return Path(snapshot) / "refcache"


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


def reference_logps(scorer: Scorer, encoded: Encoded, *, key: str, cache_dir: Optional[Path], batch_size: int,
                    max_length: int, pad_id: int, device: torch.device, rank: int = 0, world: int = 1,
                    log=print) -> tuple:
    """(N,) float32 tensor of log πref(y|x) for every example, and whether it came from the cache."""
    path = cache_dir / f"{key}.npy" if cache_dir is not None else None
    if path is not None and path.exists():
        values = np.load(path)
        if values.shape == (len(encoded),):
            log(f"reference log-probs: cached at {path}")
            return torch.from_numpy(values), True
    values = _score_all(scorer, encoded, batch_size, max_length, pad_id, device, rank, world, log)
    if path is not None and rank == 0:
        _save(path, values.numpy(), log)
    if world > 1:
        dist.barrier()
    return values, False


def _score_all(scorer, encoded, batch_size, max_length, pad_id, device, rank, world, log) -> torch.Tensor:
    order = np.argsort(encoded.lengths, kind="stable")  # similar lengths together: little padding
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, values)
        os.replace(tmp, path)
        log(f"reference log-probs: cached at {path}")
    except OSError as err:  # a read-only snapshot still trains; it just recomputes next time
        print(f"warning: could not cache reference log-probs at {path}: {err}", file=sys.stderr)
