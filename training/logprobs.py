"""Summed completion log-probs from hidden states, without ever holding the batch's full-vocabulary logits.

A causal LM's head turns each position's hidden state into |V| logits; at |V| = 50k-150k that
tensor, in float32, for a whole batch, is what dominates a naive trainer's memory and time. Only
completion tokens count in KTO, so only their positions go through the head, a chunk at a time.
Under autograd, a frozen linear head takes the fused path: each chunk's gradient with respect to its
hidden states, (onehot − softmax)·W, is formed while the chunk's logits exist, so backward needs
neither the logits nor a second matmul to rebuild them.

The head's output goes through the model's own processing before the softmax, exactly as its forward
does: `scale` multiplies the logits (Cohere's `logit_scale`; Granite divides by `logits_scaling`, i.e.
scale = 1 / logits_scaling), then `softcap` squashes them (Gemma-2's `final_logit_softcapping`).
`training.model.head_spec` reads both from the model and refuses a head it does not know.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def completion_logps(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    chunk_tokens: int = 256,
    softcap: Optional[float] = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Σ_t log p(y_t | x, y_<t) over each row's completion tokens.

    Args:
        hidden: (B, T, C) the backbone's last hidden states.
        head: the output layer, (N, C) → (N, V) logits; a frozen `nn.Linear` gets the fused path.
        input_ids: (B, T) prompt + completion (+ padding).
        completion_mask: (B, T) True on completion tokens; prompt and padding are False. A row's
            first token can never be a completion token (nothing predicts it).
        chunk_tokens: completion positions sent through the head at once.
        softcap: the model's final-logit soft-capping (Gemma-2 style), if any; applied after `scale`.
        scale: the factor the model multiplies its head's output by (1 for most models).

    Returns:
        (B,) sums in float32 (float64 for a float64 model); rows without completion tokens give 0.
    """
    if completion_mask[:, 0].any():
        raise ValueError("a completion token at position 0 has no context to predict it from")
    targets_mask = completion_mask[:, 1:]  # token t is predicted from position t-1
    rows = torch.nonzero(targets_mask, as_tuple=True)[0]  # (N,)
    states = hidden[:, :-1][targets_mask]  # (N, C)
    targets = input_ids[:, 1:][targets_mask]  # (N,)

    frozen_linear = isinstance(head, nn.Linear) and not any(p.requires_grad for p in head.parameters())
    if frozen_linear:
        per_token = _FrozenHeadLogps.apply(states, head.weight, head.bias, targets, chunk_tokens, softcap, scale)
    else:
        per_token = _checkpointed_logps(states, head, targets, chunk_tokens, softcap, scale)
    sums = torch.zeros(input_ids.shape[0], dtype=per_token.dtype, device=hidden.device)
    return sums.index_add(0, rows, per_token)


def head_logits(raw: torch.Tensor, softcap: Optional[float] = None, scale: float = 1.0) -> torch.Tensor:
    """The head's raw output (n, V) as the model's forward turns it into logits, in float32 or wider."""
    logits = _upcast(raw)
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _chunk_logits(h, weight, bias, softcap, scale):
    logits = _upcast(nn.functional.linear(h, weight, bias))  # (n, V): one chunk in float32, never the batch
    if scale != 1.0:
        logits.mul_(scale)
    if softcap is None:
        return logits, None
    squashed = torch.tanh(logits / softcap)
    return squashed * softcap, squashed


class _FrozenHeadLogps(torch.autograd.Function):
    """log softmax(h·Wᵀ + b)[y] per row, chunked, with d/dh formed in forward (W and b get no gradient)."""

    @staticmethod
    def forward(ctx, states, weight, bias, targets, chunk_tokens, softcap, scale):
        need_grad = ctx.needs_input_grad[0]
        out = torch.empty(states.shape[0], dtype=_upcast(states).dtype, device=states.device)
        grad = torch.empty_like(states) if need_grad else None
        for start in range(0, states.shape[0], chunk_tokens):
            end = min(start + chunk_tokens, states.shape[0])
            logits, squashed = _chunk_logits(states[start:end], weight, bias, softcap, scale)
            y = targets[start:end, None]
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            out[start:end] = (logits.gather(-1, y) - lse).squeeze(-1)
            if need_grad:
                d_logits = torch.exp_(logits.sub_(lse)).neg_()  # −softmax, in place: no second (n, V) buffer
                d_logits.scatter_add_(-1, y, torch.ones_like(y, dtype=d_logits.dtype))  # + onehot
                if squashed is not None:
                    d_logits.mul_(1 - squashed.square_())  # through softcap·tanh(x / softcap)
                if scale != 1.0:
                    d_logits.mul_(scale)  # through scale·(h·Wᵀ + b)
                grad[start:end] = (d_logits.to(weight.dtype) @ weight).to(states.dtype)
        if need_grad:
            ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad_out[:, None].to(grad.dtype) * grad, None, None, None, None, None, None


def _checkpointed_logps(states, head, targets, chunk_tokens, softcap, scale) -> torch.Tensor:
    """Any head (trainable, quantised, adapted): each chunk recomputed in backward instead of kept."""

    def token_logps(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = head_logits(head(h), softcap, scale)
        return logits.gather(-1, y[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    pieces = []
    for start in range(0, targets.numel(), chunk_tokens):
        h, y = states[start:start + chunk_tokens], targets[start:start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(token_logps, h, y, use_reentrant=False))
        else:
            pieces.append(token_logps(h, y))
    return torch.cat(pieces) if pieces else states.new_zeros(0, dtype=_upcast(states).dtype)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 to float32 for the softmax; float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
