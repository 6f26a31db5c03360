"""Resumable checkpoints: adapter weights, optimizer, scheduler, RNG and the data position, every N steps.

Each checkpoint is built in a hidden temp folder and renamed into `OUT/checkpoints/step-NNNNNNN/`,
so a kill at any moment leaves either the previous checkpoint or the new one, never half of one. A
full disk raises `DiskFull` naming the checkpoint, with the temp folder removed and the previous
checkpoints kept: after freeing space, `--resume` continues from the last one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from common.faults import disk_full, fault_point

STATE = "trainer_state.json"


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def latest(out: Path) -> Optional[Path]:
    found = sorted(p for p in checkpoint_dir(out).glob("step-*") if (p / STATE).exists())
    return found[-1] if found else None


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
            save_file(adapter, str(tmp / "adapter.safetensors"))
            fault_point("train.mid_checkpoint")
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng_cpu": torch.get_rng_state(),
                        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                       tmp / "optimizer.pt")
            (tmp / STATE).write_text(json.dumps(dict(state, step=step), indent=2, sort_keys=True))  # written last
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    adapter = load_file(str(path / "adapter.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(adapter))
    if missing:
        raise ValueError(f"checkpoint {path} lacks adapter weights {missing[:3]}...: was it made with other LoRA settings?")
    with torch.no_grad():
        for name, value in adapter.items():
            params[name].copy_(value)
    blob = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng_cpu"])
    if blob["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng_cuda"])
    return json.loads((path / STATE).read_text())


def remove_all(out: Path) -> None:
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
