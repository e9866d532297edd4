"""Per-token log-probabilities of chosen tokens, without the [N, V] log-softmax in memory.

The naive ``log_softmax(hidden @ weight.T, -1).gather(targets)`` keeps an N x V float32 tensor
alive for backward: 4096 completion tokens x 150k vocabulary is 2.4 GB, usually more than the
model itself. Here the N rows go through in chunks of ``chunk_size``, in one autograd Function
with its own backward. For one row, with logits l = h W^T + b, scale s = 1 / temperature and
(Gemma's softcap c, else z = l) z = c tanh(l / c):

    forward   lse = logsumexp(s z),  logp = s z_t - lse        (only lse, N numbers, is kept)
    backward  p = exp(s z - lse) = softmax(s z)
              D = (p - onehot(t)) * dz/dl,  dz/dl = 1 - tanh(l / c)^2 (1 without a softcap)
              dL/dl = a D  with the row's factor a = -g s  (g: the upstream gradient of logp)
              dL/dh = a (D W),   dL/dW = D^T (a h),   dL/db = a^T D

The row factor a goes on the small [chunk, H] side of each product, never over the [chunk, V]
block. Backward recomputes each chunk's logits (one more ``hidden @ weight.T`` per chunk) and goes
straight to D: no float32 copy of a chunk is saved, and nothing of the forward's normalisation is
redone. The matmuls run in the model's dtype (or autocast's), the normalisation in float32
(float64 stays float64), where a sum over 150k terms is accurate; each [chunk, V] block is read
and written a few times only (`_chunk_forward`, `_chunk_backward`). Those two can also run
torch.compile'd (``compile``), which fuses each into a single kernel; on by default on CUDA, and
if compiling fails the eager code runs instead.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("sapo.local")


def _chunk_forward(logits: Tensor, targets: Tensor, scale: float, softcap: float | None) -> tuple[Tensor, Tensor]:
    """(logp [C], lse [C]) of one chunk of logits [C, V] in the model's dtype, both in float32 (or float64)."""
    wide = torch.promote_types(logits.dtype, torch.float32)
    # The row maximum of the raw logits is exact in their own dtype and costs a read of them only;
    # tanh is increasing, so the capped maximum follows from it.
    top = logits.amax(-1, keepdim=True).to(wide)
    if softcap is None:
        # One pass: upcast, shift by the maximum and scale (a float32 second operand makes the op
        # compute and write in float32: no separate float32 copy of the chunk).
        shifted = torch.add(top * -scale, logits, alpha=scale)
    else:
        shifted = logits.to(wide, copy=True).div_(softcap).tanh_()
        shifted = torch.add(torch.tanh(top / softcap) * -(softcap * scale), shifted, alpha=softcap * scale)
    picked = shifted.gather(-1, targets[:, None]).squeeze(-1)
    log_total = shifted.exp_().sum(-1).log()
    shift = top.squeeze(-1) if softcap is None else softcap * torch.tanh(top.squeeze(-1) / softcap)
    return picked - log_total, shift * scale + log_total


def _chunk_backward(logits: Tensor, targets: Tensor, lse: Tensor, scale: float, softcap: float | None) -> Tensor:
    """D = (p - onehot(targets)) dz/dl [C, V] of one chunk, in the logits' dtype (the module docstring's D)."""
    wide = lse.dtype
    rows = torch.arange(logits.shape[0], device=logits.device)
    at_target = logits[rows, targets].to(wide)
    if softcap is None:
        d = torch.add(-lse[:, None], logits, alpha=scale).exp_().to(logits.dtype)  # p: upcast, shift, scale, exp
        target_d = torch.exp(at_target * scale - lse) - 1.0
    else:
        capped = logits.to(wide, copy=True).div_(softcap).tanh_()
        d = torch.add(-lse[:, None], capped, alpha=softcap * scale).exp_()
        d = d.mul_(capped.square_().neg_().add_(1.0)).to(logits.dtype)
        y = torch.tanh(at_target / softcap)
        target_d = (torch.exp(y * (softcap * scale) - lse) - 1.0) * (1.0 - y * y)
    # The target's entry, p_t - 1, is written apart, from float32: where p_t is near 1 the
    # difference is small, and subtracting 1 after rounding to bf16 would lose it. (It also keeps
    # the big pass plainly elementwise, which torch.compile fuses into a single kernel.)
    d[rows, targets] = target_d.to(d.dtype)
    return d


