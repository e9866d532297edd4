"""``inference.*`` keys of the ``vllm`` and ``sglang`` backends (torch-free: `sapo plugins` reads them)."""

from __future__ import annotations

from typing import Any

import attrs

WEIGHT_SYNC = ("auto", "lora", "full", "none")


def _urls(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",")]
    return tuple(str(url).strip().rstrip("/") for url in value if str(url).strip())


def _check_urls(instance: Any, attribute: Any, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("needs at least one server URL, e.g. http://127.0.0.1:8000", attribute)
    for url in value:
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"{url!r} is not an http(s) URL; give the server's base URL, e.g. http://127.0.0.1:8000", attribute
            )


@attrs.frozen
class ServerSettings:
    """How to reach the generation servers, and how to keep them on-policy."""

    # One or more OpenAI-compatible servers; requests go to the least busy.
    urls: tuple[str, ...] = attrs.field(default=("http://127.0.0.1:8000",), converter=_urls, validator=_check_urls)
    served_model: str = ""  # the server's model name; "" = the first one its /v1/models lists
    # The environment variable holding the servers' API key (vLLM's and SGLang's --api-key); unset = none.
    api_key_env: str = "VLLM_API_KEY"
    startup_timeout: float = attrs.field(default=600.0, validator=attrs.validators.gt(0))  # seconds to wait for health
    request_timeout: float = attrs.field(default=600.0, validator=attrs.validators.gt(0))  # seconds per completion
    concurrency: int = attrs.field(default=64, validator=attrs.validators.ge(1))  # requests in flight per server
    retries: int = attrs.field(default=2, validator=attrs.validators.ge(0))  # per request, on a connection error or 5xx
    # Engine-specific request fields, sent as they are (e.g. llama.cpp's {repeat_penalty = 1.0}).
    extra_body: dict[str, Any] = attrs.field(factory=dict, converter=dict)
    # "token_ids": the prompt as the learner's token ids (vLLM, SGLang); "text": those ids decoded,
    # for a server whose completions API takes text only (llama.cpp's Python server).
    prompt_format: str = attrs.field(default="token_ids", validator=attrs.validators.in_(("token_ids", "text")))
    # Weight sync after learner steps: "lora" hot-loads the adapter, "full" reloads all weights from
    # sync_dir, "auto" picks by whether the learner trains LoRA, "none" never (a frozen server).
    weight_sync: str = attrs.field(default="auto", validator=attrs.validators.in_(WEIGHT_SYNC))
    max_staleness: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # learner steps the server may lag
    sync_dir: str = ""  # a folder the servers can read; "" = <run dir>/server-weights
    keep_synced: int = attrs.field(default=2, validator=attrs.validators.ge(1))  # exported weight versions kept on disk
