"""``sapo serve``: the remote trainer. The policy and its learner live here, behind HTTP; clients
generate through it, score the completions with their own code, and post the rewards back.

A FastAPI app served by uvicorn. Every route but ``/health`` needs the API key
(``Authorization: Bearer <key>``, compared in constant time). JSON in, JSON out:

* ``POST /v1/rollouts`` ``{"prompts": [{"messages": [{"role", "content"}...]} | {"prompt": "..."}],
  "num_completions": G?}`` -> ``{"groups": [{"index", "group_id", "expires_at", "rollouts": [{"rollout_id",
  "text", "finish_reason", "num_tokens"}]}], "policy_version"}``
* ``POST /v1/rewards`` ``{"rewards": [{"rollout_id", "reward"}]}`` -> ``{"accepted", "duplicates",
  "groups_completed"}``. A group whose G rewards are all in is queued; every ``batch_groups``
  queued groups make one learner step, run by a background thread.
* ``GET /v1/status``, ``GET /v1/metrics``, ``POST /v1/checkpoints`` (save now), ``GET /v1/checkpoints``.

Refusals are 4xx with ``{"error": reason}``: 401 without the key, 404 unknown rollout ids, 409 a
reward posted again with another value, 410 a group that expired, 413 a body over
``max_body_bytes``, 422 a malformed request (FastAPI's ``{"detail": [...]}`` for the schema),
429 over the rate limit (with ``Retry-After``), 503 while the learner is ``max_queued_groups``
behind (with ``Retry-After``) or once training has stopped on an error.
The ledger's rules (idempotent rewards, expiry) are in `sapo_local.rollout_book`; the client is
`sapo_core.remote.RemoteTrainer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Literal

import attrs
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sapo_core.checkpoints import write_learner_state
from sapo_core.errors import TrainingError
from sapo_core.interfaces import SamplingParams
from sapo_core.node import Node
from sapo_core.records import Message, Problem
from sapo_local.rollout_book import BookError, RolloutBook, new_group_id, rewards_from_json

log = logging.getLogger("sapo.serve")

STATUS = {"unknown": 404, "conflict": 409, "expired": 410, "invalid": 422, "busy": 503, "stopped": 503}


@attrs.frozen
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    group_ttl: float = 600.0  # seconds a group may wait for all its rewards before it expires untrained
    batch_groups: int = 4  # complete groups per learner step
    # Complete groups waiting for the learner before new rollouts are refused (503, Retry-After):
    # the bound on how stale, in learner steps, the policy that generated a trained group can be.
    max_queued_groups: int = 16
    checkpoint_every: int = 0  # learner steps between automatic checkpoints; 0: only on request and at exit
    max_body_bytes: int = 1_000_000
    max_prompts: int = 64  # prompts per /v1/rollouts request
    max_completions: int = 16  # G at most
    max_prompt_chars: int = 8_000
    max_rewards: int = 4_096  # rewards per /v1/rewards request
    rate: float = 20.0  # requests per second per client address (token bucket) ...
    burst: int = 40  # ... with this many in a burst


# ---------------------------------------------------------------------------------- service


class TrainerService:
    """The node's generation and learner behind a lock, the rollout ledger, and the training thread."""

    def __init__(self, node: Node, settings: ServeSettings) -> None:
        if node.inference is None or node.learner is None:
            raise TrainingError("sapo serve needs an inference backend and a learner (run.role = worker)")
        self.node, self.settings = node, settings
        config = node.config
        self.group_size = config.inference.num_completions
        self.book = RolloutBook(
            ttl=settings.group_ttl, node=node.context.node, scale_by_std=config.advantages.scale_by_std
        )
        self.model_lock = threading.Lock()  # generation and learner steps share one model ...
        # ... and a waiting learner step goes next: requests pass this gate before queueing on the
        # model lock, and the learner holds it while it waits, so a stream of requests cannot starve it.
        self._gate = threading.Lock()
        self.steps = 0
        self.started = time.time()
        self.last_train: dict[str, float] = {}
        self.error: str | None = None
        self.counts = {
            "rollout_requests": 0,
            "completions_served": 0,
            "reward_requests": 0,
            "groups_trained": 0,
            "groups_skipped_no_signal": 0,
        }
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._train_loop, name="sapo-serve-learner", daemon=True)

    def start(self, resume: bool = False) -> None:
        self.node.join()  # the run folder and its config.json, as `sapo run` writes them
        if resume:  # checkpoints are numbered by the learner steps taken before them
            self.steps = max(0, self.node.resume())
        self._thread.start()

    def stop(self) -> None:
        """Finish the learner step in progress, then write a last checkpoint (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=600)
        if self.steps and self.error is None:
            self.checkpoint()

    # ------------------------------------------------------------------ requests

    def rollouts(self, prompts: list[tuple[Message, ...]], n: int) -> dict[str, Any]:
        self._check_running()
        queued = len(self.book.queue)
        if queued >= self.settings.max_queued_groups:
            raise BookError(
                "busy",
                f"the learner is {queued} complete groups behind; new rollouts wait until it "
                "catches up (retry shortly)",
            )
        problems = [Problem(task="remote", id=new_group_id(), messages=messages) for messages in prompts]
        inference = self.node.config.inference
        params = SamplingParams(
            temperature=inference.temperature,
            top_p=inference.top_p,
            top_k=inference.top_k,
            max_new_tokens=inference.max_new_tokens,
            seed=self.node.context.seed,
        )
        with self._gate:
            pass
        with self.model_lock:
            outputs = self.node.inference.generate(problems, n, params)  # type: ignore[union-attr]
        groups = []
        for index, (problem, completions) in enumerate(zip(problems, outputs)):
            if len(completions) < n:  # a failed generation: no group, the client may ask again
                continue
            group_id, ids, expires = self.book.open(problem, completions[:n])
            groups.append(
                {
                    "index": index,  # the prompt's position in the request
                    "group_id": group_id,
                    "expires_at": expires,
                    "rollouts": [
                        {
                            "rollout_id": rid,
                            "text": c.text,
                            "finish_reason": c.finish_reason,
                            "num_tokens": c.num_tokens,
                        }
                        for rid, c in zip(ids, completions)
                    ],
                }
            )
        self.counts["rollout_requests"] += 1
        self.counts["completions_served"] += sum(len(g["rollouts"]) for g in groups)
        return {"groups": groups, "policy_version": self.steps}

    def rewards(self, items: Any) -> dict[str, Any]:
        self._check_running()
        result = self.book.post(rewards_from_json(items, limit=self.settings.max_rewards))
        self.counts["reward_requests"] += 1
        if result["groups_completed"]:
            self._wake.set()
        return result

    def status(self) -> dict[str, Any]:
        return {
            "model": self.node.config.model.name,
            "policy_version": self.steps,
            "learner_steps": self.steps,
            "group_size": self.group_size,
            "batch_groups": self.settings.batch_groups,
            "group_ttl": self.settings.group_ttl,
            "training": self.error is None,
            "error": self.error,
            "uptime": time.time() - self.started,
            **self.book.status(),
        }

    def metrics(self) -> dict[str, Any]:
        return {"learner_steps": self.steps, "last_step": self.last_train, **self.counts, **self.book.status()}

    def checkpoint(self) -> dict[str, Any]:
        checkpointer, learner = self.node.checkpointer, self.node.learner
        assert checkpointer is not None and learner is not None
        # A service has no last round: its newest checkpoint, the one a restart resumes from, keeps the
        # optimizer state (the checkpointer drops it from older ones), unless optimizer_state is "none".
        optimizer = self.node.config.checkpoint.optimizer_state != "none"
        with self.model_lock:
            info = checkpointer.save(
                self.steps,
                lambda folder: write_learner_state(learner, folder, optimizer=optimizer),
                {"learner_steps": self.steps, "source": "sapo serve"},
            )
        return {"round": info.round, "location": info.location}

    def checkpoints(self) -> dict[str, Any]:
        assert self.node.checkpointer is not None
        return {"checkpoints": [{"round": c.round, "location": c.location} for c in self.node.checkpointer.list()]}

    def _check_running(self) -> None:
        if self.error is not None:
            raise BookError("stopped", f"training stopped: {self.error}. Restart the server with --resume.")

    # ------------------------------------------------------------------ learner thread

    def _train_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            self.book.sweep()  # expiry happens even when no request comes
            while self.error is None and len(self.book.queue) >= self.settings.batch_groups:
                self._step(self.book.take(self.settings.batch_groups))

    def _step(self, groups: list[Any]) -> None:
        try:
            self._train(groups)
        except Exception as exc:  # noqa: BLE001  a learner failure stops training, never the server
            self.error = f"{type(exc).__name__}: {exc}"
            log.error(
                "learner step %d failed: %s; training stopped (the last checkpoint is the state to resume from)",
                self.steps,
                self.error,
            )

    def _train(self, groups: list[Any]) -> None:
        useful = [g for g in groups if not g.zero_variance]
        self.counts["groups_skipped_no_signal"] += len(groups) - len(useful)
        if not useful:
            return
        with self._gate, self.model_lock:
            metrics = dict(self.node.learner.train(useful, self.steps))  # type: ignore[union-attr]
        self.counts["groups_trained"] += len(useful)
        rewards = [r for g in useful for r in g.rewards]
        record = {
            "round": self.steps,
            "node": self.node.context.node,
            "time": time.time(),
            "reward/mean": sum(rewards) / len(rewards),
            "train/groups": len(useful),
            **{f"train/{k}": v for k, v in metrics.items()},
        }
        self.last_train = {k: v for k, v in record.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.node.write_metrics(self.steps, record, None)
        self.steps += 1
        every = self.settings.checkpoint_every
        if every and self.steps % every == 0:
            self.checkpoint()


# ------------------------------------------------------------------------------------ HTTP


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class PromptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[MessageIn] | None = Field(default=None, min_length=1)
    prompt: str | None = None


class RolloutsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[PromptIn] = Field(min_length=1)
    num_completions: int | None = Field(default=None, ge=2)


class RewardsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rewards: list[Any] = Field(min_length=1)


class Guard:
    """ASGI middleware, in this order, before the app reads a byte of the body: the rate limit
    (429), the key (401), then the body, read whole up to ``limit`` bytes (413 beyond, chunked or
    not) and handed to the app. So unauthenticated junk costs a header check, and is rate-limited."""

    def __init__(self, app: Any, *, limit: int, limiter: RateLimiter, api_key: str, open_paths: frozenset[str]) -> None:
        self.app, self.limit, self.limiter, self.open_paths = app, limit, limiter, open_paths
        self.expected = api_key.encode()

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope.get("path") not in self.open_paths:
            client = (scope.get("client") or ("?", 0))[0]
            wait = self.limiter.wait_time(client)
            if wait > 0:
                rate, burst = self.limiter.rate, self.limiter.burst
                await _send_json(
                    send,
                    429,
                    {"error": f"rate limit: {rate:g} requests/s per client (burst {burst}); retry in {wait:.2f} s"},
                    extra=[(b"retry-after", str(max(1, math.ceil(wait))).encode())],
                )
                return
            header = headers.get(b"authorization", b"")
            given = header[7:].strip() if header[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.expected):
                await _send_json(
                    send,
                    401,
                    {"error": "missing or wrong API key: send Authorization: Bearer <key>"},
                    extra=[(b"www-authenticate", b"Bearer")],
                )
                return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _send_json(send, 413, {"error": f"request body over {self.limit} bytes"})
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.limit:
                await _send_json(send, 413, {"error": f"request body over {self.limit} bytes"})
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def _send_json(
    send: Callable[[Any], Awaitable[None]],
    status: int,
    body: dict[str, Any],
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class RateLimiter:
    """A token bucket per client address: ``rate`` requests per second, up to ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait_time(self, client: str) -> float:
        """0 when the request may go now (and it is counted), else the seconds until it may."""
        now = self.clock()
        with self._lock:
            if len(self._buckets) > 10_000:  # forget clients whose bucket has refilled: memory stays bounded
                full = self.burst / self.rate
                self._buckets = {c: b for c, b in self._buckets.items() if now - b[1] < full}
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate


