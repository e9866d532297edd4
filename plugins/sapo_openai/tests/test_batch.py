"""``inference.mode = "batch"``: OpenAI's Batch API and Anthropic's Message Batches, end to end.

The `BatchServer` (conftest) speaks both batch APIs on 127.0.0.1 and generates every line for real
through llama.cpp's server; it sits behind a `FaultProxy` that injects 429s, 5xx and latency. Time
drives its status (validating, in_progress, finalizing, completed; cancelling, cancelled; expired),
so a round's wait running out is a real path, not a stub.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import time

import pytest

from sapo_core.errors import BackendError, ConfigError
from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.records import Message, Problem
from sapo_openai.inference import build_inference
from sapo_openai.settings import APISettings
from sapo_openai.usage import BATCH_PRICE_FACTOR, PRICES

KEY = "sk-batch-canary-0123456789abcdef"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
PARAMS = SamplingParams(temperature=0.8, max_new_tokens=6, seed=5)
PROVIDERS = pytest.mark.parametrize("provider", ["openai", "anthropic"])


def problems(count: int, start: int = 0, text: str = "What is {i} + {i}?") -> list[Problem]:
    return [
        Problem(
            task="arithmetic",
            id=f"b-{i}",
            answer=i + i,
            messages=[Message("system", "Answer briefly."), Message("user", text.format(i=i))],
        )
        for i in range(start, start + count)
    ]


def batch_backend(provider, proxy, tmp_path, monkeypatch, **settings):
    monkeypatch.setenv(f"{provider.upper()}_API_KEY", KEY)
    settings.setdefault("model", MODELS[provider])
    url = proxy.url if provider == "openai" else proxy.url.removesuffix("/v1")  # Anthropic's paths carry /v1
    defaults = dict(
        mode="batch",
        base_url=url,
        batch_poll_s=0.05,
        batch_poll_max_s=0.2,
        backoff_s=0.05,
        batch_wait_s=120.0,
        batch_cancel_wait_s=10.0,
    )
    return build_inference(
        provider,
        APISettings(**{**defaults, **settings}),
        BackendContext(model="unused", node="contributor-1", workdir=tmp_path),
    )


@PROVIDERS
def test_a_round_in_batch_mode_through_faults_at_the_batch_price(batch_server, provider, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    server, proxy = batch_server
    proxy.reset(
        lambda index, body: {
            0: proxy.Fault("status", 429, {"Retry-After": "0.2"}, '{"error": {"message": "Rate limit reached"}}'),
            1: proxy.Fault("status", 500, body='{"error": {"message": "internal error"}}'),
            4: proxy.Fault("status", 503, body="<html>Service Unavailable</html>"),
        }.get(index, proxy.PASS),
        delay=0.05,
    )
    server.reset(validate_s=0.3, line_s=0.1)
    api = batch_backend(provider, proxy, tmp_path, monkeypatch)
    out = api.generate(problems(2), 2, PARAMS)
    assert [len(group) for group in out] == [2, 2]
    assert all(c.text.strip() and c.finish_reason in ("stop", "length") for group in out for c in group)
    job = list(server.jobs.values())[-1]
    assert job.provider == provider and job.status == "completed"
    served = [status for status, _ in itertools.groupby(job.meta["served"])]  # what the polls saw, in order
    assert served[-1] == "completed" and "in_progress" in served
    if provider == "openai":
        assert served[0] == "validating"
    generated = [cid for batch, cid in server.generated if batch == job.id]
    assert len(generated) == len(set(generated)) == 4, "each (problem, replicate) generated once"
    metrics = api.round_metrics()
    assert metrics["batches"] == 1 and metrics["requests"] == 4 and metrics["retries"] >= 3
    assert metrics["problems_failed"] == 0 and metrics["batches_pending"] == 0
    price = PRICES[MODELS[provider]]
    listed = (metrics["prompt_tokens"] * price[0] + metrics["completion_tokens"] * price[1]) / 1e6
    assert metrics["completion_tokens"] > 0 and metrics["cost_usd"] == pytest.approx(BATCH_PRICE_FACTOR * listed)
    bodies = [line["body"] for line in job.lines]
    if provider == "openai":  # one completion per line, each with its replicate's seed
        assert all("n" not in b and "seed" in b for b in bodies) and len({b["seed"] for b in bodies}) == 4
        assert job.meta["metadata"]["sapo_node"] == "contributor-1"
    else:
        assert all(b["system"] == "Answer briefly." and b["max_tokens"] == 6 for b in bodies)
    assert server.keys and all(KEY in key for key in server.keys)
    assert KEY not in caplog.text
    assert json.loads((tmp_path / "batches" / f"inference-{provider}.json").read_text())["pending"] == []


@PROVIDERS
def test_a_batch_unfinished_at_the_deadline_publishes_what_finished(batch_server, provider, tmp_path, monkeypatch):
    server, proxy = batch_server
    # A line takes at least 1 s and the round waits 3 s: some lines finish, not all.
    server.reset(line_s=1.0, cancel_s=0.2)
    api = batch_backend(provider, proxy, tmp_path, monkeypatch, batch_wait_s=3.0)
    started = time.monotonic()
    out = api.generate(problems(3), 2, PARAMS)
    assert time.monotonic() - started < 15
    job = list(server.jobs.values())[-1]
    assert job.status == "cancelled"
    published = sum(len(group) for group in out)
    generated = [cid for batch, cid in server.generated if batch == job.id]
    assert 0 < published < 6, "some lines finished before the deadline, not all"
    assert published == len(generated) == len(set(generated)), "all that was generated is published, once"
    metrics = api.round_metrics()
    assert metrics["problems_failed"] >= 1 and metrics["batches_pending"] == 0 and metrics["late_completions"] == 0
    # The next round is a batch of its own: nothing of the first comes back in it. It may wait as
    # long as llama.cpp needs on a loaded machine: only the first round's deadline is under test.
    server.line_s, api.wait_s = 0.0, 60.0
    again = api.generate(problems(2, start=10), 2, PARAMS)
    assert [len(group) for group in again] == [2, 2] and len(server.jobs) >= 2


@PROVIDERS
def test_a_cancellation_that_outlasts_the_round_is_collected_later_exactly_once(
    batch_server, provider, tmp_path, monkeypatch
):
    server, proxy = batch_server
    server.reset(line_s=1.0, cancel_s=4.0)
    api = batch_backend(provider, proxy, tmp_path, monkeypatch, batch_wait_s=3.0, batch_cancel_wait_s=0.2)
    first = api.generate(problems(3), 2, PARAMS)
    assert [len(group) for group in first] == [0, 0, 0]  # nothing readable yet: the batch is still cancelling
    job = list(server.jobs.values())[-1]
    assert api.round_metrics()["batches_pending"] == 1
    ledger = json.loads((tmp_path / "batches" / f"inference-{provider}.json").read_text())["pending"]
    assert [entry["id"] for entry in ledger] == [job.id] and ledger[0]["cancelled"]
    time.sleep(4.5)  # the cancellation ends; the lines that ran are kept by the provider
    server.line_s, api.wait_s = 0.0, 60.0  # later rounds wait as long as llama.cpp needs
    second = api.generate(problems(2, start=20), 2, PARAMS)
    assert [len(group) for group in second] == [2, 2]
    late_rows = [json.loads(line) for line in (tmp_path / "batches" / f"late-{job.id}.jsonl").read_text().splitlines()]
    generated = [cid for batch, cid in server.generated if batch == job.id]
    assert generated and sorted(r["custom_id"] for r in late_rows) == sorted(generated) == sorted(set(generated))
    assert {r["problem"] for r in late_rows} <= {"b-0", "b-1", "b-2"} and all(r["text"] for r in late_rows)
    metrics = api.round_metrics()
    assert metrics["late_completions"] == len(generated) and metrics["batches_pending"] == 0
    # A third round, and a restarted node over the same run directory, collect nothing again.
    polls = len(proxy.seen)
    api.generate(problems(1, start=30), 1, PARAMS)
    restarted = batch_backend(provider, proxy, tmp_path, monkeypatch, batch_wait_s=60.0, batch_cancel_wait_s=0.2)
    restarted.generate(problems(1, start=31), 1, PARAMS)
    assert api.round_metrics()["late_completions"] == 0 and restarted.round_metrics()["late_completions"] == 0
    assert not any(job.id in s.path for s in proxy.seen[polls:]), "a collected batch is never asked about again"
    assert collections.Counter(server.generated).most_common(1)[0][1] == 1, "no line generated twice"


@PROVIDERS
def test_an_expired_batch_gives_what_finished_and_no_failure(batch_server, provider, tmp_path, monkeypatch):
    server, proxy = batch_server
    server.reset(line_s=0.6, expire_s=1.0)  # the provider's 24 h window, shortened
    api = batch_backend(provider, proxy, tmp_path, monkeypatch)
    out = api.generate(problems(3), 2, PARAMS)
    job = list(server.jobs.values())[-1]
    assert job.status == "expired"
    generated = [cid for batch, cid in server.generated if batch == job.id]
    assert 0 < sum(len(group) for group in out) == len(generated) < 6
    metrics = api.round_metrics()
    assert metrics["requests_failed"] == 0 and metrics["batches_pending"] == 0


def test_a_node_restarted_mid_round_polls_its_batch_rather_than_paying_twice(batch_server, tmp_path, monkeypatch):
    server, proxy = batch_server
    server.reset(validate_s=0.5)
    crashing = batch_backend("openai", proxy, tmp_path, monkeypatch)

    async def crash(seconds: float) -> None:
        raise KeyboardInterrupt  # the node is stopped while its batch runs

    crashing.engine.sleep = crash
    with pytest.raises(KeyboardInterrupt):
        crashing.generate(problems(2), 2, PARAMS)
    jobs = len(server.jobs)
    restarted = batch_backend("openai", proxy, tmp_path, monkeypatch)
    out = restarted.generate(problems(2), 2, PARAMS)  # the same round again: the same problems and seeds
    assert [len(group) for group in out] == [2, 2] and len(server.jobs) == jobs
    assert restarted.round_metrics()["batches"] == 0


@PROVIDERS
def test_a_failing_line_drops_its_problem_alone(batch_server, provider, tmp_path, monkeypatch, caplog):
    server, proxy = batch_server
    api = batch_backend(provider, proxy, tmp_path, monkeypatch)
    mixed = problems(1) + problems(1, start=1, text="FAIL {i}")
    out = api.generate(mixed, 2, PARAMS)
    assert [len(group) for group in out] == [2, 0]
    metrics = api.round_metrics()
    assert metrics["problems_failed"] == 1 and metrics["requests_failed"] == 2
    assert "2 request(s) of batch" in caplog.text and "their problems are dropped" in caplog.text


@PROVIDERS
def test_a_refused_batch_names_the_backend_and_what_to_do(batch_server, provider, tmp_path, monkeypatch):
    server, proxy = batch_server
    api = batch_backend(provider, proxy, tmp_path, monkeypatch, model="no-such-model")
    with pytest.raises(BackendError) as info:
        api.generate(problems(2), 1, PARAMS)
    message = str(info.value)
    assert f"inference backend {provider!r} (batch mode)" in message and "check the model name" in message


def test_an_authentication_error_stops_at_once_without_the_key(batch_server, tmp_path, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    server, proxy = batch_server
    proxy.reset(
        lambda index, body: proxy.Fault(
            "status", 401, body=json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}})
        )
    )
    api = batch_backend("openai", proxy, tmp_path, monkeypatch)
    with pytest.raises(BackendError) as info:
        api.generate(problems(2), 2, PARAMS)
    message = str(info.value)
    assert (
        "inference backend 'openai' (batch mode) could not submit the round's batch: the provider refused it (401"
        in message
    )
    assert "check the key (env OPENAI_API_KEY)" in message and "<redacted>" in message
    assert len(proxy.seen) == 1  # no retries
    out, err = capfd.readouterr()
    assert all(KEY not in text for text in (message, caplog.text, out, err))


def test_a_provider_without_a_batch_endpoint_is_refused_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
    with pytest.raises(ConfigError, match=r"deepseek's API has no batch endpoint.*set inference.mode = 'realtime'"):
        build_inference("deepseek", APISettings(mode="batch"), BackendContext(model="deepseek-chat", workdir=tmp_path))


@PROVIDERS
def test_a_contributor_runs_its_rounds_in_batch_mode_through_the_cli(
    batch_server, provider, sapo_cli, tmp_path, monkeypatch
):
    server, proxy = batch_server
    monkeypatch.setenv(f"{provider.upper()}_API_KEY", KEY)
    url = proxy.url if provider == "openai" else proxy.url.removesuffix("/v1")
    run = tmp_path / "run"
    result = sapo_cli(
        "run",
        "--inference",
        provider,
        "--model",
        MODELS[provider],
        "--role",
        "contributor",
        "--transport",
        "none",
        "--rounds",
        "2",
        "--run-dir",
        str(run),
        "--set",
        f"inference.base_url={url}",
        "--set",
        "inference.mode=batch",
        "--set",
        "inference.batch_poll_s=0.05",
        "--set",
        "inference.batch_poll_max_s=0.2",
        "--set",
        "tasks.problems_per_round=2",
        "--set",
        "inference.num_completions=2",
        "--set",
        "inference.max_new_tokens=6",
        "--set",
        "eval.problems=2",
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1]
    assert all(line["inference/batches"] == 1 and line["inference/requests"] == 4 for line in lines)
    assert all(line["groups/local"] + line["inference/dropped_problems"] == 2 for line in lines)
    assert all(line["inference/cost_usd"] > 0 for line in lines)
    assert KEY not in result.output and KEY not in (run / "config.json").read_text()
