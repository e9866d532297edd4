"""A set of OpenAI-compatible servers: waiting for them to come up, and sending each request to the least busy.

Readiness is ``GET /health`` answering 200 (vLLM and SGLang serve it); a server without that
route (404, e.g. llama.cpp's Python server) counts as ready once ``GET /v1/models`` answers, which
every OpenAI-compatible server has and which also names the served model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

import attrs
import httpx

from sapo_core.errors import BackendError


@attrs.define
class Server:
    url: str
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    model: str = ""  # what /v1/models lists first


class ServerPool:
    """The servers of one backend; `slot` hands out the least busy one for one request."""

    def __init__(self, urls: Sequence[str], *, api_key: str | None = None) -> None:
        if not urls:
            raise BackendError("no server URL given: set inference.urls, e.g. http://127.0.0.1:8000")
        self.servers = [Server(url) for url in urls]
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._next = 0

    def pick(self) -> Server:
        """The server with the fewest requests in flight; ties go round-robin, so idle servers share the load."""
        fewest = min(s.in_flight for s in self.servers)
        count = len(self.servers)
        for offset in range(count):
            server = self.servers[(self._next + offset) % count]
            if server.in_flight == fewest:
                self._next = (self._next + offset + 1) % count
                return server
        raise AssertionError("unreachable: one server has the fewest requests")

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Server]:
        """One request's server, counted busy until the request is done (one event loop: no lock needed)."""
        server = self.pick()
        server.in_flight += 1
        server.requests += 1
        try:
            yield server
        finally:
            server.in_flight -= 1

    def wait_ready(self, timeout: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """Block until every server is healthy and names a model, or raise BackendError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pending = list(self.servers)
        last: dict[str, str] = {}
        with httpx.Client(headers=self.headers, timeout=10.0) as client:
            while pending:
                for server in list(pending):
                    problem = self._probe(client, server)
                    if problem is None:
                        pending.remove(server)
                    else:
                        last[server.url] = problem
                if not pending:
                    break
                if time.monotonic() >= deadline:
                    details = "; ".join(f"{s.url}: {last.get(s.url, 'no answer')}" for s in pending)
                    raise BackendError(
                        f"{len(pending)} of {len(self.servers)} inference servers not ready after {timeout:.0f} s "
                        f"({details}). Start them (`sapo vllm launch --help`), check inference.urls, or raise "
                        "inference.startup_timeout for a large model."
                    )
                sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _probe(self, client: httpx.Client, server: Server) -> str | None:
        """None when ``server`` is ready (and its model known), else why not."""
        try:
            health = client.get(f"{server.url}/health")
            if health.status_code in (401, 403):
                raise BackendError(
                    f"{server.url} refused the API key ({health.status_code}): set the variable "
                    "named by inference.api_key_env to the key the server was started with"
                )
            if health.status_code not in (200, 404):
                return f"/health answered {health.status_code}"
            models = client.get(f"{server.url}/v1/models")
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if models.status_code in (401, 403):
            raise BackendError(
                f"{server.url} refused the API key ({models.status_code}): set the variable named "
                "by inference.api_key_env to the key the server was started with"
            )
        if models.status_code != 200:
            return f"/v1/models answered {models.status_code}"
        try:
            data = models.json()["data"]
            server.model = str(data[0]["id"]) if data else ""
        except (ValueError, KeyError, IndexError, TypeError):
            return "/v1/models did not answer an OpenAI model list"
        return None

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for index, server in enumerate(self.servers):
            out[f"server{index}/requests"] = float(server.requests)
            out[f"server{index}/failures"] = float(server.failures)
        return out
