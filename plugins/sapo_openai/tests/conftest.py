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
    path: str = ""  # e.g. /v1/batches/batch_000001: which endpoint (the batch tests' polls)


class LoopbackApp:
    """An aiohttp app on 127.0.0.1 in a thread of its own, with one client session to its upstream."""

    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name=self.name)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"the {self.name} did not start")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 2**20)
        self.routes(app)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._session = self._loop.run_until_complete(self._open_session())
        self._ready.set()
        self._loop.run_forever()

    async def _open_session(self) -> Any:
        # No keep-alive upstream: a connection llama's server closed must not be reused (a spurious 500).
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=600), connector=aiohttp.TCPConnector(force_close=True)
        )


class FaultProxy(LoopbackApp):
    Fault = Fault  # tests script faults as proxy.Fault(...): a conftest is not importable by name
    PASS = PASS
    name = "fault proxy"

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.root = upstream.rstrip("/").removesuffix("/v1")  # the proxy serves the same paths
        self.script: Script = lambda index, body: PASS
        self.delay = 0.0  # added before forwarding: makes concurrency visible
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def reset(self, script: Script | None = None, delay: float = 0.0) -> None:
        with self.lock:
            self.script = script or (lambda index, body: PASS)
            self.delay = delay
            self.seen = []
            self.peak = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        with self.lock:
            index = len(self.seen)
            fault = self.script(index, body)
            seen = Seen(index, body, fault, path=request.path)
            self.seen.append(seen)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if fault.kind == "status":
                return web.Response(
                    status=fault.status,
                    text=fault.body,
                    headers=fault.headers,
                    content_type="application/json" if fault.body.startswith("{") else "text/plain",
                )
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
            async with self._session.request(
                request.method, self.root + request.path_qs, data=raw, headers=headers
            ) as upstream:
                payload = await upstream.read()
                response = web.Response(
                    status=upstream.status, body=payload, content_type=upstream.content_type or "application/json"
                )
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


# ------------------------------------------------------------------------------ batch endpoints


def _now() -> int:
    return int(time.time())


@attrs.define
class Job:
    """One batch at the `BatchServer`: its lines, what each came to, and its status."""

    id: str
    provider: str  # "openai" or "anthropic"
    lines: list[dict[str, Any]]  # {"custom_id", "body"}: the chat completion or Messages params
    meta: dict[str, Any] = attrs.field(factory=dict)  # the create request's other fields
    status: str = "validating"  # OpenAI's words; Anthropic's are derived from them (`anthropic_view`)
    results: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # custom_id -> {"ok", "body"|"error", "code"}
    created_at: int = attrs.field(factory=_now)
    started: float = attrs.field(factory=time.time)  # created_at to the microsecond: when it expires
    cancel_at: float | None = None  # when a cancellation started (monotonic)
    output_file_id: str | None = None
    error_file_id: str | None = None
    refused: str = ""

    @property
    def ended(self) -> bool:
        return self.status in ("completed", "expired", "cancelled", "failed")


