"""The KTO loss: pure math over summed completion log-probs (Ethayarajh et al., ICML 2024, eq. 7).

Nothing here touches a model, an optimizer or a process group except `estimate_kl`, which
all-reduces two numbers when a group is given; everything else is a function of tensors.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist


class KTOLoss(NamedTuple):
    losses: torch.Tensor  # (B,) per-example weighted loss; the training loss is its mean
    rewards: torch.Tensor  # (B,) β·r, detached: the implied reward of each example


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> KTOLoss:
    """Per-example KTO loss.

    With r = log πθ(y|x) − log πref(y|x) (each a sum over the completion's tokens) and the reference
    point z0 = `kl` (a detached scalar, see `estimate_kl`), the paper's eq. 7 with value function
    v gives, per example,

        desirable:    λD · (1 − σ(β·(r − z0)))
        undesirable:  λU · (1 − σ(β·(z0 − r)))

    which is λ_y − v(x, y). The training loss is the mean over the batch's examples.

    Args:
        policy_logps: (B,) log πθ(y|x), differentiable.
        reference_logps: (B,) log πref(y|x), no gradient needed.
        desirable: (B,) bool, True for a thumbs-up.
        kl: () the reference point z0, already clamped at 0 and detached; 0 for the z0 = 0 variant.
        beta: β, the sharpness of the value function around z0.
        desirable_weight, undesirable_weight: λD and λU.
    """
    r = policy_logps - reference_logps
    z0 = kl.detach()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    return KTOLoss(losses=losses, rewards=(beta * r).detach())


def estimate_kl(
    policy_kl_logps: torch.Tensor,
    reference_kl_logps: torch.Tensor,
    group: Optional[dist.ProcessGroup] = None,
) -> torch.Tensor:
    """z0: the mean log-ratio over mismatched pairs (prompt i, completion of another prompt), ≥ 0, detached.

    The mean is taken over every process's pairs (sum and count are all-reduced, so ranks with
    different pair counts are weighted correctly); pass `group=None` outside torch.distributed.
    """
    with torch.no_grad():
        ratios = (policy_kl_logps - reference_kl_logps).to(torch.float64)
        total = torch.stack([ratios.sum(), torch.tensor(float(ratios.numel()), dtype=torch.float64,
                                                        device=ratios.device)])
        if group is not None or (dist.is_available() and dist.is_initialized()):
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        if total[1] == 0:
            raise ValueError("no mismatched pairs to estimate z0 from: every micro-batch needs 2 prompts")
        return (total[0] / total[1]).clamp(min=0).to(policy_kl_logps.dtype)
