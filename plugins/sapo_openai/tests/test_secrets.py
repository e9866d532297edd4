"""An API that echoes the key in its error pages cannot leak it: a real server on 127.0.0.1, every failure status."""

from __future__ import annotations

import http.server
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from sapo_core.errors import BackendError
from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.records import Message, Problem
from sapo_openai.inference import build_inference
from sapo_openai.settings import APISettings

CANARY = "sk-canary-echoed-by-the-server-42"
PROBLEM = Problem(task="arithmetic", id="p-1", answer=2, messages=[Message("user", "What is 1 + 1?")])


class EchoingServer(http.server.ThreadingHTTPServer):
    """Answers every request with ``status`` and a body that repeats the request's Authorization header."""

    status = 500
    seen_keys: list[str]


class Echo(http.server.BaseHTTPRequestHandler):
    server: EchoingServer

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers.get("content-length", 0)))
        auth = self.headers.get("authorization", "")
        self.server.seen_keys.append(auth)
        status = self.server.status
        if status == 502:
            body, kind = f"<html><body>Bad gateway for {auth}</body></html>".encode(), "text/html"
        else:
            body = json.dumps({"error": {"message": f"Incorrect API key provided: {auth}", "code": status}}).encode()
            kind = "application/json"
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        if status == 429:
            self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[EchoingServer]:
    srv = EchoingServer(("127.0.0.1", 0), Echo)
    srv.seen_keys = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("status", [500, 502, 503, 429, 400, 401, 403, 404])
def test_the_key_an_error_page_echoes_never_reaches_a_log_or_an_error(server, status, monkeypatch, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="sapo")
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    server.status, server.seen_keys[:] = status, []
    stream = io.StringIO()
    shared = logging.StreamHandler(stream)  # as the swarm folder's log handler would be attached
    logging.getLogger("sapo").addHandler(shared)
    logging.getLogger().addHandler(stderr := logging.StreamHandler())
    try:
        api = build_inference(
            "openai",
            APISettings(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="m", max_retries=1, backoff_s=0.0),
            BackendContext(model="m"),
        )
        try:
            api.generate([PROBLEM], 2, SamplingParams(max_new_tokens=4))
            error = ""
        except BackendError as exc:
            error = str(exc)
    finally:
        logging.getLogger("sapo").removeHandler(shared)
        logging.getLogger().removeHandler(stderr)
    assert server.seen_keys and all(CANARY in key for key in server.seen_keys), "the server saw (and echoed) the key"
    out, err = capfd.readouterr()
    assert caplog.text or error, "the failure was reported somewhere"
    for where, text in {
        "log": caplog.text,
        "shared log": stream.getvalue(),
        "stderr": err,
        "stdout": out,
        "error": error,
    }.items():
        assert CANARY not in text, f"the key leaked into the {where}"
    assert "<redacted>" in caplog.text + error


def test_a_run_whose_every_request_fails_stops_with_one_message_and_a_non_zero_exit(server, tmp_path):
    import os
    import subprocess
    import sys

    server.status = 503
    endpoint = f"http://127.0.0.1:{server.server_port}/v1"
    env = {key: value for key, value in os.environ.items() if not key.startswith("SAPO_")}
    env["OPENAI_API_KEY"] = CANARY
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sapo_core",
            "run",
            "--inference",
            "openai",
            "--model",
            "gpt-4o-mini",
            "--role",
            "contributor",
            "--transport",
            "none",
            "--rounds",
            "2",
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            f"inference.base_url={endpoint}",
            "--set",
            "inference.max_retries=1",
            "--set",
            "inference.backoff_s=0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "every request for the 8 problems failed (503: Incorrect API key provided: Bearer <redacted>)" in output
    assert f"endpoint {endpoint}, model 'gpt-4o-mini'" in output
    assert CANARY not in output
