"""The backends against a real OpenAI-compatible server: llama.cpp's, on the bundled SmolLM2-135M.

Generation, `n` handling (this server answers n=3 with one choice), seeds; then, through a
fault-injecting proxy in front of it, the bound on requests in flight as the server sees it,
and recovery from 429 + Retry-After, 500s, timeouts, resets and malformed bodies with no
rollout lost or duplicated; and the llm-judge reward.
"""

from __future__ import annotations

import collections
import json
import logging
import time

import pytest

from sapo_core.errors import BackendError
from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.records import Completion, Message, Problem
from sapo_core.testing import check_inference, check_reward, sample_problems
from sapo_openai.inference import build_inference
from sapo_openai.judge import build_judge, parse_score
from sapo_openai.settings import APISettings, JudgeSettings

PARAMS = SamplingParams(temperature=1.0, max_new_tokens=10, seed=11)


def backend(url: str, **settings):
    return build_inference("openai", APISettings(base_url=url, **settings), BackendContext(model="smollm2"))


def problems(count: int) -> list[Problem]:
    return [
        Problem(task="arithmetic", id=f"q-{i}", answer=i + i, messages=[Message("user", f"What is {i} + {i}?")])
        for i in range(count)
    ]


def test_contract_n_fallback_and_seeds(llama_server):
    api = backend(llama_server)
    out = check_inference(api, n=3, params=PARAMS)  # the same seed twice: the same texts
    assert [len(group) for group in out] == [3, 3]
    assert all(c.text.strip() and c.finish_reason in ("stop", "length") for group in out for c in group)
    metrics = api.round_metrics()
    assert metrics["n_honoured"] == 0.0  # the server ignored n=3, so the rest were asked one by one
    # first call: one n=3 request per problem (one choice back) + 2 singles each; second call: 3 singles each
    assert metrics["requests"] == 12 and metrics["completion_tokens"] > 0 and metrics["retries"] == 0
    other = api.generate(sample_problems(), 3, SamplingParams(temperature=1.0, max_new_tokens=10, seed=12))
    assert [[c.text for c in g] for g in other] != [[c.text for c in g] for g in out]  # another seed, other texts
    replicates = [c.text for c in out[0]]
    assert len(set(replicates)) > 1, "each replicate has its own seed"


# Both HTTP clients the SDKs offer: aiohttp (the default when installed) and httpx (a lean install).
HTTP_BACKENDS = pytest.mark.parametrize("http_backend", ["aiohttp", "httpx"])


@HTTP_BACKENDS
def test_the_bound_on_requests_in_flight_holds_at_the_server(llama_server, proxy, http_backend):
    proxy.reset(delay=0.2)
    api = backend(proxy.url, max_in_flight=3, http_backend=http_backend)
    out = api.generate(problems(6), 2, SamplingParams(max_new_tokens=4, seed=1))
    assert [len(group) for group in out] == [2] * 6
    assert proxy.peak == 3, f"the server saw {proxy.peak} requests at once with max_in_flight=3"
    assert api.round_metrics()["peak_in_flight"] == 3


def scripted(proxy, faults):
    return lambda index, body: faults.get(index, proxy.PASS)


@HTTP_BACKENDS
def test_faults_recover_without_losing_or_duplicating_a_rollout(llama_server, proxy, http_backend):
    Fault = proxy.Fault
    proxy.reset(
        scripted(
            proxy,
            {
                0: Fault("status", 429, {"Retry-After": "1"}, '{"error": {"message": "Rate limit reached"}}'),
                1: Fault("status", 500, body='{"error": {"message": "internal error"}}'),
                2: Fault("reset"),
                3: Fault("hang", seconds=3.0),
                4: Fault("malformed"),
                5: Fault("status", 503, body="<html>Service Unavailable</html>"),
            },
        )
    )
    api = backend(proxy.url, max_in_flight=1, timeout_s=1.5, backoff_s=0.05, max_retries=8, http_backend=http_backend)
    started = time.monotonic()
    out = api.generate(problems(3), 2, SamplingParams(max_new_tokens=6, seed=2))
    elapsed = time.monotonic() - started
    assert [len(group) for group in out] == [2, 2, 2]
    delivered = [s for s in proxy.seen if s.delivered]
    # Each (prompt, seed) reached the model and came back exactly once: nothing lost, nothing twice.
    keys = collections.Counter((s.body["messages"][-1]["content"], s.body["seed"]) for s in delivered)
    assert sum(len(group) for group in out) == len(delivered) == len(keys) == 6 and set(keys.values()) == {1}
    metrics = api.round_metrics()
    assert metrics["retries"] == 6 and metrics["requests_failed"] == 0 and metrics["problems_failed"] == 0

    # The Retry-After and the timeout were waited for, each by its own request (others may run meanwhile).
    def retried_after(index: int) -> float:
        """Seconds from the faulty request ``index`` to the next try of the same (prompt, seed)."""

        def key(s):
            return s.body["messages"][-1]["content"], s.body["seed"]

        first = proxy.seen[index]
        return min(s.at for s in proxy.seen[index + 1 :] if key(s) == key(first)) - first.at

    assert retried_after(0) >= 1.0, "the 429's Retry-After: 1 was honoured"
    assert retried_after(3) >= 1.5, "the hung request was given up only at its 1.5 s timeout"
    assert elapsed >= 1.5


