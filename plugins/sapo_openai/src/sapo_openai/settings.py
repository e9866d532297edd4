"""Settings of sapo-openai's backends: attrs classes filled from the config, importable without the SDKs.

`ConnectionSettings` is how to reach a hosted API and how hard to try; the inference backends
(``inference.*``, or ``eval.*`` with ``eval.inference``) add how completions are asked for, the
``llm-judge`` reward (``rewards.llm-judge.*``) adds its provider and rubric.
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs.validators import ge, gt, in_

PROVIDER_NAMES = ("openai", "deepseek", "anthropic")
MAX_TOKENS_PARAMS = ("auto", "max_tokens", "max_completion_tokens")
HTTP_BACKENDS = ("auto", "aiohttp", "httpx")
INFERENCE_MODES = ("realtime", "batch")


def _optional_price(instance: Any, attribute: Any, value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError("must be >= 0 (dollars per million tokens)", attribute)


@attrs.frozen
class ConnectionSettings:
    """Reaching the API, retrying, and the run's usage caps (0: no cap)."""

    model: str = ""  # the API's model name; "": model.name
    base_url: str = ""  # "": the provider's; any OpenAI-compatible server (vLLM, llama.cpp, ...) works with `openai`
    # Environment variable (or `sapo keys` name) holding the key; "": the provider's (OPENAI_API_KEY ...).
    # With a base_url of your own and no key set, requests go without one (local servers).
    api_key_env: str = ""
    max_in_flight: int = attrs.field(default=16, validator=ge(1))  # requests at once, retries included
    timeout_s: float = attrs.field(default=120.0, validator=gt(0))  # per request
    max_retries: int = attrs.field(default=6, validator=ge(0))  # on 408/409/429/5xx, timeouts, resets, bad bodies
    backoff_s: float = attrs.field(default=0.5, validator=ge(0))  # the first retry's wait; doubles, full jitter
    backoff_max_s: float = attrs.field(default=30.0, validator=ge(0))  # the longest wait between tries
    retry_after_max_s: float = attrs.field(
        default=120.0, validator=ge(0)
    )  # a server's Retry-After is honoured up to this
    max_requests: int = attrs.field(default=0, validator=ge(0))  # per run, tries included
    max_total_tokens: int = attrs.field(default=0, validator=ge(0))  # prompt + completion tokens per run
    max_dollars: float = attrs.field(default=0.0, validator=ge(0))  # estimated cost per run (needs a known price)
    price_input: float | None = attrs.field(default=None, validator=_optional_price)  # $ per million prompt tokens
    price_output: float | None = attrs.field(default=None, validator=_optional_price)  # $ per million completion tokens
    extra_body: dict[str, Any] = attrs.field(factory=dict)  # more JSON fields for every request (top_k, grammar, ...)
    # The SDK's HTTP client: "aiohttp" (the SDKs' own aiohttp option; less CPU per request at high
    # concurrency, needs `pip install 'sapo-openai[aiohttp]'`), "httpx", or "auto": aiohttp when installed.
    http_backend: str = attrs.field(default="auto", validator=in_(HTTP_BACKENDS))


@attrs.frozen
class APISettings(ConnectionSettings):
    """Keys of the ``openai``, ``deepseek`` and ``anthropic`` inference backends."""

    use_n: bool = True  # ask for G completions in one request where the API has `n` (missing ones are asked again)
    send_seed: bool = True  # a per-request seed where the API takes one (OpenAI and compatible servers)
    # "auto": max_completion_tokens for api.openai.com, max_tokens elsewhere (older servers know only that one).
    max_tokens_param: str = attrs.field(default="auto", validator=in_(MAX_TOKENS_PARAMS))
    # "batch": one OpenAI Batch / Anthropic Message Batch per round, at half the price, for rounds
    # long enough to wait for it (docs/batch.md); "realtime": one request per completion, now.
    mode: str = attrs.field(default="realtime", validator=in_(INFERENCE_MODES))
    # Seconds a round waits for its batch before cancelling it and keeping what finished; 0: auto,
    # 0.8 x swarm.round_seconds - batch_cancel_wait_s in a swarm, 24 h (the providers' window) offline.
    batch_wait_s: float = attrs.field(default=0.0, validator=ge(0))
    batch_cancel_wait_s: float = attrs.field(default=60.0, validator=ge(0))  # after a cancel, for the batch to end
    batch_poll_s: float = attrs.field(default=5.0, validator=gt(0))  # the first status poll's wait; doubles, jittered
    batch_poll_max_s: float = attrs.field(default=60.0, validator=gt(0))  # the longest wait between polls


DEFAULT_RUBRIC = (
    "Judge whether the response answers the problem correctly and clearly. A correct final answer with "
    "sound reasoning earns the full score; a wrong or missing answer earns 0; partial credit for partly "
    "correct work."
)


@attrs.frozen
class JudgeSettings(ConnectionSettings):
    """Keys of the ``llm-judge`` reward (``rewards.llm-judge.*``)."""

    provider: str = attrs.field(default="openai", validator=in_(PROVIDER_NAMES))  # which API judges
    rubric: str = DEFAULT_RUBRIC  # what a good response is; part of the cache key
    scale: int = attrs.field(default=10, validator=ge(1))  # the judge scores 0..scale; the reward is score / scale
    reply_limit: int = attrs.field(default=256, validator=ge(1))  # the judge's reply length cap, in tokens
    max_chars: int = attrs.field(
        default=8000, validator=ge(1)
    )  # a longer completion is cut (head and tail) before judging
    max_in_flight: int = attrs.field(default=8, validator=ge(1))