_EAGER = {"forward": _chunk_forward, "backward": _chunk_backward}
_compiled: Any = None  # {"forward": ..., "backward": ...} torch.compile'd on first use; False once compiling failed


def _run(kernel: str, compile: bool, *args: Any) -> Any:
    """The chunk kernel ``forward`` or ``backward``: compiled when asked and possible, else eager."""
    global _compiled
    if not compile or _compiled is False:
        return _EAGER[kernel](*args)
    try:
        if _compiled is None:
            # dynamic: the last chunk is shorter; one compiled kernel serves every chunk length.
            _compiled = {name: torch.compile(fn, dynamic=True) for name, fn in _EAGER.items()}
        return _compiled[kernel](*args)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 (no C++ compiler or Triton, unsupported device...: eager gives the same values)
        _compiled = False
        log.warning(
            "torch.compile of the log-prob kernels failed (%s); computing them without it",
            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
        )
        return _EAGER[kernel](*args)


class _SelectedLogprobs(torch.autograd.Function):
    """The chunked forward and backward of the module docstring; arguments as `selected_logprobs`."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        chunk_size: int,
        scale: float,
        softcap: float | None,
        dtype: torch.dtype,
        compile: bool,
    ) -> Tensor:
        wide = torch.promote_types(dtype, torch.float32)
        out = torch.empty(hidden.shape[0], dtype=wide, device=hidden.device)
        lse = torch.empty_like(out)
        # The casts are explicit (autocast would make the same ones) so that backward, which runs
        # outside autocast, does exactly the same arithmetic.
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            for start in range(0, hidden.shape[0], chunk_size):
                part = slice(start, start + chunk_size)
                logits = torch.nn.functional.linear(hidden[part].to(dtype), w, b)
                out[part], lse[part] = _run("forward", compile, logits, targets[part], scale, softcap)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.settings = (chunk_size, scale, softcap, dtype, compile)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        chunk_size, scale, softcap, dtype, compile = ctx.settings
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            for start in range(0, hidden.shape[0], chunk_size):
                part = slice(start, start + chunk_size)
                h = hidden[part].to(dtype)
                logits = torch.nn.functional.linear(h, w, b)
                d = _run("backward", compile, logits, targets[part], lse[part], scale, softcap)
                del logits  # the chunk's logits are dead: let the allocator reuse them for the products
                a = grad_out[part].to(lse.dtype) * -scale
                if grad_h is not None:
                    grad_h[part] = (d @ w) * a[:, None]
                if grad_w is not None:
                    ah = h * a[:, None].to(dtype)
                    if grad_w.dtype == dtype:
                        grad_w.addmm_(d.T, ah)  # accumulates inside the product: one rounding per chunk
                    else:  # autocast: the model-dtype product, summed in the weight's (float32) dtype
                        grad_w += d.T @ ah
                if grad_b is not None:
                    grad_b += a.to(dtype) @ d
        return grad_h, grad_w, grad_b, None, None, None, None, None, None


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
    """``log p(targets[i] | context_i)`` for each of N positions: shape [N], float32 (float64 for float64 inputs).

    ``hidden`` [N, H] are the decoder's final (normed) hidden states at the positions that predict
    ``targets`` [N] (completion tokens only), ``weight`` [V, H] (and ``bias`` [V], if the model's
    head has one) the LM head. With p = softmax(z / temperature) and z = softcap * tanh(h W^T / softcap)
    (or h W^T without a softcap), what ``torch.log_softmax(z / temperature, -1).gather(...)``
    gives, gradients to ``hidden``, ``weight`` and ``bias`` included (to float tolerance), but never
    holding more than ``chunk_size`` rows of logits. Under autocast the projection runs in
    autocast's dtype, as ``linear`` would.

    ``compile``: run the per-chunk normalisation and its gradient torch.compile'd (fused kernels).
    None (default): on CUDA only. The first call compiles (seconds); if that fails, a warning is
    logged and the eager code, which gives the same values, is used from then on.
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
        raise ValueError(
            f"need chunk_size >= 1, temperature > 0, softcap > 0: got {chunk_size}, {temperature}, {softcap}"
        )
    kind = hidden.device.type
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    if torch.is_autocast_enabled(kind) and dtype != torch.float64:  # autocast leaves float64 alone
        dtype = torch.get_autocast_dtype(kind)
    compile = kind == "cuda" if compile is None else compile
    return _SelectedLogprobs.apply(
        hidden, weight, bias, targets.long(), chunk_size, 1.0 / temperature, softcap, dtype, compile
    )
