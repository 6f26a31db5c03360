"""The KTO loss, the z0 estimate and completion log-probs: hand-worked numbers and a naive reference."""

from __future__ import annotations

import math

import pytest
import torch

from training.logprobs import completion_logps
from training.loss import estimate_kl, kto_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_loss_matches_the_formula_worked_by_hand():
    """β = 0.1, z0 = 0.5, λD = 1, λU = 2.

    example 0, desirable:   r = -10 - (-11) = 1;   λD·(1 − σ(0.1·(1 − 0.5)))   = 1 − σ(0.05) = 0.48750260...
    example 1, undesirable: r = -12 - (-11) = -1;  λU·(1 − σ(0.1·(0.5 − (−1)))) = 2·(1 − σ(0.15)) = 0.92514030...
    """
    out = kto_loss(torch.tensor([-10.0, -12.0], dtype=torch.float64), torch.tensor([-11.0, -11.0], dtype=torch.float64),
                   torch.tensor([True, False]), torch.tensor(0.5, dtype=torch.float64),
                   beta=0.1, desirable_weight=1.0, undesirable_weight=2.0)
    assert out.losses.tolist() == pytest.approx([0.4875026035157897, 0.9251403093125008], abs=1e-12)
    assert out.losses.tolist() == pytest.approx([1 - sigmoid(0.05), 2 * (1 - sigmoid(0.15))], abs=1e-12)
    assert out.rewards.tolist() == pytest.approx([0.1, -0.1], abs=1e-12)


def test_gradient_pushes_desirable_up_undesirable_down_and_never_flows_into_z0():
    policy = torch.tensor([-3.0, -3.0], requires_grad=True)
    kl = torch.tensor(0.2, requires_grad=True)
    out = kto_loss(policy, torch.tensor([-3.0, -3.0]), torch.tensor([True, False]), kl, 0.5, 1.0, 1.0)
    out.losses.mean().backward()
    assert policy.grad[0] < 0 < policy.grad[1]  # descent raises the thumbs-up, lowers the thumbs-down
    assert kl.grad is None


def test_z0_is_the_clamped_mean_log_ratio_of_the_mismatched_pairs_and_is_detached():
    policy = torch.tensor([-5.0, -7.0, -3.0], requires_grad=True)
    assert estimate_kl(policy, torch.tensor([-6.0, -6.0, -6.0])).item() == pytest.approx(1.0)  # (1 - 1 + 3) / 3
    assert estimate_kl(policy, torch.tensor([-1.0, -1.0, -1.0])).item() == 0.0  # mean -4 clamps to 0
    assert not estimate_kl(policy, torch.tensor([-6.0, -6.0, -6.0])).requires_grad
    with pytest.raises(ValueError, match="mismatched"):
        estimate_kl(torch.zeros(0), torch.zeros(0))


def naive_completion_logps(hidden, head, input_ids, completion_mask, softcap=None, scale=1.0):
    logits = head(hidden) * scale  # Cohere multiplies; Granite divides (scale = 1 / logits_scaling)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logps = logits.log_softmax(-1)[:, :-1]  # (B, T-1, V): the whole batch at once
    token = logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token * completion_mask[:, 1:]).sum(-1)


@pytest.mark.parametrize("frozen", [True, False], ids=["fused-frozen-head", "checkpointed-any-head"])
@pytest.mark.parametrize("softcap, scale", [(None, 1.0), (2.0, 1.0), (None, 0.125), (2.0, 4.0)])
def test_chunked_log_probs_and_their_gradients_equal_the_full_logits_computation(frozen, softcap, scale):
    torch.manual_seed(0)
    B, T, C, V = 3, 7, 5, 11
    head = torch.nn.Linear(C, V, bias=True).double().requires_grad_(not frozen)
    input_ids = torch.randint(0, V, (B, T))
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 2:7] = True  # prompt of 2, completion of 5
    mask[1, 4:6] = True  # prompt of 4, completion of 2, then padding
    mask[2, 1:2] = True  # a one-token completion
    hidden = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)

    expected = naive_completion_logps(hidden, head, input_ids, mask, softcap, scale)
    (grad_expected,) = torch.autograd.grad(expected.sum() * 0.5, hidden)  # a non-unit upstream gradient
    got = completion_logps(hidden, head, input_ids, mask, chunk_tokens=3, softcap=softcap, scale=scale)  # 3 chunks
    (grad_got,) = torch.autograd.grad(got.sum() * 0.5, hidden)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_got, grad_expected, atol=1e-6, rtol=0)
    assert grad_got[1, 6:].abs().sum() == 0  # padding and the last position predict nothing
    with torch.no_grad():
        no_grad = completion_logps(hidden, head, input_ids, mask, 3, softcap, scale)
        torch.testing.assert_close(no_grad.double(), expected,
                                   atol=1e-6, rtol=0)


def test_a_completion_token_at_position_zero_is_refused():
    mask = torch.tensor([[True, True]])
    with pytest.raises(ValueError, match="position 0"):
        completion_logps(torch.zeros(1, 2, 3), torch.nn.Linear(3, 4), torch.zeros(1, 2, dtype=torch.long), mask)
