"""Summed completion log-probs from hidden states, without ever holding the batch's full-vocabulary logits.

A causal LM's head turns each position's hidden state into |V| logits; at |V| = 50k-150k that
tensor, in float32, for a whole batch, is what dominates a naive trainer's memory and time. Only
completion tokens count in KTO, so only their positions go through the head, a chunk at a time,
and under autograd each chunk is recomputed in backward instead of kept (activation checkpointing).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.checkpoint import checkpoint


def completion_logps(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    chunk_tokens: int = 1024,
    softcap: Optional[float] = None,
) -> torch.Tensor:
    """Σ_t log p(y_t | x, y_<t) over each row's completion tokens.

    Args:
        hidden: (B, T, C) the backbone's last hidden states.
        head: maps (N, C) hidden states to (N, V) logits (the model's output layer).
        input_ids: (B, T) prompt + completion (+ padding).
        completion_mask: (B, T) True on completion tokens; prompt and padding are False. A row's
            first token can never be a completion token (nothing predicts it).
        chunk_tokens: completion positions sent through the head at once.
        softcap: the model's final-logit soft-capping (Gemma-2 style), if any.

    Returns:
        (B,) float32 sums; rows without completion tokens give 0.
    """
    if completion_mask[:, 0].any():
        raise ValueError("a completion token at position 0 has no context to predict it from")
    targets_mask = completion_mask[:, 1:]  # token t is predicted from position t-1
    rows = torch.nonzero(targets_mask, as_tuple=True)[0]  # (N,)
    states = hidden[:, :-1][targets_mask]  # (N, C)
    targets = input_ids[:, 1:][targets_mask]  # (N,)

    def token_logps(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()  # (n, V): one chunk in float32, never the batch
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits.gather(-1, y[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    pieces = []
    for start in range(0, targets.numel(), chunk_tokens):
        h, y = states[start:start + chunk_tokens], targets[start:start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(token_logps, h, y, use_reentrant=False))
        else:
            pieces.append(token_logps(h, y))
    per_token = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=hidden.device)
    return sums.index_add(0, rows, per_token)
