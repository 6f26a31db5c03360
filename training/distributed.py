"""torch.distributed for data-parallel KTO: started by `torchrun` or `accelerate launch`, gloo on CPU, NCCL on GPU.

Only the LoRA adapters train, so instead of wrapping the model in DistributedDataParallel (whose
hooks fight with `disable_adapter()` and 4-bit parameters) the few adapter gradients are averaged in
one flat all-reduce after backward: the same arithmetic as DDP, and the reference passes stay local.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def start(want_cuda: bool) -> Processes:
    """Join the process group the launcher described in the environment; a lone process gets world 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if want_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return Processes(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def stop(processes: Processes) -> None:
    if processes.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(params: list, processes: Processes) -> None:
    """Mean of each gradient over all processes, in one collective."""
    if processes.world == 1:
        return
    grads = [p.grad for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= processes.world
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


def all_sum(values: torch.Tensor, processes: Processes) -> torch.Tensor:
    if processes.world > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(processes: Processes) -> None:
    if processes.world > 1:
        dist.barrier()