def create_app(service: TrainerService, api_key: str) -> Any:
    """The ASGI app: routes, the key check, the rate limit and the body-size limit."""
    settings = service.settings
    app = FastAPI(title="sapo serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan(service))
    app.add_exception_handler(BookError, _book_error)  # type: ignore[arg-type]  # Starlette types it for Exception
    _add_routes(app, service)
    # The rate limit comes before the key check, so it also slows down anyone guessing keys.
    return Guard(
        app,
        limit=settings.max_body_bytes,
        limiter=RateLimiter(settings.rate, settings.burst),
        api_key=api_key,
        open_paths=frozenset({"/health"}),
    )


def _lifespan(service: TrainerService) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn's graceful shutdown (SIGINT, SIGTERM) runs this, then re-raises the signal:
        # code after uvicorn.run would never run, so the last checkpoint is written here.
        await asyncio.to_thread(service.stop)

    return lifespan


async def _book_error(request: Request, exc: BookError) -> JSONResponse:
    body: dict[str, Any] = {"error": str(exc)}
    if exc.ids:
        body["rollout_ids"] = exc.ids[:100]
    headers = {"Retry-After": "1"} if exc.kind == "busy" else None
    return JSONResponse(body, status_code=STATUS.get(exc.kind, 503), headers=headers)


def _add_routes(app: FastAPI, service: TrainerService) -> None:
    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/rollouts")
    def rollouts(body: RolloutsIn) -> dict[str, Any]:
        n = body.num_completions or service.group_size
        return service.rollouts(_chats(body, n, service.settings), n)

    @app.post("/v1/rewards")
    def rewards(body: RewardsIn) -> dict[str, Any]:
        return service.rewards(body.rewards)

    @app.get("/v1/status")
    def status() -> dict[str, Any]:
        return service.status()

    @app.get("/v1/metrics")
    def metrics() -> dict[str, Any]:
        return service.metrics()

    @app.post("/v1/checkpoints")
    def save_checkpoint() -> dict[str, Any]:
        return service.checkpoint()

    @app.get("/v1/checkpoints")
    def list_checkpoints() -> dict[str, Any]:
        return service.checkpoints()


def _chats(body: RolloutsIn, n: int, settings: ServeSettings) -> list[tuple[Message, ...]]:
    """The request's prompts as chats, within this server's limits (BookError "invalid" beyond them)."""
    if n > settings.max_completions:
        raise BookError("invalid", f"num_completions {n} is over this server's limit of {settings.max_completions}")
    if len(body.prompts) > settings.max_prompts:
        raise BookError("invalid", f"{len(body.prompts)} prompts in one request; at most {settings.max_prompts}")
    chats = []
    for position, prompt in enumerate(body.prompts):
        if (prompt.messages is None) == (prompt.prompt is None):
            raise BookError("invalid", f"prompts[{position}] needs exactly one of messages or prompt")
        messages = (
            tuple(Message(m.role, m.content) for m in prompt.messages)
            if prompt.messages is not None
            else (Message("user", prompt.prompt or ""),)
        )
        if sum(len(m.content) for m in messages) > settings.max_prompt_chars:
            raise BookError("invalid", f"prompts[{position}] is over {settings.max_prompt_chars} characters")
        if not any(m.role == "user" and m.content.strip() for m in messages):
            raise BookError("invalid", f"prompts[{position}] has no non-empty user message")
        chats.append(messages)
    return chats
