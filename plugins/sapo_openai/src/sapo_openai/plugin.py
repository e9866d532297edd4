"""The entry point of sapo-openai (group ``sapo``): hosted-API inference backends and the ``llm-judge`` reward.

The SDKs (openai, anthropic) are imported when a run builds a backend, not here.
"""

from __future__ import annotations

from typing import Any

from sapo_core import hookimpl
from sapo_core.interfaces import BackendContext
from sapo_core.registry import Register
from sapo_openai.settings import APISettings, JudgeSettings


def _inference(provider: str) -> Any:
    def build(settings: APISettings, context: BackendContext) -> Any:
        from sapo_openai.inference import build_inference

        return build_inference(provider, settings, context)

    return build


def build_judge(settings: JudgeSettings, context: BackendContext) -> Any:
    from sapo_openai.judge import build_judge as build

    return build(settings, context)


@hookimpl
def register_inference(register: Register) -> None:
    register(
        "openai",
        _inference("openai"),
        settings=APISettings,
        description="OpenAI chat completions, or any OpenAI-compatible server (inference.base_url)",
    )
    register(
        "deepseek",
        _inference("deepseek"),
        settings=APISettings,
        description="Deepseek's API; a reasoning model's thinking is kept apart from its answer",
    )
    register("anthropic", _inference("anthropic"), settings=APISettings, description="Anthropic's Messages API")


@hookimpl
def register_rewards(register: Register) -> None:
    register(
        "llm-judge",
        build_judge,
        settings=JudgeSettings,
        description="A hosted model scores each completion against a rubric (rewards.llm-judge.*)",
    )
