"""Sending requests to a hosted API well: a bound on requests in flight, retries with backoff, caps.

`Engine.call` sends one request and tries again on what passes (429, 408, 409, 5xx, timeouts,
connection resets, malformed bodies) after an exponential backoff with full jitter, or after
the server's ``Retry-After``/``retry-after-ms`` when it gives one (up to ``retry_after_max_s``).
What cannot pass by waiting (401, 403, 404, 400, 422) stops at once with a `BackendError` that
says what to fix. A request that still fails after its retries returns None: its problem is
dropped and counted, the round goes on. The semaphore is held only while a request is on the
wire, never during a backoff, so ``max_in_flight`` bounds what the server sees.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from sapo_core.errors import BackendError, StopRun
from sapo_openai.providers import API, MalformedReply, Reply
from sapo_openai.usage import Usage

log = logging.getLogger("sapo.openai")

RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx


@attrs.frozen
class Failure:
    retry: bool
    what: str  # for messages: "429 Too Many Requests: slow down", "timed out", ...
    status: int | None = None
    retry_after: float | None = None  # seconds the server asked for


def retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), None if absent or unreadable."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(message, str) and message:
            return message
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    try:  # a body that is not JSON (a proxy's HTML page, plain text)
        text = exc.response.text.strip()
    except Exception:  # noqa: BLE001  no readable response: the SDK's own words
        text = ""
    return text[:300] if text else str(getattr(exc, "message", "") or exc)


def classify(exc: BaseException, sdk: Any) -> Failure:
    """What a failed request means; raises ``exc`` again when it is not an API failure (a bug)."""
    if isinstance(exc, sdk.APIStatusError):
        status = int(exc.status_code)
        response = getattr(exc, "response", None)
        what = f"{status}: {_server_message(exc)}"
        return Failure(
            status in RETRY_STATUS or status >= 500, what, status, retry_after(getattr(response, "headers", None))
        )
    if isinstance(exc, sdk.APITimeoutError):
        return Failure(True, "timed out")
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return Failure(True, f"connection failed ({type(cause).__name__ if cause else 'no detail'})")
    if isinstance(exc, (sdk.APIResponseValidationError, MalformedReply, json.JSONDecodeError)):
        return Failure(True, f"malformed response ({type(exc).__name__})")
    raise exc


@attrs.define
class Engine:
    """One API's requests with their bound, retries and accounting. Build one per `asyncio.run`."""

    api: API
    usage: Usage
    max_in_flight: int = 16
    max_retries: int = 6
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0
    label: str = ""  # how messages name this backend: "inference backend 'openai'"
    key_source: str = ""  # where the key came from, for the 401 message
    # 400/422 stop the run (a setting is wrong); False: they fail that request alone (a judge's input too long)
    invalid_is_fatal: bool = True
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = attrs.field(factory=random.Random)
    # One semaphore per event loop: each `generate` call runs its own loop, and an asyncio
    # semaphore that has ever made a task wait is bound to the loop it did it in.
    _slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = attrs.field(default=None, init=False)
    #: Why the last request that failed for good failed ("" while none has).
    last_failure: str = attrs.field(default="", init=False)

    def delay(self, attempt: int, failure: Failure) -> float:
        """Seconds before try ``attempt + 1``: the server's wish if it said one, else full-jitter backoff."""
        if failure.retry_after is not None:
            # A small jitter keeps many clients told "2 s" from coming back in the same millisecond.
            return min(failure.retry_after, self.retry_after_max_s) + self.rng.uniform(0, 0.1 * self.backoff_s)
        return self.rng.uniform(0, min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))

    def refuse_when_capped(self) -> None:
        """Stop the run, before any request, once a usage cap (requests, tokens, dollars) is reached."""
        reached = self.usage.cap_reached()
        if reached is not None:
            raise StopRun(f"{self.label} reached its usage cap {reached}")

    def nothing_came_back(self, problems: int) -> BackendError:
        """The error for a call in which every request failed for good: nothing to train on."""
        where = self.api.base_url or self.api.provider.base_url
        message = (
            f"{self.label or self.api.provider.name}: every request for the {problems} problems failed "
            f"({self.last_failure or 'no reply'}); endpoint {where}, model {self.api.model!r}. Check that "
            f"the server is up and reachable (inference.base_url) and the model name (--model)"
        )
        return BackendError(message.replace(self.api.key, "<redacted>") if self.api.key else message)

    def fatal(self, failure: Failure) -> BackendError:
        provider, model = self.api.provider.name, self.api.model
        where = self.api.base_url or self.api.provider.base_url
        status = failure.status
        if status == 401:
            hint = (
                f"check the key ({self.key_source or 'none was sent'}): `sapo keys set {self.api.provider.key_env}` "
                f"or export it"
            )
        elif status == 403:
            hint = f"the key may not use model {model!r}; check the account's access"
        elif status == 404:
            hint = f"check the model name ({model!r}: inference.model or --model) and base_url ({where})"
        else:
            hint = "check the sampling settings and the model's limits (inference.max_new_tokens, temperature, max_tokens_param)"
        message = f"{self.label or provider} refused the request ({failure.what}); {hint}"
        if self.api.key:
            message = message.replace(self.api.key, "<redacted>")
        return BackendError(message)

    async def call(self, client: Any, body: dict[str, Any], *, about: str = "") -> Reply | None:
        """Send ``body`` until it succeeds, fails for good (None) or cannot succeed (`BackendError`)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.max_in_flight))
        slots = self._slots[1]
        attempt = 0
        while True:
            reached = self.usage.cap_reached()
            if reached is not None:
                self.usage.count("capped")
                return None
            async with slots:
                self.usage.started()
                try:
                    reply = await self.api.send(client, body)
                    failure = None
                except Exception as exc:  # noqa: BLE001  classify() re-raises what is not an API failure
                    failure = classify(exc, self.api.sdk)
                finally:
                    self.usage.ended()
            if failure is None:
                self.usage.tokens(reply.prompt_tokens, reply.completion_tokens)
                return reply
            if not failure.retry and (self.invalid_is_fatal or failure.status not in (400, 413, 422)):
                raise self.fatal(failure)
            if not failure.retry:
                self.usage.count("failed")
                self.last_failure = failure.what
                log.warning(
                    "%s: a request%s was refused (%s)", self.label, f" for {about}" if about else "", failure.what
                )
                return None
            attempt += 1
            if attempt > self.max_retries:
                self.usage.count("failed")
                self.last_failure = failure.what
                log.warning(
                    "%s: a request%s failed after %d tries (%s); its problem is dropped",
                    self.label,
                    f" for {about}" if about else "",
                    attempt,
                    failure.what,
                )
                return None
            self.usage.count("retries")
            wait = self.delay(attempt, failure)
            log.debug("%s: %s; try %d in %.2f s", self.label, failure.what, attempt + 1, wait)
            await self.sleep(wait)


async def run_all(coroutines: list[Awaitable[Any]]) -> list[Any]:
    """Run ``coroutines`` concurrently; the first `BackendError` cancels the rest and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]  # type: ignore[arg-type]
    except BaseExceptionGroup as grouped:
        fatal = grouped.subgroup(BackendError)
        if fatal is not None:
            raise _first(fatal) from None
        raise _first(grouped) from None
    return [task.result() for task in tasks]


def _first(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
