"""The hosted APIs: what each one takes (n, seeds, sampling ranges) and how a request and its reply map.

Two wire formats cover the three providers: OpenAI's chat completions (OpenAI, Deepseek, and any
OpenAI-compatible server through ``base_url``) and Anthropic's Messages API. Each `API` builds one
request body for "k completions of these messages, starting at this seed", sends it through the
official SDK (with the SDK's own retries off: `sapo_openai.engine` retries, so it can count,
back off with jitter and honour Retry-After), and turns the reply into `Reply`.

The SDKs are imported when a backend is built, never at plugin import (``sapo plugins`` stays fast).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from sapo_core.interfaces import SamplingParams
from sapo_core.records import Message

log = logging.getLogger("sapo.openai")

# Seeds go out as 31-bit integers: OpenAI takes int64, but llama.cpp and other servers keep a uint32.
_SEED_MASK = (1 << 31) - 1


@attrs.frozen
class Provider:
    """One hosted API's facts."""

    name: str
    wire: str  # "chat" (OpenAI chat completions) or "messages" (Anthropic)
    base_url: str
    key_env: str
    has_n: bool  # honours `n` (several completions per request)
    has_seed: bool  # takes a per-request `seed`
    max_temperature: float
    has_batch: bool = False  # a batch endpoint at a discount (OpenAI's Batch API, Anthropic's Message Batches)


PROVIDERS: Mapping[str, Provider] = {
    "openai": Provider("openai", "chat", "https://api.openai.com/v1", "OPENAI_API_KEY", True, True, 2.0, True),
    # Deepseek's chat API takes neither `n` nor `seed` (api-docs.deepseek.com, "Create Chat Completion").
    "deepseek": Provider("deepseek", "chat", "https://api.deepseek.com", "DEEPSEEK_API_KEY", False, False, 2.0),
    "anthropic": Provider(
        "anthropic", "messages", "https://api.anthropic.com", "ANTHROPIC_API_KEY", False, False, 1.0, True
    ),
}


@attrs.frozen
class Choice:
    text: str
    finish_reason: str  # "stop", "length" or "error", as `sapo_core.records.Completion` has them
    reasoning: str | None = None  # a reasoning model's thinking, kept apart from the answer


@attrs.frozen
class Reply:
    choices: tuple[Choice, ...]
    prompt_tokens: int = 0
    completion_tokens: int = 0


class MalformedReply(ValueError):
    """A 2xx reply whose body is not the API's shape: retried like a server error."""


# OpenAI's finish reasons -> ours; content_filter cut the answer short for a reason that is not length.
_CHAT_FINISH = {
    "stop": "stop",
    "length": "length",
    "content_filter": "error",
    "tool_calls": "stop",
    "function_call": "stop",
    "eos": "stop",
}
# Anthropic's stop reasons -> ours.
_MESSAGES_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "stop",
    "pause_turn": "length",
    "refusal": "error",
    "model_context_window_exceeded": "length",
}


