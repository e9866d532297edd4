"""Request and reply mapping per provider, at the SDK's transport level, with the providers' documented shapes.

Each test builds the real backend on the real SDK client; only the socket is replaced by an
httpx2 transport that records the request the SDK sent and answers with a payload shaped like the
provider's API reference (Anthropic "Messages", Deepseek "Create Chat Completion", OpenAI "Chat").
"""

from __future__ import annotations

import json
import logging

import httpx2
import pytest

from sapo_core.errors import BackendError, StopRun
from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.records import Message, Problem
from sapo_core.seeding import derive_seed
from sapo_core.testing import check_inference
from sapo_openai.inference import build_inference
from sapo_openai.settings import APISettings

KEY = "sk-test-secret-0123456789"
PROBLEMS = [
    Problem(
        task="arithmetic",
        id=f"p-{i}",
        answer=i,
        messages=[Message("system", "Answer briefly."), Message("user", f"What is {i} + {i}?")],
    )
    for i in (1, 2)
]


class Recorder:
    """An httpx2 transport handler: records each request, answers with ``reply(request, index)``."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return self.reply(request, len(self.requests) - 1)

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]


def backend(provider, handler, monkeypatch, **settings):
    monkeypatch.setenv(
        {"openai": "OPENAI_API_KEY", "deepseek": "DEEPSEEK_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}[provider], KEY
    )
    return build_inference(
        provider, APISettings(**settings), BackendContext(model="unused"), transport=httpx2.MockTransport(handler)
    )


def anthropic_message(request, index):
    body = json.loads(request.content)
    text = f"reply {index} to {body['messages'][-1]['content']}"
    return httpx2.Response(
        200,
        json={
            "id": f"msg_{index:04d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [
                {"type": "thinking", "thinking": "Let me add.", "signature": "EqQBCgIYAhIM"},
                {"type": "text", "text": text},
            ],
            "stop_reason": "max_tokens" if index == 0 else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 25,
                "output_tokens": 7,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        },
    )


def test_anthropic_messages_mapping(monkeypatch):
    handler = Recorder(anthropic_message)
    api = backend("anthropic", handler, monkeypatch, model="claude-haiku-4-5")
    params = SamplingParams(temperature=0.7, top_p=0.9, top_k=40, max_new_tokens=33, seed=7, stop=("</answer>",))
    out = api.generate(PROBLEMS, 2, params)
    assert len(handler.requests) == 4  # no `n` in the Messages API: one request per completion
    for request in handler.requests:
        assert request.url == "https://api.anthropic.com/v1/messages"
        # the SDK sends the key as x-api-key (0.x) or as a bearer token (1.x and later)
        assert KEY in (
            request.headers.get("x-api-key"),
            request.headers.get("authorization", "").removeprefix("Bearer "),
        )
        assert "anthropic-version" in request.headers
    body = handler.bodies()[0]
    assert body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 33,
        "system": "Answer briefly.",
        "messages": [{"role": "user", "content": body["messages"][0]["content"]}],
        "temperature": 0.7,
        "top_k": 40,
        "stop_sequences": ["</answer>"],
    }  # not top_p with temperature
    assert all("seed" not in b and "n" not in b for b in handler.bodies())
    completions = [c for group in out for c in group]
    assert len(completions) == 4 and all(c.reasoning == "Let me add." and c.num_tokens == 7 for c in completions)
    assert sorted(c.finish_reason for c in completions) == ["length", "stop", "stop", "stop"]
    assert all(c.text.startswith("reply ") and "What is" in c.text for c in completions)
    metrics = api.round_metrics()
    assert metrics["requests"] == 4 and metrics["prompt_tokens"] == 100 and metrics["completion_tokens"] == 28
    assert metrics["cost_usd"] == pytest.approx((100 * 1.00 + 28 * 5.00) / 1e6)
    api.generate(PROBLEMS[:1], 1, SamplingParams(temperature=1.5, top_p=0.5, max_new_tokens=8))
    last = handler.bodies()[-1]  # 1.5 is above the API's range: 1.0, its default, so not sent; then top_p goes
    assert "temperature" not in last and last["top_p"] == 0.5 and "top_k" not in last


def deepseek_reasoner(request, index):
    return httpx2.Response(
        200,
        json={
            "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
            "object": "chat.completion",
            "created": 1705651092,
            "model": "deepseek-reasoner",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": f"<answer>{index}</answer>",
                        "reasoning_content": "9.11 vs 9.8: compare the tenths first.",
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 16,
                "completion_tokens": 90,
                "total_tokens": 106,
                "prompt_cache_hit_tokens": 0,
                "prompt_cache_miss_tokens": 16,
                "completion_tokens_details": {"reasoning_tokens": 80},
            },
            "system_fingerprint": "fp_a49d71b8a1",
        },
    )


def test_deepseek_keeps_the_reasoning_apart_and_sends_neither_n_nor_seed(monkeypatch):
    handler = Recorder(deepseek_reasoner)
    api = backend("deepseek", handler, monkeypatch, model="deepseek-reasoner")
    out = api.generate(PROBLEMS, 3, SamplingParams(temperature=0.6, max_new_tokens=64, seed=1))
    assert len(handler.requests) == 6
    assert {str(r.url) for r in handler.requests} == {"https://api.deepseek.com/chat/completions"}
    assert handler.requests[0].headers["authorization"] == f"Bearer {KEY}"
    body = handler.bodies()[0]
    assert body["model"] == "deepseek-reasoner" and body["max_tokens"] == 64 and body["temperature"] == 0.6
    assert body["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 1 + 1?"},
    ]
    assert all("n" not in b and "seed" not in b and "max_completion_tokens" not in b for b in handler.bodies())
    for group in out:
        assert len(group) == 3
        for completion in group:
            assert completion.text.startswith("<answer>") and "</answer>" in completion.text
            assert completion.reasoning == "9.11 vs 9.8: compare the tenths first." and completion.num_tokens == 90
    assert api.round_metrics()["cost_usd"] == pytest.approx(6 * (16 * 0.28 + 90 * 0.42) / 1e6)


def openai_choices(request, index):
    body = json.loads(request.content)
    n = body.get("n", 1)
    return httpx2.Response(
        200,
        json={
            "id": f"chatcmpl-{index}",
            "object": "chat.completion",
            "created": 1741569952,
            "model": body["model"],
            "choices": [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": f"seed {body['seed']} choice {i}",
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "length" if i == 1 else "stop",
                }
                for i in range(n)
            ],
            "usage": {"prompt_tokens": 19, "completion_tokens": 10 * n, "total_tokens": 19 + 10 * n},
            "service_tier": "default",
        },
    )


def test_openai_asks_n_per_problem_with_one_seed_per_request(monkeypatch):
    handler = Recorder(openai_choices)
    api = backend("openai", handler, monkeypatch, model="gpt-4o-mini")
    params = SamplingParams(temperature=0.8, top_k=5, max_new_tokens=20, seed=99)
    out = api.generate(PROBLEMS, 3, params)
    assert len(handler.requests) == 2 and str(handler.requests[0].url) == "https://api.openai.com/v1/chat/completions"
    body = handler.bodies()[0]
    assert body["n"] == 3 and body["max_completion_tokens"] == 20 and "max_tokens" not in body and "top_k" not in body
    assert body["seed"] == derive_seed(99, "p-1", 0) & (2**31 - 1)
    assert [c.text for c in out[0]] == [f"seed {body['seed']} choice {i}" for i in range(3)]
    assert [c.finish_reason for c in out[0]] == ["stop", "length", "stop"]
    assert all(c.num_tokens is None for c in out[0])  # usage covers the request, not each choice


def test_a_server_of_ones_own_gets_max_tokens_and_top_k_and_needs_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("SAPO_KEYS_FILE", "/nonexistent/keys.json")
    handler = Recorder(openai_choices)
    api = build_inference(
        "openai",
        APISettings(base_url="http://127.0.0.1:9/v1", extra_body={"min_p": 0.05}),
        BackendContext(model="smollm2"),
        transport=httpx2.MockTransport(handler),
    )
    check_inference(api, n=2)
    body = handler.bodies()[0]
    assert body["max_tokens"] == 16 and body["min_p"] == 0.05 and body["model"] == "smollm2"
    with pytest.raises(BackendError, match=r"export OPENAI_API_KEY=\.\.\. or run `sapo keys set OPENAI_API_KEY`"):
        build_inference("openai", APISettings(), BackendContext(model="gpt-4o-mini"))


# ----------------------------------------------------------------------------------- faults


def fault_sequence(*faults):
    """Answers with the given faults first, then documented OpenAI replies."""

    def reply(request, index):
        if index < len(faults):
            fault = faults[index]
            if isinstance(fault, Exception):
                raise fault
            return fault
        return openai_choices(request, index)

    return reply


def recorded_sleep(api):
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    api.engine.sleep = sleep
    return waits


def test_retries_recover_and_honour_retry_after(monkeypatch):
    handler = Recorder(
        fault_sequence(
            httpx2.Response(
                429, json={"error": {"message": "Rate limit reached", "type": "requests"}}, headers={"retry-after": "3"}
            ),
            httpx2.Response(500, json={"error": {"message": "The server had an error"}}),
            httpx2.Response(503, text="upstream unavailable", headers={"retry-after-ms": "1500"}),
            httpx2.ReadTimeout("timed out"),
            httpx2.RemoteProtocolError("Server disconnected without sending a response."),
            httpx2.Response(
                200, content=b'{"id": "x", "choices": [{"index"', headers={"content-type": "application/json"}
            ),
            httpx2.Response(200, json={"object": "error"}),
        )
    )
    api = backend("openai", handler, monkeypatch, model="gpt-4o-mini", max_retries=8, max_in_flight=1)
    waits = recorded_sleep(api)
    out = api.generate(PROBLEMS[:1], 2, SamplingParams(max_new_tokens=8, seed=3))
    assert len(out[0]) == 2 and len(handler.requests) == 8
    assert waits[0] == pytest.approx(3.0, abs=0.06) and waits[2] == pytest.approx(1.5, abs=0.06)
    assert all(0 <= w <= 30 for w in waits) and len(waits) == 7
    metrics = api.round_metrics()
    assert metrics["retries"] == 7 and metrics["requests"] == 8 and metrics["requests_failed"] == 0
    assert metrics["problems_failed"] == 0


def test_a_problem_whose_requests_keep_failing_is_dropped_alone(monkeypatch, caplog):
    def reply(request, index):
        if "1 + 1" in request.content.decode():
            return httpx2.Response(502, text="bad gateway")
        return openai_choices(request, index)

    api = backend("openai", Recorder(reply), monkeypatch, model="gpt-4o-mini", max_retries=2)
    recorded_sleep(api)
    out = api.generate(PROBLEMS, 2, SamplingParams(max_new_tokens=8))
    assert out[0] == [] and len(out[1]) == 2
    metrics = api.round_metrics()
    assert metrics["problems_failed"] == 1 and metrics["requests_failed"] == 1 and metrics["retries"] == 2
    assert "failed after 3 tries (502: bad gateway); its problem is dropped" in caplog.text


@pytest.mark.parametrize(
    "status, hint",
    [
        (401, "check the key (env OPENAI_API_KEY): `sapo keys set OPENAI_API_KEY`"),
        (404, "check the model name ('gpt-4o-mini': inference.model or --model)"),
        (400, "check the sampling settings"),
    ],
)
def test_errors_that_waiting_cannot_fix_stop_at_once_without_the_key(monkeypatch, caplog, status, hint):
    caplog.set_level(logging.DEBUG)
    handler = Recorder(
        lambda request, index: httpx2.Response(
            status, json={"error": {"message": f"Incorrect API key provided: {KEY}.", "code": "invalid_api_key"}}
        )
    )
    api = backend("openai", handler, monkeypatch, model="gpt-4o-mini")
    with pytest.raises(BackendError) as info:
        api.generate(PROBLEMS, 4, SamplingParams())
    assert len(handler.requests) <= 2  # no retries; the other problem's request may already be out
    assert hint in str(info.value) and f"({status}: Incorrect API key provided: <redacted>.)" in str(info.value)
    assert KEY not in str(info.value) and KEY not in caplog.text and KEY not in repr(api)


def test_caps_stop_the_run_cleanly(monkeypatch):
    api = backend("openai", Recorder(openai_choices), monkeypatch, model="gpt-4o-mini", max_requests=3)
    first = api.generate(PROBLEMS, 2, SamplingParams())
    assert [len(g) for g in first] == [2, 2]
    second = api.generate(PROBLEMS * 2, 2, SamplingParams())
    assert [len(g) for g in second] == [2, 0, 0, 0]  # the third request was the last one allowed
    assert api.round_metrics()["capped_requests"] == 3
    with pytest.raises(StopRun, match=r"reached its usage cap max_requests = 3 \(3 requests sent\)"):
        api.generate(PROBLEMS, 2, SamplingParams())
    dollars = backend("openai", Recorder(openai_choices), monkeypatch, model="gpt-4o-mini", max_dollars=1e-5)
    dollars.generate(PROBLEMS, 2, SamplingParams())  # 2 x (19 x 0.15 + 20 x 0.60) / 1e6 = 2.97e-5 > 1e-5
    with pytest.raises(StopRun, match="max_dollars = 1e-05"):
        dollars.generate(PROBLEMS, 2, SamplingParams())
    from sapo_core.errors import ConfigError

    with pytest.raises(ConfigError, match="max_dollars needs the price of model 'my-model'.*price_input"):
        backend("openai", Recorder(openai_choices), monkeypatch, model="my-model", max_dollars=1.0)


def test_the_judge_scores_zero_for_a_completion_the_api_refuses_and_never_raises(monkeypatch, caplog):
    from sapo_core.records import Completion
    from sapo_openai.judge import build_judge
    from sapo_openai.settings import JudgeSettings

    def reply(request, index):
        body = json.loads(request.content)
        if "x" * 100 in body["messages"][-1]["content"]:
            return httpx2.Response(400, json={"error": {"message": "maximum context length exceeded"}})
        return httpx2.Response(
            200,
            json={
                "id": "c",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Correct.\nSCORE: 8"},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    handler = Recorder(reply)
    judge = build_judge(
        JudgeSettings(model="gpt-4o-mini", max_chars=500), BackendContext(), transport=httpx2.MockTransport(handler)
    )
    scores = judge.score(PROBLEMS[0], [Completion("<answer>2</answer>"), Completion("x" * 10_000)])
    assert list(scores) == [0.8, 0.0] and "was refused (400: maximum context length exceeded)" in caplog.text
    sent = handler.bodies()[1]["messages"][-1]["content"]
    assert len(sent) < 700 and "characters cut" in sent  # the long completion was cut to max_chars
    assert handler.bodies()[0]["temperature"] == 0.0 and handler.bodies()[0]["seed"] == 20250101
    metrics = judge.round_metrics()
    assert metrics["requests_failed"] == 1 and metrics["cached"] == 1  # the refused one is asked again next time


def test_every_setting_is_a_key_the_config_accepts_in_inference_and_eval():
    """No setting may read as a typo of a core key (inference.max_new_tokens, eval.every, ...)."""
    import attrs

    from sapo_core.config import load_config

    names = [field.name for field in attrs.fields(APISettings)]
    config = load_config(
        env={},
        sets=["eval.inference=openai", *(f"{section}.{name}=1" for section in ("inference", "eval") for name in names)],
    )
    assert sorted(config.extras("inference")) == sorted(names) == sorted(config.extras("eval"))
