"""The backends that sapo's own plugin distributions provide, by kind and name.

The core's defaults name some of them (``inference.backend = "local"`` and ``train.backend = "grpo"``
are sapo-local's), and a user who names one that is not installed should learn which distribution
to install rather than only that the name is unknown. `tests/test_plugins.py` checks this table
against what the installed distributions register.
"""

from __future__ import annotations

_BY_DISTRIBUTION = {
    "sapo-local": ["inference:local", "learner:grpo"],
    "sapo-openai": ["inference:openai", "inference:deepseek", "inference:anthropic", "reward:llm-judge"],
    "sapo-vllm": ["inference:vllm", "inference:sglang"],
    "sapo-gdrive": ["transport:gdrive", "transport:fs", "checkpointer:gdrive", "checkpointer:fs"],
}

#: (kind, name) -> the distribution that registers it.
FIRST_PARTY: dict[tuple[str, str], str] = {
    (kind, name): distribution
    for distribution, backends in _BY_DISTRIBUTION.items()
    for kind, name in (backend.split(":") for backend in backends)
}


def provider_of(kind: str, name: str) -> str | None:
    """The sapo distribution that provides the backend, or None for any other name."""
    return FIRST_PARTY.get((kind, name))