@attrs.define
class API:
    """Requests of one provider through its SDK: `body` builds them, `send` sends one, `sdk` classifies errors."""

    provider: Provider
    model: str
    base_url: str  # "" = the provider's
    key: str | None = attrs.field(repr=False)  # never in a repr, a log line or a traceback's locals dump
    max_tokens_param: str = "max_tokens"
    use_n: bool = True
    send_seed: bool = True
    extra_body: Mapping[str, Any] = attrs.field(factory=dict)
    timeout_s: float = 120.0
    max_connections: int = 16
    transport: Any = None  # an httpx2 transport to use instead of the network (tests at the SDK's transport level)
    http_backend: str = "auto"  # see `sapo_openai.settings.ConnectionSettings.http_backend`
    _warned: set[str] = attrs.field(factory=set, init=False)

    @property
    def sdk(self) -> Any:
        """The SDK module whose exception classes this API raises."""
        if self.provider.wire == "messages":
            import anthropic

            return anthropic
        import openai

        return openai

    @property
    def custom_server(self) -> bool:
        return bool(self.base_url) and self.base_url.rstrip("/") != self.provider.base_url.rstrip("/")

    @property
    def takes_n(self) -> bool:
        return self.use_n and (self.provider.has_n or (self.provider.wire == "chat" and self.custom_server))

    @property
    def takes_seed(self) -> bool:
        return self.send_seed and (self.provider.has_seed or (self.provider.wire == "chat" and self.custom_server))

    @property
    def uses_aiohttp(self) -> bool:
        if self.transport is not None or self.http_backend == "httpx":
            return False
        import importlib.util

        installed = importlib.util.find_spec("aiohttp") is not None
        if self.http_backend == "aiohttp" and not installed:
            from sapo_core.errors import BackendError

            raise BackendError(
                "http_backend = 'aiohttp' needs aiohttp: pip install 'sapo-openai[aiohttp]' "
                "(or set http_backend = 'httpx')"
            )
        return installed

    def client(self) -> Any:
        """A new async SDK client; one per event loop (`asyncio.run` call), closed by the caller."""
        sdk = self.sdk
        import httpx2

        limits = httpx2.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
        if self.uses_aiohttp:
            http = sdk.DefaultAioHttpClient(limits=limits)
        else:
            http = sdk.DefaultAsyncHttpxClient(limits=limits, transport=self.transport)
        kwargs: dict[str, Any] = {"max_retries": 0, "timeout": self.timeout_s, "http_client": http}
        kwargs["base_url"] = self.base_url or self.provider.base_url
        if self.provider.wire == "messages":
            return sdk.AsyncAnthropic(api_key=self.key or "", **kwargs)
        # A server of one's own may need no key; the SDK insists on a string.
        return sdk.AsyncOpenAI(api_key=self.key or "sapo-no-key", **kwargs)

    # ------------------------------------------------------------------------------ requests

    def body(self, messages: Sequence[Message], k: int, seed: int | None, params: SamplingParams) -> dict[str, Any]:
        """The request for ``k`` completions of ``messages``; ``seed`` None: send none."""
        if self.provider.wire == "messages":
            return self._messages_body(messages, params)
        return self._chat_body(messages, k, seed, params)

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s: %s", self.provider.name, message)

    def _temperature(self, params: SamplingParams) -> float:
        if params.temperature > self.provider.max_temperature:
            self._warn_once(
                "temperature",
                f"temperature {params.temperature} is above the API's maximum "
                f"{self.provider.max_temperature}; sending {self.provider.max_temperature}",
            )
            return self.provider.max_temperature
        return params.temperature

    def _chat_body(
        self, messages: Sequence[Message], k: int, seed: int | None, params: SamplingParams
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "temperature": self._temperature(params),
        }
        if params.top_p < 1.0:
            body["top_p"] = params.top_p
        param = self.max_tokens_param
        if param == "auto":  # api.openai.com deprecated max_tokens; other servers may know only it
            param = (
                "max_completion_tokens" if self.provider.name == "openai" and not self.custom_server else "max_tokens"
            )
        body[param] = params.max_new_tokens
        if k > 1:
            body["n"] = k
        if seed is not None:
            body["seed"] = seed & _SEED_MASK
        if params.stop:
            if len(params.stop) > 4:
                self._warn_once(
                    "stop", f"the API takes at most 4 stop strings; sending the first 4 of {len(params.stop)}"
                )
            body["stop"] = list(params.stop[:4])
        extra = dict(self.extra_body)
        if params.top_k > 0:
            if self.custom_server:  # vLLM, llama.cpp, SGLang take top_k; OpenAI and Deepseek do not
                extra.setdefault("top_k", params.top_k)
            else:
                self._warn_once("top_k", "the API has no top_k; inference.top_k is not sent")
        return {**body, **extra}

    def _messages_body(self, messages: Sequence[Message], params: SamplingParams) -> dict[str, Any]:
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in messages if m.role != "system"],
        }
        if system:
            body["system"] = system
        if params.stop:
            body["stop_sequences"] = list(params.stop)
        # anthropic>=1 dropped the sampling arguments from its signatures; the API still takes them on
        # models with sampling options, so they go in the body, and only when not the API's default
        # (1.0), since newer models refuse non-default values and temperature with top_p together.
        sampling: dict[str, Any] = {}
        temperature = self._temperature(params)
        if temperature != 1.0:
            sampling["temperature"] = temperature
        if params.top_p < 1.0:
            if "temperature" in sampling:
                self._warn_once("top_p", "the API refuses temperature and top_p together; top_p is not sent")
            else:
                sampling["top_p"] = params.top_p
        if params.top_k > 0:
            sampling["top_k"] = params.top_k
        return {**body, **self.extra_body, **sampling}

    async def send(self, client: Any, body: Mapping[str, Any]) -> Reply:
        """POST ``body`` through the SDK's client (its auth, headers, base URL and error classes), read JSON.

        The typed ``create`` methods are skipped: they transform every request and build a model
        of every reply, a third of the client's CPU per request at high concurrency, and their
        signatures lag the wire format (anthropic>=1 dropped ``temperature``).
        """
        import httpx2

        path = "/v1/messages" if self.provider.wire == "messages" else "/chat/completions"
        response = await client.post(path, body=dict(body), cast_to=httpx2.Response)
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            raise MalformedReply(f"a body that is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise MalformedReply("a body that is not a JSON object")
        return self.parse(data)

    def parse(self, data: Mapping[str, Any]) -> Reply:
        """A reply body of this API (a response, or one line of a batch's results) as `Reply`."""
        return _messages_reply(data) if self.provider.wire == "messages" else _chat_reply(data)


def _tokens(usage: Any, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and value >= 0 else 0


def _chat_reply(data: Mapping[str, Any]) -> Reply:
    choices = data.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise MalformedReply("a chat completion without a list of choices")
    out = []
    for choice in sorted(choices, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0):
        message = choice.get("message")
        if not isinstance(message, dict):
            raise MalformedReply("a choice without a message")
        text = message.get("content") or ""
        if not isinstance(text, str):
            raise MalformedReply("a message whose content is not text")
        # Deepseek's reasoner (and vLLM's reasoning parsers) send the thinking apart from the answer.
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        out.append(
            Choice(
                text=text,
                finish_reason=_CHAT_FINISH.get(choice.get("finish_reason") or "stop", "stop"),
                reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
            )
        )
    usage = data.get("usage")
    return Reply(tuple(out), _tokens(usage, "prompt_tokens"), _tokens(usage, "completion_tokens"))


def _messages_reply(data: Mapping[str, Any]) -> Reply:
    blocks = data.get("content")
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise MalformedReply("a message without a list of content blocks")
    text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
    thinking = "".join(b.get("thinking") or "" for b in blocks if b.get("type") == "thinking")
    finish = _MESSAGES_FINISH.get(data.get("stop_reason") or "end_turn", "stop")
    usage = data.get("usage")
    return Reply(
        (Choice(text=text, finish_reason=finish, reasoning=thinking or None),),
        _tokens(usage, "input_tokens"),
        _tokens(usage, "output_tokens"),
    )