def test_a_failing_problem_is_dropped_and_the_round_goes_on(llama_server, proxy, caplog):
    proxy.reset(
        lambda index, body: (
            proxy.Fault("status", 503, body="overloaded")
            if body["messages"][-1]["content"] == "What is 1 + 1?"
            else proxy.PASS
        )
    )
    api = backend(proxy.url, backoff_s=0.01, max_retries=2)
    out = api.generate(problems(3), 2, SamplingParams(max_new_tokens=4, seed=3))
    assert [len(group) for group in out] == [2, 0, 2]
    assert api.round_metrics()["problems_failed"] == 1
    assert "a request for q-1 failed after 3 tries (503: overloaded)" in caplog.text


def test_an_authentication_error_stops_at_once_with_what_to_do(llama_server, proxy, monkeypatch):
    monkeypatch.setenv("SAPO_TEST_KEY", "sk-live-abcdef123456")
    proxy.reset(lambda index, body: proxy.Fault("status", 401, body='{"error": {"message": "Invalid API key"}}'))
    api = backend(proxy.url, api_key_env="SAPO_TEST_KEY")
    with pytest.raises(BackendError) as info:
        api.generate(problems(4), 2, PARAMS)
    message = str(info.value)
    assert "refused the request (401: Invalid API key); check the key (env SAPO_TEST_KEY)" in message
    assert "sk-live" not in message and len(proxy.seen) <= 4  # no retries


# ------------------------------------------------------------------------------------ judge


def test_parse_score_is_strict_and_takes_the_last_score_line():
    assert parse_score("Good work.\nSCORE: 7", 10) == 0.7
    assert parse_score("**Score:** 4/5", 5) == 0.8
    assert parse_score("SCORE: 2\nOn reflection...\nscore = 9", 10) == 0.9
    assert parse_score("SCORE: 11", 10) is None and parse_score("I give it a 7.", 10) is None
    assert parse_score("The SCORE: 5 is fair", 10) is None and parse_score("", 10) is None


def judge(url: str, grammar: str, **settings):
    settings.setdefault("max_chars", 2000)  # the server's context is 2048 tokens
    return build_judge(
        JudgeSettings(base_url=url, model="smollm2", extra_body={"grammar": grammar}, **settings), BackendContext()
    )


def test_the_judge_scores_caches_and_keeps_to_the_contract(llama_server, proxy):
    scorer = judge(proxy.url, 'root ::= "SCORE: " [0-9]')  # llama.cpp's grammar: always a valid verdict
    problem = problems(3)[2]
    scores = check_reward(scorer, problem, ["<answer>4</answer>", "<answer>5</answer>"])
    assert all(score in [k / 10 for k in range(10)] for score in scores)
    metrics = scorer.round_metrics()
    assert metrics["unparseable"] == 0 and metrics["requests"] == 10 and metrics["cache_hits"] == 10
    before = len(proxy.seen)
    again = scorer.score(problem, [Completion("<answer>4</answer>"), Completion("<answer>5</answer>")])
    assert list(again) == scores and len(proxy.seen) == before  # cached: no request
    assert all(s.body["temperature"] == 0.0 for s in proxy.seen)


def test_an_unparseable_verdict_scores_zero_with_a_counted_warning(llama_server, caplog):
    caplog.set_level(logging.WARNING)
    scorer = judge(llama_server, 'root ::= "I cannot grade this."')
    assert list(scorer.score(problems(1)[0], [Completion("0"), Completion("zero")])) == [0.0, 0.0]
    assert scorer.round_metrics()["unparseable"] == 2
    assert "llm-judge: reply 2 without a valid 'SCORE: 0..10' line; reward 0" in caplog.text


# --------------------------------------------------------------------------- through the CLI


def test_a_run_evaluates_through_another_endpoint_and_stops_cleanly_at_its_cap(
    llama_server, proxy, sapo_cli, tmp_path, capfd
):
    """Generation goes straight to the server, the evaluation through the proxy (its own backend and
    settings); the generation's request cap ends the run cleanly, with exit status 0."""
    result = sapo_cli(
        "run",
        "--inference",
        "openai",
        "--model",
        "smollm2",
        "--role",
        "contributor",
        "--transport",
        "none",
        "--rounds",
        "10",
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        f"inference.base_url={llama_server}",
        "--set",
        "inference.max_requests=10",
        "--set",
        "tasks.problems_per_round=2",
        "--set",
        "inference.num_completions=2",
        "--set",
        "inference.max_new_tokens=6",
        "--set",
        "eval.every=1",
        "--set",
        "eval.problems=3",
        "--set",
        "eval.inference=openai",
        "--set",
        f"eval.base_url={proxy.url}",
        "--set",
        "eval.model=smollm2",
        "--set",
        "eval.max_in_flight=2",
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 2 problems x 2 completions: round 0 asks n=2 twice, gets one choice each, asks the other two;
    # round 1 asks one by one; round 2 has 2 requests left: one problem complete, one dropped; then the end.
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert [line["inference/requests"] for line in lines] == [4.0, 4.0, 2.0]
    assert lines[2]["inference/capped_requests"] == 2 and lines[2]["inference/dropped_problems"] == 1
    assert lines[2]["groups/local"] == 1
    assert all(line["eval/problems"] == 3 and line["eval/inference/requests"] == 3 for line in lines)
    assert len(proxy.seen) == 9 and all(s.body["temperature"] == 0.0 for s in proxy.seen)  # only the evaluations
    # The CLI logs to stderr through rich, which wraps lines; click's runner holds what it wrote.
    logged = " ".join((result.output + capfd.readouterr().err).split())
    assert "reached its usage cap max_requests = 10 (10 requests sent); the run ends before round 3" in logged
