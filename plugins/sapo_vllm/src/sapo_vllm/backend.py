"""The ``vllm`` and ``sglang`` inference backends: completions from OpenAI-compatible servers over httpx.

Each completion is one ``POST /v1/completions`` whose prompt is the token ids of the problem's
chat, rendered by the learner's own tokenizer and chat template, so the server continues exactly
the tokens the learner will score. One request per (problem, replicate) with ``n = 1`` and the
seed ``derive_seed(params.seed, problem.id, i)``: the same config gives the same rollouts on a
server that honours seeds, and a server that answers ``n > 1`` with fewer choices (llama.cpp)
cannot shorten a group. Requests run concurrently (``inference.concurrency`` per server), each
sent to the least busy server; the servers batch them (continuous batching).

Every completion keeps the sampled tokens' ids and log-probs (``logprobs = 1``): the ids from
vLLM's ``token_ids`` or its ``token_id:N`` tokens (``return_tokens_as_token_ids``), else the
text re-tokenised when that gives as many tokens as the server returned log-probs. The learner
uses them for the truncated importance-sampling correction (``train.importance_sampling``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from sapo_core.errors import BackendError
from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.keys import find_key
from sapo_core.records import Completion, Problem
from sapo_core.seeding import derive_seed
from sapo_core.throughput import TokenMeter
from sapo_vllm.local_policy import load_tokenizer, prompt_ids, shared_policy
from sapo_vllm.servers import Server, ServerPool
from sapo_vllm.settings import ServerSettings
from sapo_vllm.weightsync import ENGINES, WeightSync

log = logging.getLogger("sapo.vllm")


class RequestRefused(BackendError):
    """A server refused a request for a reason every request shares (4xx): no point going on."""


class ServerInference:
    """An `InferenceBackend` over one or more vLLM or SGLang servers, kept on-policy by `WeightSync`."""

    def __init__(self, engine: str, settings: ServerSettings, context: BackendContext) -> None:
        self.engine = ENGINES[engine]
        self.settings = settings
        self.context = context
        found = find_key(settings.api_key_env) if settings.api_key_env else None
        self.pool = ServerPool(settings.urls, api_key=found[0] if found else None)
        folder = Path(settings.sync_dir) if settings.sync_dir else Path(context.workdir) / "server-weights"
        self.sync = WeightSync(
            self.engine,
            self.pool,
            mode=settings.weight_sync,
            max_staleness=settings.max_staleness,
            folder=folder,
            keep=settings.keep_synced,
            timeout=settings.request_timeout,
        )
        self._ready = False
        self._tokenizer: Any = None
        self.meter = TokenMeter()
        self._failed = 0
        self._problem = "none"  # why the last failed request failed

    # ---------------------------------------------------------------------------- protocol

    def generate(self, problems: Sequence[Problem], n: int, params: SamplingParams) -> list[list[Completion]]:
        started = time.perf_counter()
        if not self._ready:
            self.pool.wait_ready(self.settings.startup_timeout)
            self._ready = True
        self.sync.before_generate(shared_policy(self.context))
        tokenizer = self.tokenizer()
        prompts = [prompt_ids(tokenizer, p) for p in problems]
        jobs = [(p, i) for p in range(len(problems)) for i in range(n)]
        results = asyncio.run(
            self._run([(prompts[p], derive_seed(params.seed, problems[p].id, i)) for p, i in jobs], params)
        )
        out: list[list[Completion]] = [[] for _ in problems]
        for (p, _), completion in zip(jobs, results):
            if completion is not None:
                out[p].append(completion)
        failed = sum(c is None for c in results)
        if jobs and failed == len(jobs):
            raise BackendError(
                f"none of the {len(jobs)} completion requests succeeded "
                f"({', '.join(s.url for s in self.pool.servers)}); the last answer: {self._problem}. "
                "Are the servers up, and do they take these request fields (inference.extra_body)?"
            )
        self._failed += failed
        self.meter.add(results, time.perf_counter() - started)
        return out

    def round_metrics(self) -> dict[str, float]:
        out = {**self.meter.read(), "failed_requests": float(self._failed)}
        self._failed = 0
        out.update(self.sync.metrics())
        out.update(self.pool.metrics())
        return out

    # ------------------------------------------------------------------------- tokenizer

    def tokenizer(self) -> Any:
        """The learner's tokenizer when this node trains (the ids must be its ids), else one loaded for the model."""
        policy = shared_policy(self.context)
        if policy is not None:
            return policy.tokenizer
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.context.model)
        return self._tokenizer

    # --------------------------------------------------------------------------- requests

    def body(self, prompt: Sequence[int], seed: int, params: SamplingParams) -> dict[str, Any]:
        """The /v1/completions request of one completion."""
        model = self.sync.adapter or self.settings.served_model or self.pool.servers[0].model
        body: dict[str, Any] = {
            "model": model,
            "prompt": list(prompt) if self.settings.prompt_format == "token_ids" else self.tokenizer().decode(prompt),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": seed % (2**31),  # servers take a 32-bit seed
            "n": 1,
            "logprobs": 1,
        }
        if params.top_k > 0:  # absent: no top-k, the default of vLLM and SGLang (their "off" values differ)
            body["top_k"] = params.top_k
        if params.stop:
            body["stop"] = list(params.stop)
        if self.engine.name == "vllm":
            body["return_tokens_as_token_ids"] = True
        if self.engine.name == "sglang" and self.sync.adapter:
            body["lora_path"] = self.sync.adapter
        body.update(self.settings.extra_body)
        return body

    async def _run(self, jobs: Sequence[tuple[Sequence[int], int]], params: SamplingParams) -> list[Completion | None]:
        limit = self.settings.concurrency * len(self.pool.servers)
        gate = asyncio.Semaphore(limit)
        limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        async with httpx.AsyncClient(
            headers=self.pool.headers, timeout=self.settings.request_timeout, limits=limits
        ) as client:

            async def one(prompt: Sequence[int], seed: int) -> Completion | None:
                async with gate:
                    return await self._request(client, self.body(prompt, seed, params))

            return list(await asyncio.gather(*(one(prompt, seed) for prompt, seed in jobs)))

    async def _request(self, client: httpx.AsyncClient, body: Mapping[str, Any]) -> Completion | None:
        problem = "no attempt"
        for attempt in range(self.settings.retries + 1):
            if attempt:
                await asyncio.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
            async with self.pool.slot() as server:
                try:
                    response = await client.post(f"{server.url}/v1/completions", json=body)
                except httpx.HTTPError as exc:
                    server.failures += 1
                    problem = f"{server.url}: {type(exc).__name__}: {exc}"
                    continue
                if response.status_code >= 500:
                    server.failures += 1
                    problem = f"{server.url}: {response.status_code} {response.text[:200]!r}"
                    continue
                if response.status_code != 200:
                    self._refused(server, response)
                try:
                    return self.parse(response.json())
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    server.failures += 1
                    problem = f"{server.url}: not an OpenAI completion ({type(exc).__name__}: {exc})"
        self._problem = problem
        log.warning("a completion failed after %d attempts: %s", self.settings.retries + 1, problem)
        return None

    def _refused(self, server: Server, response: httpx.Response) -> None:
        if response.status_code in (401, 403):
            raise RequestRefused(
                f"{server.url} refused the API key ({response.status_code}): set the variable named "
                f"by inference.api_key_env ({self.settings.api_key_env}) to the server's --api-key"
            )
        raise RequestRefused(
            f"{server.url} refused a completion request ({response.status_code}): "
            f"{response.text[:500]!r}. Check inference.served_model and inference.extra_body."
        )

    def parse(self, data: Mapping[str, Any]) -> Completion:
        """One choice of a /v1/completions answer as a Completion with its tokens' ids and log-probs."""
        choice = data["choices"][0]
        text = str(choice.get("text") or "")
        reason = choice.get("finish_reason")
        finish = reason if reason in ("stop", "length") else "error"
        info = choice.get("logprobs") or {}
        tokens = list(info.get("tokens") or [])
        logprobs = [float(v) if v is not None else math.nan for v in (info.get("token_logprobs") or [])]
        ids = choice.get("token_ids")  # vLLM >= 0.10.2 with return_token_ids
        if ids is None and tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            ids = [int(t.removeprefix("token_id:")) for t in tokens]
        if ids is None and logprobs:
            ids = self._retokenised(text, finish, len(logprobs))
        if logprobs and not all(math.isfinite(v) for v in logprobs):
            logprobs = []  # a log-prob the server could not give makes the whole sequence unusable for IS
        usage = data.get("usage") or {}
        count = len(ids) if ids is not None else int(usage.get("completion_tokens") or len(logprobs) or 0)
        return Completion(
            text=text,
            finish_reason=finish,
            num_tokens=count,
            token_ids=tuple(int(i) for i in ids) if ids is not None else None,
            logprobs=tuple(logprobs) if logprobs and ids is not None and len(ids) == len(logprobs) else None,
        )

    def _retokenised(self, text: str, finish: str, count: int) -> list[int] | None:
        """The text's ids under the learner's tokenizer (EOS appended on a stop), if they match the server's count."""
        tokenizer = self.tokenizer()
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if finish == "stop" and tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
        return ids if len(ids) == count else None
