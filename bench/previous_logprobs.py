"""sapo's log-prob pass before the fused chunk kernels (commit 8fb4ca8), kept only so the benchmarks
can measure the new one against it in the same run; nothing in sapo imports it.

Each chunk ran under activation checkpointing: forward upcast the chunk's logits to float32 and
took ``logsumexp`` and ``gather``; backward re-ran all of that and let autograd differentiate it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _chunk_logprobs(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float, softcap: float | None
) -> Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def selected_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    softcap: float | None = None,
    bias: Tensor | None = None,
    compile: bool | None = None,
) -> Tensor:
    """The previous `sapo_local.logprobs.selected_logprobs` (``compile`` accepted and ignored: it had none)."""
    targets = targets.long()
    track = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    out = []
    for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size), strict=True):
        args = (h, weight, bias, t, temperature, softcap)
        if track:
            out.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            out.append(_chunk_logprobs(*args))
    return torch.cat(out)
