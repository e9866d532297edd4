"""A fault-injecting HTTP proxy in front of the real llama.cpp server, and what it saw.

`FaultProxy` is a real aiohttp server on 127.0.0.1 (in a thread of the test process): each
request it receives is either forwarded to the upstream server or answered with the fault the
test scripted for it (a status with headers, a connection reset, a hang, a malformed body).
It counts requests in flight at the server side, the measure of the client's bound.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the proxy needs aiohttp: pip install -e 'plugins/sapo_openai[test]'")
from aiohttp import web  # noqa: E402

from sapo_openai.testing import free_port  # noqa: E402


@attrs.frozen
class Fault:
    """What the proxy does with one request: ``kind`` is pass, status, reset, hang or malformed."""

    kind: str = "pass"
    status: int = 200
    headers: dict[str, str] = attrs.field(factory=dict)
    body: str = ""
    seconds: float = 0.0


PASS = Fault()

#: Decides a request's fault from its number (0-based) and JSON body.
Script = Callable[[int, dict[str, Any]], Fault]


@attrs.define
class Seen:
    index: int
    body: dict[str, Any]
    fault: Fault
    delivered: bool = False  # the upstream's 200 went back to the client
    at: float = attrs.field(factory=time.monotonic)  # when the request arrived


class FaultProxy:
    Fault = Fault  # tests script faults as proxy.Fault(...): a conftest is not importable by name
    PASS = PASS

    def __init__(self, upstream: str) -> None:
        self.root = upstream.rstrip("/").removesuffix("/v1")  # the proxy serves the same paths
        self.script: Script = lambda index, body: PASS
        self.delay = 0.0  # added before forwarding: makes concurrency visible
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fault-proxy")

    def reset(self, script: Script | None = None, delay: float = 0.0) -> None:
        with self.lock:
            self.script = script or (lambda index, body: PASS)
            self.delay = delay
            self.seen = []
            self.peak = 0

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the fault proxy did not start")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._session = self._loop.run_until_complete(self._open_session())
        self._ready.set()
        self._loop.run_forever()

    async def _open_session(self) -> Any:
        # No keep-alive upstream: a connection llama's server closed must not be reused (a spurious 500).
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                     connector=aiohttp.TCPConnector(force_close=True))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        with self.lock:
            index = len(self.seen)
            fault = self.script(index, body)
            seen = Seen(index, body, fault)
            self.seen.append(seen)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if fault.kind == "status":
                return web.Response(status=fault.status, text=fault.body, headers=fault.headers,
                                    content_type="application/json" if fault.body.startswith("{") else "text/plain")
            if fault.kind == "reset":
                assert request.transport is not None
                request.transport.abort()  # the client sees the connection drop mid-request
                return web.Response(status=500)
            if fault.kind == "malformed":
                return web.Response(status=200, body=b'{"id": "x", "choices": [{"ind', content_type="application/json")
            if fault.kind == "hang":  # the client gives up first; never forwarded, so never a second rollout
                await asyncio.sleep(fault.seconds)
                return web.Response(status=504, text="gateway timeout")
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
            async with self._session.request(request.method, self.root + request.path_qs, data=raw,
                                             headers=headers) as upstream:
                payload = await upstream.read()
                response = web.Response(status=upstream.status, body=payload,
                                        content_type=upstream.content_type or "application/json")
            seen.delivered = upstream.status == 200
            return response
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture(scope="session")
def proxy_server(llama_server: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(llama_server)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def proxy(proxy_server: FaultProxy) -> FaultProxy:
    """The session's proxy with a clean record, forwarding everything."""
    proxy_server.reset()
    return proxy_server
