"""The GRPO objective (clipped surrogate, optional k3 KL) and its three token aggregations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


def loss_normalizer(lengths: Sequence[int], loss_type: str, max_completion_length: int | None = None) -> float:
    """The denominator of the batch loss, from the completion lengths of the WHOLE batch.

    ``grpo``: number of sequences; ``dr_grpo``: sequences x max_completion_length; ``dapo``: total
    completion tokens. Computed once per optimizer step and passed to every micro-batch's
    `grpo_loss`, so that summing the micro-batch losses (gradient accumulation) gives exactly the
    loss, and the gradient, of the whole batch at once.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 0:
        raise ValueError(f"need at least one completion length, none negative; got {lengths}")
    if loss_type == "grpo":
        return float(len(lengths))
    if loss_type == "dr_grpo":
        if max_completion_length is None or max_completion_length < 1:
            raise ValueError(f"loss_type 'dr_grpo' needs max_completion_length >= 1, got {max_completion_length}")
        return float(len(lengths) * max_completion_length)
    return float(max(sum(lengths), 1))  # dapo; an all-empty batch has loss 0 whatever the denominator


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    normalizer: float,
    loss_type: str = "grpo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    beta: float = 0.0,
    ref_logprobs: Tensor | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The (micro-)batch's share of the GRPO loss, and detached metrics over its real tokens.

    For completion i (advantage A_i, length |o_i|) and its token t, with m_it the mask:

        r_it   = exp(logp_it - logp_old_it)                       (1 when old_logprobs is None)
        s_it   = min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i)
        k3_it  = exp(ref_it - logp_it) - (ref_it - logp_it) - 1   (>= 0; unbiased for KL(pi || ref))
        l_it   = -w^IS_it s_it + beta k3_it
        loss   = sum_i sum_t c_i m_it l_it / normalizer

    with c_i = 1/|o_i| for ``grpo`` (mean per sequence, then over sequences) and c_i = 1 for
    ``dr_grpo`` and ``dapo``; `loss_normalizer` gives the matching denominator for the whole batch.

    ``old_logprobs=None`` means pi_old = pi_theta.detach() (one optimisation step per generation,
    num_iterations == 1): the ratio is exactly 1, nothing is clipped, and the gradient is that of
    -A_i logp_it (the plain policy gradient), weighted as above. Padding may hold anything.
    """
    _check(logprobs, old_logprobs, advantages, mask, ref_logprobs, is_weights, loss_type, beta, normalizer)
    _check_clip_range(epsilon_low, epsilon_high)
    m = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Padding may hold -inf / nan (engines pad that way): exp() of it would leak nan into the
    # gradient through the 0 * nan of the mask, so padded entries become 0 before any arithmetic.
    logp = torch.where(m, logprobs, zero)
    old = logp.detach() if old_logprobs is None else torch.where(m, old_logprobs.detach().to(logp.dtype), zero)
    A = advantages.detach().to(logp.dtype).unsqueeze(1)  # [B, 1], shared by a completion's tokens

    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    surrogate = torch.minimum(ratio * A, clipped * A)  # pessimistic: never profit from leaving the trust region
    if is_weights is not None:  # engine/learner mismatch correction, a constant per token
        surrogate = surrogate * torch.where(m, is_weights.detach().to(logp.dtype), zero)
    per_token = -surrogate
    kl = None
    if ref_logprobs is not None:
        ref = torch.where(m, ref_logprobs.detach().to(logp.dtype), zero)
        kl = torch.exp(ref - logp) - (ref - logp) - 1.0
        per_token = per_token + beta * kl

    loss = _aggregate(per_token, m.to(logp.dtype), loss_type, normalizer)
    return loss, _metrics(ratio, A, logp, m, kl, epsilon_low=epsilon_low, epsilon_high=epsilon_high)


def _aggregate(per_token: Tensor, mask: Tensor, loss_type: str, normalizer: float) -> Tensor:
    """sum_i sum_t c_i m_it l_it / normalizer: the token aggregation of `grpo_loss`."""
    lengths = mask.sum(1, keepdim=True)
    # grpo weighs each sequence equally (1/|o_i| per token): short right answers get more push per
    # token and long wrong ones less blame, a length bias (Dr. GRPO); dr_grpo and dapo weigh every
    # token equally. The constant denominator is what makes micro-batches add up exactly.
    c = 1.0 / lengths.clamp(min=1.0) if loss_type == "grpo" else torch.ones_like(lengths)
    return (per_token * c * mask).sum() / normalizer


@torch.no_grad()
def _metrics(
    ratio: Tensor,
    A: Tensor,
    logp: Tensor,
    m: Tensor,
    kl: Tensor | None,
    *,
    epsilon_low: float,
    epsilon_high: float,
) -> dict[str, Tensor]:
    """Means over the real tokens (``m``) of the clipping, the ratio, the entropy and the KL; detached."""
    mf = m.to(logp.dtype)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    n = mf.sum().clamp(min=1.0)
    metrics = {
        # As TRL: tokens whose gradient the clip zeroes, ratio below 1 - eps_low with A < 0 ...
        "clip_ratio_low": (((ratio < 1.0 - epsilon_low) & (A < 0)).to(mf.dtype) * mf).sum() / n,
        # ... or above 1 + eps_high with A > 0.
        "clip_ratio_high": (((ratio > 1.0 + epsilon_high) & (A > 0)).to(mf.dtype) * mf).sum() / n,
        "ratio_mean": (ratio * mf).sum() / n,
        "ratio_max": torch.where(m, ratio, zero).max() if m.numel() else zero,
        # -log p of the sampled tokens: for the policy's own temperature-1 samples, the Monte
        # Carlo estimate of its per-token entropy, the first sign of a collapsing policy.
        "entropy": -(logp * mf).sum() / n,
    }
    if kl is not None:
        metrics["kl"] = (kl * mf).sum() / n
    return {k: v.detach() for k, v in metrics.items()}


def truncated_is_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, known: Tensor, *, cap: float) -> Tensor:
    """Per-token weights correcting for rollouts sampled by another engine (truncated IS), detached.

    A server (vLLM, SGLang) draws token t of completion i from its own q_it, which differs from
    the learner's pi_old by kernels and precision, and by any learner step it has not loaded yet.
    The policy gradient is an expectation under pi_old, so each token is re-weighted by

        w_it = min(exp(logp_old_it - logq_it), C)     where the sampler's logq_it is known (``known``)
        w_it = 1                                      elsewhere (local rollouts, peers' rollouts)

    and `grpo_loss` multiplies the surrogate by it (``is_weights``). Capping at C trades a little
    bias for bounded variance (TIS: Yao et al. 2025, "Your efficient RL framework secretly brings
    you off-policy RL training"; TRL's ``vllm_importance_sampling_cap``, verl's ``tis_imp_ratio_cap``).
    """
    if not cap > 0:
        raise ValueError(f"the importance-sampling cap must be > 0, got {cap}")
    if old_logprobs.shape != sampler_logprobs.shape or old_logprobs.shape != known.shape:
        raise ValueError(
            f"old, sampler and known must have one shape, got {tuple(old_logprobs.shape)}, "
            f"{tuple(sampler_logprobs.shape)}, {tuple(known.shape)}"
        )
    k = known.bool()
    zero = torch.zeros((), dtype=old_logprobs.dtype, device=old_logprobs.device)
    # Unknown entries become 0 - 0 before exp(), so padding (-inf, nan) never reaches the result.
    delta = torch.where(k, old_logprobs.detach() - sampler_logprobs.detach().to(old_logprobs.dtype), zero)
    return torch.where(k, torch.exp(delta).clamp(max=cap), torch.ones_like(delta))


def _check(
    logprobs: Tensor,
    old: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    ref: Tensor | None,
    is_weights: Tensor | None,
    loss_type: str,
    beta: float,
    normalizer: float,
) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if beta < 0 or (beta > 0 and ref is None):
        raise ValueError(
            f"beta must be >= 0, and beta > 0 needs ref_logprobs; got beta={beta}, ref_logprobs={ref is not None}"
        )
    if not normalizer > 0:
        raise ValueError(f"normalizer must be > 0 (from loss_normalizer over the whole batch), got {normalizer}")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    B, T = logprobs.shape
    for name, t in (("old_logprobs", old), ("mask", mask), ("ref_logprobs", ref), ("is_weights", is_weights)):
        if t is not None and tuple(t.shape) != (B, T):
            raise ValueError(f"{name} must have the shape of logprobs {(B, T)}, got {tuple(t.shape)}")
    if tuple(advantages.shape) != (B,):
        raise ValueError(f"advantages must be [B] = {(B,)}, one per completion, got {tuple(advantages.shape)}")


def _check_clip_range(epsilon_low: float, epsilon_high: float) -> None:
    if not (0.0 <= epsilon_low < 1.0 and epsilon_high >= 0.0):
        raise ValueError(f"need 0 <= epsilon_low < 1 and epsilon_high >= 0, got {epsilon_low}, {epsilon_high}")
