"""Per-token log-probabilities of chosen tokens, without the [N, V] log-softmax in memory.

The naive ``log_softmax(hidden @ weight.T, -1).gather(targets)`` keeps an N x V float32 tensor
alive for backward: 4096 completion tokens x 150k vocabulary is 2.4 GB, usually more than the
model itself. Here the N rows go through in chunks, and each chunk runs under activation
checkpointing, so backward recomputes that chunk's logits instead of keeping them: the extra
memory is about one chunk of logits (``chunk_size x V``), forward or backward. The price is
one more ``hidden @ weight.T`` per chunk in backward; the values and gradients are the
naive ones (same ops, same float32 reduction), not an approximation.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _chunk_logprobs(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float, softcap: float | None
) -> Tensor:
    # The matmul runs in the model's dtype (a float32 copy of a bf16 `weight` would cost V x H x 4
    # bytes per chunk); the normalisation runs in float32 (float64 stays float64), where a
    # logsumexp over 150k terms is accurate.
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if softcap is not None:  # part of the model (Gemma): before the sampler's temperature
        logits = softcap * torch.tanh(logits / softcap)
    if temperature != 1.0:  # the sampler's: the completions were drawn from softmax(logits / T)
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
) -> Tensor:
    """``log p(targets[i] | context_i)`` for each of N positions: shape [N], float32 (float64 for float64 inputs).

    ``hidden`` [N, H] are the decoder's final (normed) hidden states at the positions that predict
    ``targets`` [N] (completion tokens only), ``weight`` [V, H] (and ``bias`` [V], if the model's
    head has one) the LM head. With p = softmax(z / temperature) and z = softcap * tanh(h W^T / softcap)
    (or h W^T without a softcap), exactly what ``torch.log_softmax(z / temperature, -1).gather(...)``
    gives, gradients to ``hidden``, ``weight`` and ``bias`` included, but never holding more than
    ``chunk_size`` rows of logits.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or targets.dim() != 1:
        raise ValueError(
            f"expected hidden [N, H], weight [V, H], targets [N]; got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    if hidden.shape[0] != targets.shape[0] or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"shape mismatch: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, targets {tuple(targets.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape [{weight.shape[0]}], got {tuple(bias.shape)}")
    if chunk_size < 1 or not temperature > 0 or (softcap is not None and not softcap > 0):
        raise ValueError(f"need chunk_size >= 1, temperature > 0, softcap > 0: got {chunk_size}, {temperature}, {softcap}")
    targets = targets.long()
    # Checkpointing only pays when a graph is being built; under no_grad (old / reference
    # log-probs) the chunks run plainly and their logits are freed as soon as each is reduced.
    track = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    out = []
    # `split` (not slicing in a loop): its backward concatenates the chunk gradients once, where
    # N/chunk separate slices would each scatter into a fresh zero [N, H] tensor.
    for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size), strict=True):
        if track:
            # Non-reentrant checkpoint: inside, nothing is saved for backward but the inputs
            # (views of hidden/weight, kept anyway); backward reruns this chunk, then frees it.
            # No randomness inside, so the RNG state need not be stashed and restored.
            args = (h, weight, bias, t, temperature, softcap)
            out.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            out.append(_chunk_logprobs(h, weight, bias, t, temperature, softcap))
    return torch.cat(out)
