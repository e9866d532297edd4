"""Built-in plugin: the ``correctness`` and ``format`` reward functions of `sapo_core.rewards`."""

from __future__ import annotations

from sapo_core import hookimpl
from sapo_core.interfaces import BackendContext
from sapo_core.registry import Register
from sapo_core.rewards import CorrectnessReward, CorrectnessSettings, FormatReward


def correctness_reward(settings: CorrectnessSettings | None, context: BackendContext) -> CorrectnessReward:
    return CorrectnessReward(context, settings)


def format_reward(settings: None, context: BackendContext) -> FormatReward:
    return FormatReward()


@hookimpl
def register_rewards(register: Register) -> None:
    register(
        "correctness",
        correctness_reward,
        settings=CorrectnessSettings,
        description="The problem's own verifier on the text in <answer></answer>, or on the task's reading of "
        "untagged text (rewards.correctness.answer_tags)",
    )
    register(
        "format",
        format_reward,
        description="1 for an optional <think> block then one <answer> block, 0.5 for a stray answer block, else 0.",
    )
