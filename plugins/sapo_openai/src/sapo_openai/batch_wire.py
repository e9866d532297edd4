"""The two batch endpoints through their official SDKs: submit, status, cancel, results.

* OpenAI's Batch API: a JSONL file of ``/v1/chat/completions`` requests uploaded with
  ``purpose="batch"`` (``client.files.create``), then ``client.batches.create``; its status
  (``client.batches.retrieve``) goes validating -> in_progress -> finalizing -> completed, or
  failed (the file was refused), expired (24 h passed), cancelling -> cancelled. Once it has
  ended, ``output_file_id`` holds the lines that succeeded and ``error_file_id`` the others
  (``client.files.content``).
* Anthropic's Message Batches: ``client.messages.batches.create(requests=[{custom_id, params}])``;
  ``processing_status`` in_progress -> ended (or canceling -> ended); once ended,
  ``client.messages.batches.results`` streams one result per request: succeeded, errored,
  canceled or expired.

Both keep no partial results while a batch runs: what finished is readable only once it has
ended, which is why a round that cannot wait cancels its batch (`sapo_openai.batch`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from sapo_openai.providers import API, MalformedReply, Reply

#: One request of a batch: its custom_id and the body the realtime mode would send.
Line = tuple[str, Mapping[str, Any]]


@attrs.frozen
class BatchStatus:
    ended: bool  # no request of it will change any more: its results can be read
    status: str  # the provider's word: in_progress, cancelling, completed, expired, ended ...
    done: int = 0  # requests finished so far (as far as the provider says while it runs)
    total: int = 0
    refused: str = ""  # the whole batch was refused (OpenAI's "failed"): the provider's reason


@attrs.frozen
class Outcome:
    """What one request of a batch came to: a reply, or why not (``error``)."""

    reply: Reply | None = None
    error: str = ""
    status: int | None = None  # the HTTP status of a refused request, when the provider gives one


class Batches(Protocol):
    async def submit(self, client: Any, lines: Sequence[Line], *, key: str) -> str: ...

    async def status(self, client: Any, batch_id: str) -> BatchStatus: ...

    async def cancel(self, client: Any, batch_id: str) -> None: ...

    async def results(self, client: Any, batch_id: str) -> dict[str, Outcome]: ...


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("code") or inner.get("type") or inner)[:300]
    return str(error)[:300]


def _parsed(api: API, body: Any) -> Outcome:
    try:
        if not isinstance(body, dict):
            raise MalformedReply("a result that is not a JSON object")
        return Outcome(reply=api.parse(body))
    except MalformedReply as exc:
        return Outcome(error=f"malformed result ({exc})")


@attrs.define
class OpenAIBatches:
    """OpenAI's Batch API (``/v1/files``, ``/v1/batches``)."""

    api: API
    node: str = ""

    async def submit(self, client: Any, lines: Sequence[Line], *, key: str) -> str:
        data = "".join(
            json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": dict(body)})
            + "\n"
            for custom_id, body in lines
        ).encode()
        uploaded = await client.files.create(file=(f"sapo-{key}.jsonl", data, "application/jsonl"), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"sapo_key": key, "sapo_node": self.node},
        )
        return str(batch.id)

    async def status(self, client: Any, batch_id: str) -> BatchStatus:
        batch = await client.batches.retrieve(batch_id)
        counts = batch.request_counts
        done = (counts.completed + counts.failed) if counts is not None else 0
        total = counts.total if counts is not None else 0
        refused = ""
        if batch.status == "failed":
            errors = getattr(batch.errors, "data", None) or []
            refused = "; ".join(f"{e.code or 'error'}: {e.message}" for e in errors[:3]) or "no reason given"
        return BatchStatus(
            ended=batch.status in ("completed", "expired", "cancelled", "failed"),
            status=batch.status,
            done=done,
            total=total,
            refused=refused,
        )

    async def cancel(self, client: Any, batch_id: str) -> None:
        await client.batches.cancel(batch_id)

    async def results(self, client: Any, batch_id: str) -> dict[str, Outcome]:
        batch = await client.batches.retrieve(batch_id)
        out: dict[str, Outcome] = {}
        for file_id in (batch.error_file_id, batch.output_file_id):  # a success wins over an error
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for raw in content.text.splitlines():
                if raw.strip():
                    custom_id, outcome = self._line(json.loads(raw))
                    out[custom_id] = outcome
        return out

    def _line(self, line: Mapping[str, Any]) -> tuple[str, Outcome]:
        custom_id = str(line.get("custom_id"))
        response = line.get("response") or {}
        status = response.get("status_code") if isinstance(response, dict) else None
        error = line.get("error")
        if isinstance(error, dict) and error.get("code") == "batch_expired":
            return custom_id, Outcome(error="expired")  # never ran within the 24 h: not a failure, not billed
        if error:
            return custom_id, Outcome(error=_error_text(error), status=status)
        if status != 200:
            return custom_id, Outcome(error=f"{status}: {_error_text(response.get('body'))}", status=status)
        return custom_id, _parsed(self.api, response.get("body"))


@attrs.define
class AnthropicBatches:
    """Anthropic's Message Batches (``/v1/messages/batches``)."""

    api: API

    async def submit(self, client: Any, lines: Sequence[Line], *, key: str) -> str:
        batch = await client.messages.batches.create(
            requests=[{"custom_id": custom_id, "params": dict(body)} for custom_id, body in lines]
        )
        return str(batch.id)

    async def status(self, client: Any, batch_id: str) -> BatchStatus:
        batch = await client.messages.batches.retrieve(batch_id)
        counts = batch.request_counts
        done = counts.succeeded + counts.errored + counts.canceled + counts.expired
        return BatchStatus(
            ended=batch.processing_status == "ended",
            status=batch.processing_status,
            done=done,
            total=done + counts.processing,
        )

    async def cancel(self, client: Any, batch_id: str) -> None:
        await client.messages.batches.cancel(batch_id)

    async def results(self, client: Any, batch_id: str) -> dict[str, Outcome]:
        out: dict[str, Outcome] = {}
        decoder = await client.messages.batches.results(batch_id)
        async for item in decoder:
            result = item.result
            if result.type == "succeeded":
                out[item.custom_id] = _parsed(self.api, result.message.to_dict())
            elif result.type == "errored":
                out[item.custom_id] = Outcome(error=_error_text(result.error.to_dict()))
            else:  # canceled or expired: never generated, never billed
                out[item.custom_id] = Outcome(error=result.type)
        return out


def batches_of(api: API, node: str) -> Batches:
    return AnthropicBatches(api) if api.provider.wire == "messages" else OpenAIBatches(api, node)
