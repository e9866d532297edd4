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


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_bfloat16_model_gives_float32_logprobs_and_the_naive_gradients(softcap):
    hidden, weight, targets = inputs(41, h=16, v=300, dtype=torch.bfloat16, scale=2.0)
    want = values_and_grads(naive, hidden, weight, targets, temperature=0.8, softcap=softcap)
    got = values_and_grads(selected_logprobs, hidden, weight, targets, chunk_size=7, temperature=0.8, softcap=softcap)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    # Same bf16 matmul and float32 softmax: the values agree to float32 rounding; the gradients are
    # rounded to bf16 on both sides, and the weight's is summed over chunks in bf16 here.
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(got[2], want[2], atol=2e-2, rtol=2e-2)


def test_under_autocast_float32_weights_get_float32_gradients_of_the_bf16_projection():
    hidden, weight, targets = inputs(29, h=16, v=300, scale=2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = values_and_grads(naive, hidden, weight, targets)
        got = values_and_grads(selected_logprobs, hidden, weight, targets, chunk_size=8)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    # The gradients go through bf16 products on both sides, rounded at other places (here the row
    # factor is applied after the product, and the weight's gradient is summed over chunks of 8 in
    # float32): they agree to bf16 rounding, about 1% (each is about that far from float64).
    for a, b in zip(got[1:], want[1:], strict=True):
        assert (a - b).norm() <= 2e-2 * b.norm()
    # And it was the bf16 projection: float32 logits would differ by more than that.
    exact = values_and_grads(naive, hidden, weight, targets)
    assert (exact[0] - got[0]).abs().max() > 1e-4


def test_only_the_gradients_asked_for_are_computed():
    hidden, weight, targets = inputs(13)
    weight.requires_grad_(False)  # a frozen head (LoRA)
    got = selected_logprobs(hidden, weight, targets, chunk_size=4)
    (gh,) = torch.autograd.grad(got.sum(), (hidden,))
    (wh,) = torch.autograd.grad(naive(hidden, weight, targets).sum(), (hidden,))
    torch.testing.assert_close(gh, wh, atol=1e-5, rtol=1e-5)
    assert weight.grad is None


def test_ragged_padded_batch_through_the_learner_module_matches_the_full_logits():
    """A real (tiny) model on right-padded rows of different lengths: the module's log-probs and
    the gradients of every parameter equal those of the model's own full logits."""
    from sapo_local.learner import CompletionLogprobs, Example, micro_batches
    from sapo_local.models import tiny_llama

    g = torch.Generator().manual_seed(3)
    vocab, pad = 300, 0
    examples = [
        Example(
            prompt=tuple(torch.randint(1, vocab, (p,), generator=g).tolist()),
            completion=tuple(torch.randint(1, vocab, (c,), generator=g).tolist()),
            advantage=0.0,
            external=False,
        )
        for p, c in ((3, 9), (5, 2), (2, 14), (4, 1))
    ]
    (batch,) = micro_batches(examples, 10_000, pad, torch.device("cpu"))
    assert batch.mask.shape == (4, 14) and batch.mask.sum() == 26  # padded: lengths 1, 2, 9, 14
    model = tiny_llama(vocab, seed=0)
    module = CompletionLogprobs(model, chunk_size=5, temperature=0.7)
    upstream = torch.randn(26, generator=g)

    got = module(batch.input_ids, batch.attention_mask, batch.rows, batch.positions, batch.targets)
    got_grads = torch.autograd.grad((got * upstream).sum(), list(model.parameters()))
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    want = torch.log_softmax(logits / 0.7, -1)[batch.rows, batch.positions - 1].gather(-1, batch.targets[:, None])[:, 0]
    want_grads = torch.autograd.grad((want * upstream).sum(), list(model.parameters()))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


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
    # In fact only the inputs (hidden, weight, targets) and one logsumexp per row are kept: no logits at all.
    assert got <= (hidden.numel() + weight.numel()) * 4 + targets.numel() * 8 + n * 4


@pytest.mark.slow  # compiles two kernels with the C++ compiler: about 20 s on two cores
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_kernels_give_the_eager_values_and_gradients(dtype):
    import sapo_local.logprobs as module

    hidden, weight, targets = inputs(37, h=16, v=300, dtype=dtype, scale=2.0)
    eager = values_and_grads(selected_logprobs, hidden, weight, targets, chunk_size=16, temperature=0.7, compile=False)
    compiled = values_and_grads(
        selected_logprobs, hidden, weight, targets, chunk_size=16, temperature=0.7, compile=True
    )
    assert module._compiled not in (None, False)  # it did compile (a fallback would have reset it to False)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # fused kernels round in another order
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, atol=tolerance * b.abs().max().item(), rtol=tolerance)


FALLBACK = """
import logging, torch
from sapo_local.logprobs import selected_logprobs
logging.basicConfig(level=logging.WARNING)
g = torch.Generator().manual_seed(0)
hidden, weight = torch.randn(9, 4, generator=g), torch.randn(50, 4, generator=g)
targets = torch.randint(50, (9,), generator=g)
got = selected_logprobs(hidden, weight, targets, chunk_size=4, compile=True)
want = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None])[:, 0]
torch.testing.assert_close(got, want)
print("values ok")
"""


@pytest.mark.slow  # a fresh interpreter that tries to compile
def test_a_failing_compiler_falls_back_to_the_eager_kernels(tmp_path):
    """No usable C++ compiler (as on a machine without one): a warning, then the same values."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "values ok" in done.stdout
    assert "torch.compile of the log-prob kernels failed" in done.stderr