class BatchServer(LoopbackApp):
    """OpenAI's Batch API and Anthropic's Message Batches on 127.0.0.1, generating for real.

    Each line of a batch is sent on to the real OpenAI-compatible server (llama.cpp's; Anthropic
    params are mapped to a chat completion and the reply back to a Message). Time drives the
    status: ``validate_s`` in validating, then one line after another (each at least ``line_s``),
    finalizing, completed; ``expire_s`` after creation a batch that has not finished expires
    (what finished is kept); a cancellation takes ``cancel_s`` (a line already running finishes).
    A line whose last message contains "FAIL" fails with a 500; the model "no-such-model" has
    the whole batch refused at validation (OpenAI) or every line errored (Anthropic).
    """

    name = "batch server"

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")  # ".../v1" of the chat completions server
        self.validate_s, self.line_s, self.cancel_s, self.expire_s = 0.1, 0.0, 0.1, 3600.0
        self.public = ""  # the root the clients reach this server at (the proxy's): Anthropic's results_url
        self.jobs: dict[str, Job] = {}
        self.files: dict[str, bytes] = {}
        self.generated: list[tuple[str, str]] = []  # (batch id, custom_id) of every line sent upstream
        self.keys: list[str] = []  # the Authorization headers seen
        self.root = f"http://127.0.0.1:{self.port}"

    def reset(self, **timing: float) -> None:
        self.validate_s, self.line_s, self.cancel_s, self.expire_s = 0.1, 0.0, 0.1, 3600.0
        for name, value in timing.items():
            setattr(self, name, value)
        self.generated = []
        self.keys = []

    def routes(self, app: web.Application) -> None:
        route = app.router.add_route
        route("POST", "/v1/files", self._upload)
        route("GET", "/v1/files/{id}/content", self._content)
        route("POST", "/v1/batches", self._create)
        route("GET", "/v1/batches/{id}", self._retrieve)
        route("POST", "/v1/batches/{id}/cancel", self._cancel)
        route("POST", "/v1/messages/batches", self._create_messages)
        route("GET", "/v1/messages/batches/{id}", self._retrieve)
        route("POST", "/v1/messages/batches/{id}/cancel", self._cancel)
        route("GET", "/v1/messages/batches/{id}/results", self._messages_results)

    # ---------------------------------------------------------------- the endpoints

    async def _upload(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers.get("authorization", ""))
        form = await request.post()
        upload = form["file"]
        data = upload.file.read()
        file_id = f"file-{len(self.files):06d}"
        self.files[file_id] = data
        return web.json_response(
            {
                "id": file_id,
                "object": "file",
                "bytes": len(data),
                "created_at": _now(),
                "filename": upload.filename,
                "purpose": form.get("purpose"),
                "status": "processed",
            }
        )

    async def _content(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["id"])
        if data is None:
            return web.json_response(
                {"error": {"message": "No such File object", "type": "invalid_request_error"}}, status=404
            )
        return web.Response(body=data, content_type="application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers.get("authorization", ""))
        body = await request.json()
        raw = self.files.get(body.get("input_file_id", ""))
        if raw is None or body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return web.json_response({"error": {"message": f"invalid batch request {body}"}}, status=400)
        lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        assert all(line["method"] == "POST" and line["url"] == "/v1/chat/completions" for line in lines)
        job = self._start(Job(f"batch_{len(self.jobs):06d}", "openai", lines, meta=body))
        return web.json_response(self.openai_view(job))

    async def _create_messages(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers.get("authorization", ""))
        body = await request.json()
        lines = [{"custom_id": r["custom_id"], "body": r["params"]} for r in body["requests"]]
        job = self._start(Job(f"msgbatch_{len(self.jobs):06d}", "anthropic", lines, status="in_progress"))
        return web.json_response(self.anthropic_view(job))

    def _start(self, job: Job) -> Job:
        self.jobs[job.id] = job
        job.meta["task"] = asyncio.get_running_loop().create_task(self._process(job))
        return job

    async def _retrieve(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response({"error": {"message": "No such batch", "type": "not_found_error"}}, status=404)
        self._expire(job)
        job.meta.setdefault("served", []).append(job.status)  # the transitions a client saw
        return web.json_response(self.openai_view(job) if job.provider == "openai" else self.anthropic_view(job))

    async def _cancel(self, request: web.Request) -> web.Response:
        job = self.jobs[request.match_info["id"]]
        if not job.ended and job.cancel_at is None:
            job.cancel_at = time.monotonic()
            job.status = "cancelling"
            self._loop.call_later(self.cancel_s, self._cancelled, job)
        return web.json_response(self.openai_view(job) if job.provider == "openai" else self.anthropic_view(job))

    async def _messages_results(self, request: web.Request) -> web.Response:
        job = self.jobs[request.match_info["id"]]
        if not job.ended:
            return web.json_response({"error": {"message": "the batch is still processing"}}, status=400)
        rows = [
            json.dumps({"custom_id": line["custom_id"], "result": self._anthropic_result(job, line)})
            for line in job.lines
        ]
        return web.Response(body="\n".join(rows).encode() + b"\n", content_type="application/binary")

    # ---------------------------------------------------------------- processing

    async def _process(self, job: Job) -> None:
        await asyncio.sleep(self.validate_s)
        if job.ended or job.cancel_at is not None:
            return
        if job.provider == "openai" and any(line["body"].get("model") == "no-such-model" for line in job.lines):
            job.refused = "The model 'no-such-model' does not exist or you do not have access to it."
            self._finish(job, "failed")
            return
        job.status = "in_progress"
        for line in job.lines:
            if job.cancel_at is not None or self._expire(job):
                return
            started = time.monotonic()
            self.generated.append((job.id, line["custom_id"]))
            job.meta["busy"] = True
            try:
                job.results[line["custom_id"]] = await self._generate(job.provider, line["body"])
            finally:
                job.meta["busy"] = False
            await asyncio.sleep(max(0.0, self.line_s - (time.monotonic() - started)))
        if job.cancel_at is None and not self._expire(job):
            job.status = "finalizing"
            await asyncio.sleep(0.05)
            self._finish(job, "completed")

    def _cancelled(self, job: Job) -> None:
        if job.meta.get("busy"):  # a line already running finishes and is reported, as the APIs do
            self._loop.call_later(0.05, self._cancelled, job)
        else:
            self._finish(job, "cancelled")

    def _expire(self, job: Job) -> bool:
        if not job.ended and not job.meta.get("busy") and time.time() - job.started >= self.expire_s:
            self._finish(job, "expired")
        return job.status == "expired"

    def _finish(self, job: Job, status: str) -> None:
        if job.ended:
            return
        job.status = status
        if job.provider != "openai" or status == "failed":
            return
        out = [self._openai_line(job, cid, r) for cid, r in job.results.items() if r["ok"]]
        errors = [self._openai_line(job, cid, r) for cid, r in job.results.items() if not r["ok"]]
        if status == "expired":  # what never ran is reported as expired in the error file
            errors += [
                json.dumps(
                    {
                        "id": f"batch_req_{cid}",
                        "custom_id": cid,
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "This request could not be executed before the completion window expired.",
                        },
                    }
                )
                for cid in (line["custom_id"] for line in job.lines)
                if cid not in job.results
            ]
        for rows, name in ((out, "output_file_id"), (errors, "error_file_id")):
            if rows:
                file_id = f"file-{len(self.files):06d}"
                self.files[file_id] = ("\n".join(rows) + "\n").encode()
                setattr(job, name, file_id)

    async def _generate(self, provider: str, body: dict[str, Any]) -> dict[str, Any]:
        chat = dict(body) if provider == "openai" else _chat_of_messages(body)
        if body.get("model") == "no-such-model":
            return {"ok": False, "code": 404, "error": {"type": "not_found_error", "message": "model: no-such-model"}}
        if "FAIL" in chat["messages"][-1]["content"]:
            return {"ok": False, "code": 500, "error": {"type": "api_error", "message": "Internal server error"}}
        chat["model"] = "smollm2"  # the one model upstream; the reply names the one asked for
        async with self._session.post(f"{self.upstream}/chat/completions", json=chat) as response:
            reply = await response.json()
        if response.status != 200:
            return {"ok": False, "code": response.status, "error": reply.get("error", reply)}
        reply["model"] = body.get("model")
        return {"ok": True, "body": reply if provider == "openai" else _message_of_chat(reply)}

    # ---------------------------------------------------------------- the replies' shapes

    def _openai_line(self, job: Job, custom_id: str, result: dict[str, Any]) -> str:
        response = {
            "status_code": 200 if result["ok"] else result["code"],
            "request_id": f"req_{custom_id}",
            "body": result["body"] if result["ok"] else {"error": result["error"]},
        }
        return json.dumps({"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": response, "error": None})

    def openai_view(self, job: Job) -> dict[str, Any]:
        done = [r for r in job.results.values()]
        failed = sum(not r["ok"] for r in done)
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": job.meta.get("input_file_id"),
            "completion_window": "24h",
            "status": job.status,
            "errors": {
                "object": "list",
                "data": [{"code": "model_not_found", "message": job.refused, "param": "body.model", "line": 1}],
            }
            if job.refused
            else None,
            "output_file_id": job.output_file_id,
            "error_file_id": job.error_file_id,
            "created_at": job.created_at,
            "in_progress_at": None,
            "expires_at": job.created_at + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(job.lines), "completed": len(done) - failed, "failed": failed},
            "metadata": job.meta.get("metadata"),
        }

    def anthropic_view(self, job: Job) -> dict[str, Any]:
        ended = job.ended
        counts = {
            "processing": 0 if ended else len(job.lines),
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        if ended:  # the tallies move only once processing has ended (as the API documents)
            for line in job.lines:
                kind = self._anthropic_result(job, line)["type"]
                counts[kind] += 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.created_at))
        return {
            "id": job.id,
            "type": "message_batch",
            "created_at": stamp,
            "expires_at": stamp,
            "archived_at": None,
            "ended_at": stamp if ended else None,
            "cancel_initiated_at": stamp if job.cancel_at else None,
            "processing_status": "ended" if ended else ("canceling" if job.cancel_at else "in_progress"),
            "request_counts": counts,
            "results_url": f"{self.public or self.root}/v1/messages/batches/{job.id}/results" if ended else None,
        }

    def _anthropic_result(self, job: Job, line: dict[str, Any]) -> dict[str, Any]:
        result = job.results.get(line["custom_id"])
        if result is None:
            return {"type": "expired" if job.status == "expired" else "canceled"}
        if result["ok"]:
            return {"type": "succeeded", "message": result["body"]}
        return {"type": "errored", "error": {"type": "error", "error": result["error"]}}


