"""``inference.mode = "batch"``: one OpenAI Batch / Anthropic Message Batch per round, at half the price.

A round's `BatchInference.generate` builds the request of every (problem, replicate), exactly as
the realtime mode would send it with one completion each (seed ``derive_seed(seed, problem.id, i)``),
submits them as one batch, and polls its status with a jittered, doubling wait (``batch_poll_s``
up to ``batch_poll_max_s``) until it ends or the round's wait (``batch_wait_s``) is over.

A batch that has not ended by then is cancelled: neither provider gives partial results of a
running batch, and a cancelled one ends with the requests that had finished (published this
round) while the others never run and are never billed (their problems are dropped, as a failed
request's). A cancellation that has not ended within ``batch_cancel_wait_s`` stays in the ledger
(`Ledger`, JSON in the node's run directory); a later round (or a restarted node) collects it once
it has ended: its completions go to ``batches/late-<batch id>.jsonl``, written once (the file's
existence is the record), counted in ``inference/late_completions`` and in the cost, and never
submitted or returned again. A node restarted in the middle of a round (the same problems and
seeds: the same key) polls the batch it had submitted rather than paying for a second one.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from sapo_core.errors import BackendError
from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.records import Completion, Problem
from sapo_core.seeding import derive_seed
from sapo_openai.batch_wire import Batches, BatchStatus, Line, Outcome
from sapo_openai.engine import Engine, classify
from sapo_openai.providers import API
from sapo_openai.settings import APISettings

log = logging.getLogger("sapo.openai")

DAY_S = 24 * 3600.0  # both providers' completion window
SWARM_WAIT_SHARE = 0.8  # of swarm.round_seconds: the rest is for cancelling, scoring and publishing


def wait_seconds(settings: APISettings, context: BackendContext) -> float:
    """How long a round waits for its batch (see ``APISettings.batch_wait_s``)."""
    if settings.batch_wait_s:
        return settings.batch_wait_s
    swarm = context.config.swarm
    if swarm.transport == "none":
        return DAY_S  # offline: no deadline but the provider's own
    return max(1.0, SWARM_WAIT_SHARE * swarm.round_seconds - settings.batch_cancel_wait_s)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # a crash leaves the old file or the new one, never half of one


@attrs.define
class Ledger:
    """The batches this backend submitted and has not collected yet, as JSON in the run directory.

    An entry: ``{"id", "key", "submitted_at", "cancelled", "requests": {custom_id: [problem id, replicate]}}``.
    """

    folder: Path
    name: str  # e.g. "inference-openai": the stage and provider, so two backends never share a file

    @property
    def path(self) -> Path:
        return self.folder / f"{self.name}.json"

    def late_path(self, batch_id: str) -> Path:
        return self.folder / f"late-{re.sub(r'[^A-Za-z0-9_-]', '_', batch_id)}.jsonl"

    def entries(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise BackendError(
                f"the batch ledger {self.path} is not JSON ({exc}); it lists batches not yet "
                f"collected: repair it or move it away (their results stay at the provider)"
            ) from None
        return list(data.get("pending", []))

    def _store(self, entries: list[dict[str, Any]]) -> None:
        _atomic_write(self.path, json.dumps({"version": 1, "pending": entries}, indent=1))

    def add(self, entry: dict[str, Any]) -> None:
        self._store([*self.entries(), entry])

    def update(self, batch_id: str, **changes: Any) -> None:
        self._store([{**e, **changes} if e["id"] == batch_id else e for e in self.entries()])

    def remove(self, batch_id: str) -> None:
        self._store([e for e in self.entries() if e["id"] != batch_id])


def _key(lines: Sequence[tuple[str, int, Mapping[str, Any]]]) -> str:
    """A digest of a round's requests: the same problems and seeds give the same key (a restart)."""
    text = json.dumps([[problem_id, replicate, body] for problem_id, replicate, body in lines], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@attrs.define
class BatchInference:
    """An `InferenceBackend` over a provider's batch endpoint (see the module's documentation)."""

    api: API
    engine: Engine
    ledger: Ledger
    wire: Batches
    wait_s: float = DAY_S
    cancel_wait_s: float = 60.0
    poll_s: float = 5.0
    poll_max_s: float = 60.0
    clock: Any = time.monotonic

    @property
    def label(self) -> str:
        return f"{self.engine.label} (batch mode)"

    def generate(self, problems: Sequence[Problem], n: int, params: SamplingParams) -> list[list[Completion]]:
        self.engine.refuse_when_capped()
        return asyncio.run(self._generate(problems, n, params))

    async def _generate(self, problems: Sequence[Problem], n: int, params: SamplingParams) -> list[list[Completion]]:
        slots: list[list[Completion | None]] = [[None] * n for _ in problems]
        client = self.api.client()
        try:
            wanted = [(p.id, i, self._body(p, i, params)) for p in problems for i in range(n)]
            key = _key(wanted)
            await self.collect_late(client, key)
            places = {f"{key}-{index}-{i}": (index, i) for index in range(len(problems)) for i in range(n)}
            lines = self._within_caps([(custom_id, body) for custom_id, (_, _, body) in zip(places, wanted)])
            if lines:
                outcomes = await self._round(client, key, lines, problems, places)
                self._fill(outcomes, places, slots)
        finally:
            await client.close()
        out = []
        for got in slots:
            done = [c for c in got if c is not None]
            if len(done) < n:
                self.engine.usage.count("problems_failed")
            out.append(done)
        return out

    def _body(self, problem: Problem, replicate: int, params: SamplingParams) -> dict[str, Any]:
        seed = derive_seed(params.seed, problem.id, replicate) if self.api.takes_seed else None
        return self.api.body(problem.messages, 1, seed, params)

    def _within_caps(self, lines: list[Line]) -> list[Line]:
        """The lines ``max_requests`` still allows; the rest are counted as capped, never sent."""
        caps, usage = self.engine.usage.caps, self.engine.usage
        if not caps.max_requests:
            return lines
        allowed = max(0, caps.max_requests - usage.total.requests)
        if len(lines) > allowed:
            usage.count("capped", len(lines) - allowed)
        return lines[:allowed]

    async def _round(
        self,
        client: Any,
        key: str,
        lines: list[Line],
        problems: Sequence[Problem],
        places: Mapping[str, tuple[int, int]],
    ) -> dict[str, Outcome]:
        """Submit (or find again) this round's batch, wait for it, and read what finished."""
        entry = next((e for e in self.ledger.entries() if e["key"] == key and not e.get("cancelled")), None)
        if entry is None:
            batch_id = await self._control("submit the round's batch", lambda: self.wire.submit(client, lines, key=key))
            self.engine.usage.count("batches")
            self.engine.usage.count("requests", len(lines))
            entry = {
                "id": batch_id,
                "key": key,
                "submitted_at": time.time(),
                "cancelled": False,
                "requests": {
                    custom_id: [problems[places[custom_id][0]].id, places[custom_id][1]] for custom_id, _ in lines
                },
            }
            self.ledger.add(entry)  # before the first poll: a crash from here on finds it again
            log.info("%s: submitted batch %s with %d requests", self.label, batch_id, len(lines))
        else:
            log.info(
                "%s: this round's batch %s was submitted before a restart; waiting for it", self.label, entry["id"]
            )
        status = await self._wait(client, entry["id"])
        if status is None or not status.ended:
            return {}
        outcomes = await self._read(client, entry["id"], status)
        self.ledger.remove(entry["id"])
        return outcomes

    async def _wait(self, client: Any, batch_id: str) -> BatchStatus | None:
        """Poll until the batch ends or the round's wait is over; then cancel and wait a little more."""
        status = await self._poll(client, batch_id, self.clock() + self.wait_s)
        if status is not None and status.ended:
            return status
        done = f"{status.done} of {status.total}" if status is not None else "an unknown number"
        log.warning(
            "%s: batch %s has not ended within %.0f s (%s requests done); cancelling it and keeping what finished",
            self.label,
            batch_id,
            self.wait_s,
            done,
        )
        try:
            await self._control(f"cancel batch {batch_id}", lambda: self.wire.cancel(client, batch_id))
        except BackendError as exc:
            log.warning("%s: %s", self.label, exc)
        self.ledger.update(batch_id, cancelled=True)
        status = await self._poll(client, batch_id, self.clock() + self.cancel_wait_s)
        if status is None or not status.ended:
            log.warning(
                "%s: batch %s is still %s after %.0f s; a later round collects what it finishes (%s)",
                self.label,
                batch_id,
                status.status if status else "unreachable",
                self.cancel_wait_s,
                self.ledger.path,
            )
        return status

    async def _poll(self, client: Any, batch_id: str, until: float) -> BatchStatus | None:
        """The batch's status once it has ended, or its last one at ``until`` (None: unreachable)."""
        wait, status = self.poll_s, None
        while True:
            try:
                status = await self._control(
                    f"read the status of batch {batch_id}", lambda: self.wire.status(client, batch_id)
                )
            except BackendError as exc:
                log.warning("%s: %s", self.label, exc)
            if status is not None and status.refused:
                raise BackendError(
                    f"{self.label}: the provider refused batch {batch_id} ({status.refused}); check "
                    f"the model name and the sampling settings, or set inference.mode = 'realtime'"
                )
            if status is not None and status.ended:
                return status
            left = until - self.clock()
            if left <= 0:
                return status
            # Jitter: many contributors told the same round_seconds must not poll in the same second.
            await self.engine.sleep(min(left, wait * self.engine.rng.uniform(0.5, 1.0)))
            wait = min(self.poll_max_s, wait * 2)

    async def _read(self, client: Any, batch_id: str, status: BatchStatus) -> dict[str, Outcome]:
        outcomes = await self._control(
            f"read the results of batch {batch_id}", lambda: self.wire.results(client, batch_id)
        )
        for outcome in outcomes.values():
            if outcome.reply is not None:
                self.engine.usage.tokens(outcome.reply.prompt_tokens, outcome.reply.completion_tokens)
        failed = [o for o in outcomes.values() if o.reply is None and o.error not in ("canceled", "expired")]
        self.engine.usage.count("failed", len(failed))
        if outcomes and len(failed) == len(outcomes):
            raise self._all_failed(batch_id, failed[0])
        if failed:
            log.warning(
                "%s: %d request(s) of batch %s failed (%s); their problems are dropped",
                self.label,
                len(failed),
                batch_id,
                failed[0].error,
            )
        log.info(
            "%s: batch %s %s: %d of %d requests succeeded",
            self.label,
            batch_id,
            status.status,
            sum(o.reply is not None for o in outcomes.values()),
            len(outcomes),
        )
        return outcomes

    def _all_failed(self, batch_id: str, first: Outcome) -> BackendError:
        message = (
            f"{self.label}: every request of batch {batch_id} failed ({first.error}); check the model name "
            f"({self.api.model!r}: inference.model or --model), base_url and the sampling settings"
        )
        return BackendError(self._redacted(message))

    def _redacted(self, text: str) -> str:
        return text.replace(self.api.key, "<redacted>") if self.api.key else text

    def _fill(
        self,
        outcomes: Mapping[str, Outcome],
        places: Mapping[str, tuple[int, int]],
        slots: list[list[Completion | None]],
    ) -> None:
        for custom_id, outcome in outcomes.items():
            if custom_id not in places or outcome.reply is None or not outcome.reply.choices:
                continue  # not this round's (a provider's mix-up is dropped, never misattributed), or no answer
            index, replicate = places[custom_id]
            choice = outcome.reply.choices[0]
            slots[index][replicate] = Completion(
                text=choice.text,
                finish_reason=choice.finish_reason,  # type: ignore[arg-type]
                num_tokens=outcome.reply.completion_tokens,
                reasoning=choice.reasoning,
            )

    async def collect_late(self, client: Any, key: str) -> int:
        """Collect, once each, earlier rounds' batches that have ended; the completions collected.

        A batch not cancelled and not of this round's ``key`` was left running by a node stopped in
        an earlier round: that round is over, so it is cancelled now and collected like the others."""
        collected = 0
        for entry in self.ledger.entries():
            if entry["key"] == key and not entry.get("cancelled"):
                continue  # this round's own batch, found again after a restart
            if not entry.get("cancelled"):
                try:
                    await self._control(
                        f"cancel batch {entry['id']}", functools.partial(self.wire.cancel, client, entry["id"])
                    )
                except BackendError as exc:
                    log.warning("%s: %s", self.label, exc)
                self.ledger.update(entry["id"], cancelled=True)
            late = self.ledger.late_path(entry["id"])
            if late.exists():  # collected before a crash that kept the ledger from saying so
                self.ledger.remove(entry["id"])
                continue
            try:
                status = await self._control(
                    f"read the status of batch {entry['id']}", functools.partial(self.wire.status, client, entry["id"])
                )
                if not status.ended:
                    continue
                outcomes = await self._read(client, entry["id"], status)
            except BackendError as exc:
                log.warning("%s: batch %s of an earlier round stays pending: %s", self.label, entry["id"], exc)
                continue
            collected += self._store_late(entry, outcomes, late)
        return collected

    def _store_late(self, entry: Mapping[str, Any], outcomes: Mapping[str, Outcome], late: Path) -> int:
        rows = []
        for custom_id, outcome in outcomes.items():
            if outcome.reply is None or not outcome.reply.choices or custom_id not in entry["requests"]:
                continue
            problem_id, replicate = entry["requests"][custom_id]
            choice = outcome.reply.choices[0]
            rows.append(
                json.dumps(
                    {
                        "batch": entry["id"],
                        "custom_id": custom_id,
                        "problem": problem_id,
                        "replicate": replicate,
                        "text": choice.text,
                        "finish_reason": choice.finish_reason,
                        "reasoning": choice.reasoning,
                        "completion_tokens": outcome.reply.completion_tokens,
                    }
                )
            )
        _atomic_write(late, "".join(row + "\n" for row in rows))
        self.ledger.remove(entry["id"])
        self.engine.usage.count("late_completions", len(rows))
        log.info(
            "%s: batch %s of an earlier round ended; %d late completion(s) kept in %s (not trained on)",
            self.label,
            entry["id"],
            len(rows),
            late,
        )
        return len(rows)

    async def _control(self, what: str, call: Any) -> Any:
        """One batch-management call (upload, create, status, results, cancel), retried like a request."""
        attempt = 0
        while True:
            self.engine.usage.count("batch_calls")
            try:
                return await call()
            except Exception as exc:  # noqa: BLE001  classify() re-raises what is not an API failure
                failure = classify(exc, self.api.sdk)
            if not failure.retry:  # the realtime mode's message and hint (the key, the model, the settings)
                fatal = str(self.engine.fatal(failure)).replace(
                    f"{self.engine.label} refused the request", "the provider refused it"
                )
                raise BackendError(self._redacted(f"{self.label} could not {what}: {fatal}"))
            attempt += 1
            if attempt > self.engine.max_retries:
                raise BackendError(
                    self._redacted(
                        f"{self.label} could not {what} after {attempt} tries ({failure.what}); check that "
                        f"{self.api.base_url or self.api.provider.base_url} is reachable"
                    )
                )
            self.engine.usage.count("retries")
            await self.engine.sleep(self.engine.delay(attempt, failure))

    def round_metrics(self) -> Mapping[str, float]:
        metrics = self.engine.usage.drain()
        metrics["batches_pending"] = float(len(self.ledger.entries()))
        return metrics
