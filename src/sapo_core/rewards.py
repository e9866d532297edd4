"""The built-in reward functions and how several rewards combine into one.

``correctness`` asks the problem's own task to verify the text in the completion's answer tags;
``format`` scores the answer format of `sapo_core.answers`. Both return finite floats in
[0, 1] and never raise: a verifier that raises scores 0.0 and is logged once per task.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence

import attrs

from sapo_core.answers import extract_answer, format_score
from sapo_core.interfaces import BackendContext, Task
from sapo_core.records import Completion, Problem

logger = logging.getLogger("sapo.rewards")


def clamp_reward(value: object) -> float:
    """A real number as a float in [0, 1]; anything else (a string, None, NaN, inf) is 0.0."""
    if not isinstance(value, numbers.Real):
        return 0.0
    try:
        reward = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return min(1.0, max(0.0, reward)) if math.isfinite(reward) else 0.0


@attrs.frozen
class CorrectnessSettings:
    """``rewards.correctness.*`` keys."""

    # "prefer": the answer tags' content, else the task's own reading of untagged text where it
    # has one (every built-in task: see Task.untagged_answer), which gives models too small to follow the tag
    # format yet a learning signal while the format reward teaches the tags.
    # "require": no tags, no reward.
    answer_tags: str = attrs.field(default="prefer", validator=attrs.validators.in_(("prefer", "require")))


class CorrectnessReward:
    """1.0 for a verified answer, partial credit as the task allows, 0.0 without an answer.

    The task is looked up by ``problem.task`` in ``context.tasks`` when scoring, so tasks the
    core adds to the context after building this reward are found. A problem whose task is
    not there scores 0.0 for every completion (a warning is logged once per task name).
    """

    def __init__(self, context: BackendContext, settings: CorrectnessSettings | None = None) -> None:
        self._context = context
        self._settings = settings or CorrectnessSettings()
        self._reported: set[str] = set()

    def score(self, problem: Problem, completions: Sequence[Completion]) -> list[float]:
        task = self._context.tasks.get(problem.task)
        if task is None:
            self._report_once(
                f"missing:{problem.task}",
                "No task %r is configured on this node: its completions score 0. Configured tasks: %s",
                problem.task,
                ", ".join(sorted(self._context.tasks)) or "(none)",
            )
            return [0.0] * len(completions)
        return [self._score_one(task, problem, completion) for completion in completions]

    def _score_one(self, task: Task, problem: Problem, completion: Completion) -> float:
        try:
            answer = extract_answer(completion.text)
            untagged = getattr(task, "untagged_answer", None)
            if answer is None and self._settings.answer_tags == "prefer" and untagged is not None:
                answer = untagged(completion.text)
            if answer is None:
                return 0.0
            return clamp_reward(task.verify(problem, answer))
        except Exception:
            # The Task contract says verify never raises; a broken one must not end the round.
            self._report_once(
                f"raised:{problem.task}",
                "The verifier of task %r raised; such completions score 0 (logged once)",
                problem.task,
                exc_info=True,
            )
            return 0.0

    def _report_once(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        if key not in self._reported:
            self._reported.add(key)
            logger.warning(message, *args, exc_info=exc_info)


class FormatReward:
    """`sapo_core.answers.format_score` of each completion's text."""

    def score(self, problem: Problem, completions: Sequence[Completion]) -> list[float]:
        return [clamp_reward(format_score(completion.text)) for completion in completions]


def combine_rewards(per_function: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> list[float]:
    """The weighted sum of several reward functions' scores, per completion.

    ``per_function`` maps each reward function's name to its scores of the same completions.
    A function without a weight counts with weight 1.0. A non-finite score counts as 0.0.
    Raises ValueError when the score lists differ in length, a weight names no scored
    function (a typo in the configuration), or a weight is not finite.
    """
    unknown = sorted(set(weights) - set(per_function))
    if unknown:
        raise ValueError(f"Weights given for reward functions that were not scored: {', '.join(unknown)}")
    lengths = {name: len(scores) for name, scores in per_function.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Reward functions scored different numbers of completions: {lengths}")
    total = [0.0] * next(iter(lengths.values()), 0)
    for name, scores in per_function.items():
        weight = float(weights.get(name, 1.0))
        if not math.isfinite(weight):
            raise ValueError(f"The weight of reward function {name!r} is not finite: {weight}")
        for i, score in enumerate(scores):
            score = float(score)
            total[i] += weight * score if math.isfinite(score) else 0.0
    return total