def _chat_of_messages(params: dict[str, Any]) -> dict[str, Any]:
    """Anthropic Messages params as the chat completion that generates them."""
    messages = ([{"role": "system", "content": params["system"]}] if params.get("system") else []) + params["messages"]
    chat: dict[str, Any] = {"messages": messages, "max_tokens": params["max_tokens"]}
    for name in ("temperature", "top_p", "top_k"):
        if name in params:
            chat[name] = params[name]
    if params.get("stop_sequences"):
        chat["stop"] = params["stop_sequences"]
    return chat


def _message_of_chat(reply: dict[str, Any]) -> dict[str, Any]:
    choice = reply["choices"][0]
    usage = reply.get("usage") or {}
    return {
        "id": f"msg_{reply.get('id', '')}",
        "type": "message",
        "role": "assistant",
        "model": reply["model"],
        "content": [{"type": "text", "text": choice["message"].get("content") or ""}],
        "stop_reason": "max_tokens" if choice.get("finish_reason") == "length" else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)},
    }


@pytest.fixture(scope="session")
def batch_servers(llama_server: str) -> Iterator[tuple[BatchServer, FaultProxy]]:
    server = BatchServer(llama_server)
    server.start()
    proxy = FaultProxy(server.root + "/v1")
    proxy.start()
    server.public = proxy.url.removesuffix("/v1")
    try:
        yield server, proxy
    finally:
        proxy.stop()
        server.stop()


@pytest.fixture
def batch_server(batch_servers: tuple[BatchServer, FaultProxy]) -> tuple[BatchServer, FaultProxy]:
    """The session's batch server (default timing) behind its own fault proxy (forwarding everything)."""
    server, proxy = batch_servers
    server.reset()
    proxy.reset()
    return server, proxy
