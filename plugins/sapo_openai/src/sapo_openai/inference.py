"""The ``openai``, ``deepseek`` and ``anthropic`` inference backends: G completions per problem over HTTP.

Each `generate` call runs one event loop: every problem's requests go out at once, bounded by
``max_in_flight``. Where the API has ``n``, a problem's G completions are one request; a server
that returns fewer choices than asked (many ignore ``n``) gets the missing ones asked again,
one request each, in parallel, and later problems go straight to one request per completion.

Seeds: the request covering replicates ``i .. i+k-1`` of a problem carries
``derive_seed(params.seed, problem.id, i)``, so a server that honours seeds gives the same
rollouts for the same config, whether it honours ``n`` or not. Deepseek and Anthropic take no
seed: their rollouts are not reproducible (the contract's ``deterministic=False``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.keys import find_key
from sapo_core.records import Completion, Problem
from sapo_core.seeding import derive_seed
from sapo_openai.engine import Engine, run_all
from sapo_openai.providers import API, PROVIDERS, Choice, Provider
from sapo_openai.settings import APISettings, ConnectionSettings
from sapo_openai.usage import Usage

log = logging.getLogger("sapo.openai")


def connect(
    provider: Provider,
    settings: ConnectionSettings,
    model: str,
    *,
    label: str,
    where: str,
    transport: Any = None,
    **api_options: Any,
) -> tuple[API, Engine]:
    """The `API` and `Engine` of ``settings`` (the judge's too); `BackendError` when its key is missing."""
    from sapo_core.errors import BackendError

    if not model:
        raise BackendError(f"{label} needs a model name: set {where}.model (or --model)")
    key_env = settings.api_key_env or provider.key_env
    found = find_key(key_env)
    if found is None and not (settings.base_url and settings.base_url.rstrip("/") != provider.base_url.rstrip("/")):
        raise BackendError(
            f"{label} needs an API key and none is set: export {key_env}=... or run `sapo keys set {key_env}`"
        )
    key, source = found if found is not None else (None, "")
    api = API(
        provider=provider,
        model=model,
        base_url=settings.base_url,
        key=key,
        extra_body=dict(settings.extra_body),
        timeout_s=settings.timeout_s,
        max_connections=settings.max_in_flight,
        transport=transport,
        http_backend=settings.http_backend,
        **api_options,
    )
    usage = Usage.build(
        model,
        price_input=settings.price_input,
        price_output=settings.price_output,
        max_requests=settings.max_requests,
        max_tokens=settings.max_total_tokens,
        max_dollars=settings.max_dollars,
        where=where,
    )
    engine = Engine(
        api=api,
        usage=usage,
        max_in_flight=settings.max_in_flight,
        max_retries=settings.max_retries,
        backoff_s=settings.backoff_s,
        backoff_max_s=settings.backoff_max_s,
        retry_after_max_s=settings.retry_after_max_s,
        label=label,
        key_source=source,
    )
    return api, engine


def _completion(choice: Choice, tokens: int | None) -> Completion:
    return Completion(
        text=choice.text, finish_reason=choice.finish_reason, num_tokens=tokens, reasoning=choice.reasoning
    )  # type: ignore[arg-type]


@attrs.define
class APIInference:
    """An `InferenceBackend` over a hosted API (see the module's documentation)."""

    api: API
    engine: Engine
    #: False once a server returned fewer choices than `n` asked for: ask one completion per request.
    n_honoured: bool = True

    def generate(self, problems: Sequence[Problem], n: int, params: SamplingParams) -> list[list[Completion]]:
        self.engine.refuse_when_capped()
        return asyncio.run(self._generate(problems, n, params))

    async def _generate(self, problems: Sequence[Problem], n: int, params: SamplingParams) -> list[list[Completion]]:
        slots: list[list[Completion | None]] = [[None] * n for _ in problems]
        client = self.api.client()
        try:
            await run_all(
                [self._problem(client, problem, n, params, slots[index]) for index, problem in enumerate(problems)]
            )
        finally:
            await client.close()
        if problems and all(c is None for got in slots for c in got) and self.engine.usage.cap_reached() is None:
            # Nothing at all came back, and not for a usage cap (the next call stops the run for that):
            # a run going on would train on nothing and still exit 0.
            raise self.engine.nothing_came_back(len(problems))
        out = []
        for got in slots:
            # Every completion received is returned, in replicate order; a short list (the contract)
            # tells the node this problem failed.
            done = [c for c in got if c is not None]
            if len(done) < n:
                self.engine.usage.count("problems_failed")
            out.append(done)
        return out

    async def _problem(
        self, client: Any, problem: Problem, n: int, params: SamplingParams, slots: list[Completion | None]
    ) -> None:
        if n > 1 and self.api.takes_n and self.n_honoured:
            await self._fill(client, problem, 0, n, params, slots)
        else:
            await asyncio.gather(*(self._fill(client, problem, i, 1, params, slots) for i in range(n)))

    async def _fill(
        self, client: Any, problem: Problem, start: int, k: int, params: SamplingParams, slots: list[Completion | None]
    ) -> None:
        """Replicates ``start .. start+k-1`` of ``problem``: one request, then one each for what it lacked."""
        seed = derive_seed(params.seed, problem.id, start) if self.api.takes_seed else None
        reply = await self.engine.call(client, self.api.body(problem.messages, k, seed, params), about=problem.id)
        if reply is None:
            return
        got = reply.choices[:k]
        for offset, choice in enumerate(got):
            # Usage is per request: a token count per completion only when the request had one.
            slots[start + offset] = _completion(choice, reply.completion_tokens if len(reply.choices) == 1 else None)
        if len(got) < k:
            if k > 1 and self.n_honoured:
                self.n_honoured = False
                log.info(
                    "%s: the server answered n=%d with %d choice(s); asking one completion per request",
                    self.engine.label,
                    k,
                    len(got),
                )
            missing = range(start + len(got), start + k)
            if len(got) == 0 and k == 1:
                return  # an empty reply to a single completion: counted as a short problem, not asked forever
            await asyncio.gather(*(self._fill(client, problem, i, 1, params, slots) for i in missing))

    def round_metrics(self) -> Mapping[str, float]:
        metrics = self.engine.usage.drain()
        metrics["n_honoured"] = float(self.n_honoured)
        return metrics


def build_inference(
    provider_name: str,
    settings: APISettings,
    context: BackendContext,
    *,
    where: str = "inference",
    transport: Any = None,
) -> Any:
    """The realtime backend (`APIInference`), or with ``mode = "batch"`` the batch one (`sapo_openai.batch`)."""
    from sapo_core.errors import ConfigError

    provider = PROVIDERS[provider_name]
    if settings.mode == "batch" and not provider.has_batch:
        raise ConfigError(
            f"{where}.mode = 'batch': {provider_name}'s API has no batch endpoint (OpenAI and Anthropic "
            f"have); set {where}.mode = 'realtime' or use another provider"
        )
    model = settings.model or context.model
    api, engine = connect(
        provider,
        settings,
        model,
        label=f"inference backend {provider_name!r}",
        where=where,
        transport=transport,
        max_tokens_param=settings.max_tokens_param,
        use_n=settings.use_n,
        send_seed=settings.send_seed,
    )
    if settings.mode == "batch":
        return _batch_backend(api, engine, settings, context, where)
    return APIInference(api=api, engine=engine)


def _batch_backend(api: API, engine: Engine, settings: APISettings, context: BackendContext, where: str) -> Any:
    from sapo_openai.batch import BatchInference, Ledger, wait_seconds
    from sapo_openai.batch_wire import batches_of

    engine.usage.batch = True  # the batch price, and the batch_* metrics
    return BatchInference(
        api=api,
        engine=engine,
        ledger=Ledger(context.workdir / "batches", f"{where}-{api.provider.name}"),
        wire=batches_of(api, context.node),
        wait_s=wait_seconds(settings, context),
        cancel_wait_s=settings.batch_cancel_wait_s,
        poll_s=settings.batch_poll_s,
        poll_max_s=settings.batch_poll_max_s,
    )
