"""grpo_loss against a token-by-token reference; micro-batches add up to the full batch."""

from __future__ import annotations

import math

import pytest
import torch

from sapo_local.loss import LOSS_TYPES, grpo_loss, loss_normalizer, truncated_is_weights

EPS_LOW, EPS_HIGH = 0.2, 0.28
LENGTHS = [9, 4, 1, 0, 7, 9, 3, 6]  # variable, padded to T = 9; one empty completion
MAX_LEN = 12  # generation cap (> T: the longest completion stopped early)


def reference(logprobs, old, advantages, lengths, loss_type, *, beta=0.0, ref=None, is_w=None):
    """The objective written out: explicit loops over completions and tokens, scalar ops only."""
    total, tokens = 0.0, sum(lengths)
    for i, n in enumerate(lengths):
        seq = 0.0
        for t in range(n):
            lp = logprobs[i, t]
            r = torch.exp(lp - old[i, t]) if old is not None else torch.exp(lp - lp.detach())
            a = advantages[i]
            clipped_r = min(max(r, 1 - EPS_LOW), 1 + EPS_HIGH)  # Python min/max: one branch wins
            surrogate = min(r * a, clipped_r * a)
            token = -surrogate * (is_w[i, t] if is_w is not None else 1.0)
            if beta:
                d = ref[i, t] - lp
                token = token + beta * (torch.exp(d) - d - 1)
            seq = seq + token
        if loss_type == "grpo":
            total = total + (seq / n if n else 0.0) / len(lengths)
        elif loss_type == "dr_grpo":
            total = total + seq / (len(lengths) * MAX_LEN)
        else:
            total = total + seq / tokens
    return total


