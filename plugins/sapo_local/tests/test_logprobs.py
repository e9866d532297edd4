"""selected_logprobs: exact against the naive log-softmax, values and gradients, at a fraction of the memory."""

from __future__ import annotations

import pytest
import torch

from sapo_local.logprobs import selected_logprobs


def naive(hidden, weight, targets, temperature=1.0, softcap=None, bias=None):
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logits = logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(logits / temperature, -1).gather(-1, targets[:, None]).squeeze(-1)


def inputs(n, h=8, v=50, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype).mul(scale).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=dtype).requires_grad_()
    targets = torch.randint(v, (n,), generator=g)
    return hidden, weight, targets


def values_and_grads(fn, hidden, weight, targets, **kw):
    hidden.grad = weight.grad = None
    out = fn(hidden, weight, targets, **kw)
    g = torch.Generator().manual_seed(1)
    (out * torch.randn(out.shape, generator=g)).sum().backward()  # random upstream gradient, not just ones
    return out.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 37, 1024])  # 5 and 16 do not divide 37; 1024 > N
@pytest.mark.parametrize(("temperature", "softcap"), [(1.0, None), (0.7, None), (1.0, 3.0), (1.3, 3.0)])
def test_matches_naive_values_and_gradients(chunk_size, temperature, softcap):
    hidden, weight, targets = inputs(37, scale=2.0)  # logits of a few units: the softcap bites
    want = values_and_grads(naive, hidden, weight, targets, temperature=temperature, softcap=softcap)
    got = values_and_grads(
        selected_logprobs, hidden, weight, targets, chunk_size=chunk_size, temperature=temperature, softcap=softcap
    )
    assert got[0].dtype == torch.float32 and got[0].shape == (37,)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_float64_is_tight_and_bias_gets_its_gradient():
    hidden, weight, targets = inputs(23, dtype=torch.float64)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True)
    got = selected_logprobs(hidden, weight, targets, chunk_size=6, temperature=0.9, bias=bias)
    (gh, gw, gb) = torch.autograd.grad(got.sum(), (hidden, weight, bias))
    assert got.dtype == torch.float64
    want = naive(hidden, weight, targets, temperature=0.9, bias=bias)
    (wh, ww, wb) = torch.autograd.grad(want.sum(), (hidden, weight, bias))
    for a, b in ((got, want), (gh, wh), (gw, ww), (gb, wb)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_bfloat16_model_gives_float32_logprobs():
    hidden, weight, targets = inputs(20, dtype=torch.bfloat16)
    got = selected_logprobs(hidden, weight, targets, chunk_size=7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, naive(hidden, weight, targets))  # same bf16 matmul, float32 softmax
    got.sum().backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16


def test_no_grad_and_empty():
    hidden, weight, targets = inputs(9)
    with torch.no_grad():
        out = selected_logprobs(hidden, weight, targets, chunk_size=4)
    assert not out.requires_grad
    torch.testing.assert_close(out, naive(hidden, weight, targets).detach())
    empty = selected_logprobs(hidden[:0], weight, targets[:0])
    assert empty.shape == (0,) and empty.dtype == torch.float32


def test_errors():
    hidden, weight, targets = inputs(9)
    with pytest.raises(ValueError, match="shape mismatch"):
        selected_logprobs(hidden, weight, targets[:5])
    with pytest.raises(ValueError, match="shape mismatch"):
        selected_logprobs(hidden, weight[:, :4], targets)
    with pytest.raises(ValueError, match="expected hidden"):
        selected_logprobs(hidden[None], weight, targets)
    with pytest.raises(ValueError, match="temperature > 0"):
        selected_logprobs(hidden, weight, targets, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size >= 1"):
        selected_logprobs(hidden, weight, targets, chunk_size=0)


def saved_bytes(fn) -> int:
    """Bytes of distinct storages that autograd keeps for backward while ``fn()`` runs."""
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_saves_far_less_than_the_full_logits_for_backward():
    n, v = 4096, 32000
    full = n * v * 4  # the float32 [N, V] log-softmax that the naive way keeps: 524 MB
    # The probe sees the naive way's [N, V] tensor (checked small: the big one would cost 0.5 GB).
    hidden, weight, targets = inputs(256, h=4, v=1000)
    assert saved_bytes(lambda: naive(hidden, weight, targets)) >= 256 * 1000 * 4

    hidden, weight, targets = inputs(n, h=4, v=v)
    got = saved_bytes(lambda: selected_logprobs(hidden, weight, targets, chunk_size=1024))
    assert got < 0.25 * full
    # In fact only the inputs (hidden, weight, targets) are kept: no logits at all.
    assert got <= (hidden.numel() + weight.numel()) * 4 + targets.numel() * 8
