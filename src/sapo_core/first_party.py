"""The backends that sapo's own plugin distributions provide, by kind and name.

The core's defaults name some of them (``inference.backend = "local"`` and ``train.backend = "grpo"``
are sapo-local's), and a user who names one that is not installed should learn which distribution
to install rather than only that the name is unknown. `tests/test_plugins.py` checks this table
against what the installed distributions register.
"""

from __future__ import annotations

#: (kind, name) -> the distribution that registers it.
FIRST_PARTY: dict[tuple[str, str], str] = {
    ("inference", "local"): "sapo-local",
    ("learner", "grpo"): "sapo-local",
    ("inference", "openai"): "sapo-openai",
    ("inference", "deepseek"): "sapo-openai",
    ("inference", "anthropic"): "sapo-openai",
    ("reward", "llm-judge"): "sapo-openai",
    ("inference", "vllm"): "sapo-vllm",
    ("inference", "sglang"): "sapo-vllm",
    ("transport", "gdrive"): "sapo-gdrive",
    ("transport", "fs"): "sapo-gdrive",
    ("checkpointer", "gdrive"): "sapo-gdrive",
    ("checkpointer", "fs"): "sapo-gdrive",
}


def provider_of(kind: str, name: str) -> str | None:
    """The sapo distribution that provides the backend, or None for any other name."""
    return FIRST_PARTY.get((kind, name))