def batch(seed=0, lengths=LENGTHS, garbage_padding=True):
    """Random float64 tensors; ratios spread over [0.5, 1.7] so both clips are active for both signs of A."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    mask = torch.zeros(B, T)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    logprobs = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    ratio = 0.5 + 1.2 * torch.rand(B, T, generator=g, dtype=torch.float64)
    old = logprobs - ratio.log()
    advantages = torch.randn(B, generator=g, dtype=torch.float64)
    advantages[:4] = torch.tensor([1.0, -1.0, 0.5, 0.7])  # both signs on the long completions
    advantages[4:6] = torch.tensor([-0.8, 1.2])
    ref = logprobs + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    is_w = 0.5 + torch.rand(B, T, generator=g, dtype=torch.float64)
    if garbage_padding:  # what engines leave in padding must not matter
        pad = mask == 0
        logprobs[pad], old[pad], ref[pad], is_w[pad] = math.nan, -math.inf, math.nan, math.inf
    return logprobs.requires_grad_(), old, advantages, mask, ref, is_w


VARIANTS = [
    pytest.param({}, id="plain"),
    pytest.param({"beta": 0.04}, id="kl"),
    pytest.param({"is_w": True}, id="is_weights"),
    pytest.param({"beta": 0.1, "is_w": True}, id="kl+is_weights"),
]


def kwargs_for(variant, ref, is_w):
    kw = {}
    if variant.get("beta"):
        kw.update(beta=variant["beta"], ref_logprobs=ref)
    if variant.get("is_w"):
        kw.update(is_weights=is_w)
    return kw


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_reference_values_and_gradients(loss_type, variant):
    logprobs, old, advantages, mask, ref, is_w = batch()
    kw = kwargs_for(variant, ref, is_w)
    norm = loss_normalizer(LENGTHS, loss_type, MAX_LEN)
    loss, metrics = grpo_loss(
        logprobs,
        old,
        advantages,
        mask,
        normalizer=norm,
        loss_type=loss_type,
        epsilon_low=EPS_LOW,
        epsilon_high=EPS_HIGH,
        **kw,
    )
    (grad,) = torch.autograd.grad(loss, logprobs)
    want = reference(
        logprobs, old, advantages, LENGTHS, loss_type, beta=kw.get("beta", 0.0), ref=ref, is_w=kw.get("is_weights")
    )
    (want_grad,) = torch.autograd.grad(want, logprobs)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(grad).all() and (grad[mask == 0] == 0).all()
    assert metrics["clip_ratio_low"] > 0 and metrics["clip_ratio_high"] > 0  # both clips really exercised
    assert all(not v.requires_grad for v in metrics.values())


def test_metrics_match_token_counts():
    logprobs, old, advantages, mask, ref, _ = batch()
    _, metrics = grpo_loss(logprobs, old, advantages, mask, normalizer=8.0, beta=0.04, ref_logprobs=ref)
    low = high = 0
    ratios, kls = [], []
    for i, n in enumerate(LENGTHS):
        for t in range(n):
            r = math.exp(logprobs[i, t].item() - old[i, t].item())
            a = advantages[i].item()
            low += r < 1 - EPS_LOW and a < 0
            high += r > 1 + EPS_HIGH and a > 0
            ratios.append(r)
            d = ref[i, t].item() - logprobs[i, t].item()
            kls.append(math.exp(d) - d - 1)
    n = sum(LENGTHS)
    assert metrics["clip_ratio_low"].item() == pytest.approx(low / n)
    assert metrics["clip_ratio_high"].item() == pytest.approx(high / n)
    assert metrics["ratio_mean"].item() == pytest.approx(sum(ratios) / n)
    assert metrics["ratio_max"].item() == pytest.approx(max(ratios))
    assert metrics["kl"].item() == pytest.approx(sum(kls) / n)
    assert "kl" not in grpo_loss(logprobs, old, advantages, mask, normalizer=8.0)[1]


@pytest.mark.parametrize("with_old", [True, False], ids=["old", "old=None"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batches_add_up_to_the_full_batch(loss_type, with_old):
    logprobs, old, advantages, mask, ref, is_w = batch(seed=3)
    norm = loss_normalizer(LENGTHS, loss_type, MAX_LEN)  # once, over the whole batch
    kw = {"normalizer": norm, "loss_type": loss_type, "beta": 0.05}
    full, _ = grpo_loss(logprobs, old if with_old else None, advantages, mask, ref_logprobs=ref, is_weights=is_w, **kw)
    (full_grad,) = torch.autograd.grad(full, logprobs)

    total, grad = 0.0, torch.zeros_like(logprobs)
    for rows in (slice(0, 3), slice(3, 4), slice(4, 8)):  # uneven micro-batches, as a learner would cut them
        lp = logprobs[rows].detach().requires_grad_()
        old_rows = old[rows] if with_old else None
        loss, _ = grpo_loss(
            lp, old_rows, advantages[rows], mask[rows], ref_logprobs=ref[rows], is_weights=is_w[rows], **kw
        )
        loss.backward()  # gradient accumulation
        total, grad[rows] = total + loss.detach(), lp.grad
    torch.testing.assert_close(total, full.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, full_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_one_iteration_is_the_plain_policy_gradient(loss_type):
    logprobs, _, advantages, mask, _, _ = batch(seed=5)
    norm = loss_normalizer(LENGTHS, loss_type, MAX_LEN)
    loss, metrics = grpo_loss(logprobs, None, advantages, mask, normalizer=norm, loss_type=loss_type)
    assert metrics["ratio_mean"].item() == 1.0 and metrics["ratio_max"].item() == 1.0  # exactly
    assert metrics["clip_ratio_low"].item() == metrics["clip_ratio_high"].item() == 0.0
    (grad,) = torch.autograd.grad(loss, logprobs)
    lengths = mask.sum(1, keepdim=True).to(torch.float64)
    weight = 1 / lengths.clamp(min=1) if loss_type == "grpo" else torch.ones_like(lengths)
    expected = -advantages[:, None] * weight * mask / norm  # d loss / d logp = -A_i c_i m_it / normalizer
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(loss, (-advantages[:, None] * weight * mask).sum() / norm)
    # ... the same as passing pi_old = pi_theta.detach() explicitly.
    same, _ = grpo_loss(logprobs, logprobs.detach(), advantages, mask, normalizer=norm, loss_type=loss_type)
    assert same.item() == loss.item()


def test_loss_normalizer():
    assert loss_normalizer(LENGTHS, "grpo") == 8.0
    assert loss_normalizer(LENGTHS, "dr_grpo", MAX_LEN) == 8.0 * 12
    assert loss_normalizer(LENGTHS, "dapo") == float(sum(LENGTHS))
    assert loss_normalizer([0, 0], "dapo") == 1.0  # no tokens: loss 0, no division by zero
    with pytest.raises(ValueError, match="unknown loss_type 'ppo'"):
        loss_normalizer(LENGTHS, "ppo")
    with pytest.raises(ValueError, match="max_completion_length"):
        loss_normalizer(LENGTHS, "dr_grpo")
    with pytest.raises(ValueError, match="at least one"):
        loss_normalizer([], "grpo")


def test_errors():
    logprobs, old, advantages, mask, ref, is_w = batch(garbage_padding=False)

    def call(**kw):
        args = {"logprobs": logprobs, "old_logprobs": old, "advantages": advantages, "mask": mask, "normalizer": 8.0}
        return grpo_loss(**{**args, **kw})

    with pytest.raises(ValueError, match="unknown loss_type 'gspo'"):
        call(loss_type="gspo")
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        call(beta=0.1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        call(beta=-0.1, ref_logprobs=ref)
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        call(normalizer=0.0)
    with pytest.raises(ValueError, match="logprobs must be"):
        call(logprobs=logprobs[0])
    for name, bad in (
        ("old_logprobs", old[:, :3]),
        ("mask", mask[:5]),
        ("ref_logprobs", ref.T),
        ("is_weights", is_w[:, :1]),
    ):
        with pytest.raises(ValueError, match=name):
            call(**{name: bad})
    with pytest.raises(ValueError, match="advantages must be"):
        call(advantages=advantages[:, None])
    with pytest.raises(ValueError, match="epsilon_low"):
        call(epsilon_low=1.0)


def test_truncated_is_weights_match_a_naive_reference():
    logprobs, old, _, mask, _, _ = batch(seed=7)
    g = torch.Generator().manual_seed(7)
    sampler = old - 1.5 + 3.0 * torch.rand(old.shape, generator=g, dtype=torch.float64)  # ratios both sides of the cap
    known = mask.clone()
    known[1] = 0  # a completion without the sampler's log-probs (e.g. a peer's)
    sampler[known == 0] = math.nan  # whatever sits where nothing is known must not matter
    cap = 2.0
    weights = truncated_is_weights(old, sampler, known, cap=cap)
    for i in range(len(LENGTHS)):
        for t in range(max(LENGTHS)):
            if known[i, t]:
                want = min(math.exp(old[i, t].item() - sampler[i, t].item()), cap)
            else:
                want = 1.0
            assert weights[i, t].item() == pytest.approx(want, rel=1e-12), (i, t)
    assert (weights[known.bool()] == cap).any() and (weights[known.bool()] < 1).any(), "both regimes exercised"
    assert not weights.requires_grad
    # From the learner's live log-probs (one iteration: pi_old = pi_theta): detached, the same numbers.
    live = truncated_is_weights(logprobs, sampler, known, cap=cap)
    assert not live.requires_grad


def test_truncated_is_weights_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(x, x, x, cap=0.0)
    with pytest.raises(ValueError, match="one shape"):
        truncated_is_weights(x, x[:, :2], x, cap=2.0)
