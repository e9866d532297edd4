"""Scoring rollouts: each reward function's scores, their weighted sum and group advantages (a
`Group`), and the round's metrics that describe them (``reward/*``, ``groups/*``, ``completions/*``,
``curriculum/*``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

from sapo_core.advantages import group_advantages
from sapo_core.config import Config
from sapo_core.curriculum import Curriculum, group_success
from sapo_core.interfaces import RewardFunction
from sapo_core.records import Completion, Group, Problem
from sapo_core.rewards import combine_rewards

log = logging.getLogger("sapo.node")

#: Each reward function's scores of one problem's completions.
Scores = dict[str, list[float]]


def reward_scores(rewards: Mapping[str, RewardFunction], problem: Problem, completions: Sequence[Completion]) -> Scores:
    """Each reward function's scores of one problem's completions (a broken one scores 0)."""
    return {name: checked_scores(name, reward, problem, completions) for name, reward in rewards.items()}


def checked_scores(
    name: str, reward: RewardFunction, problem: Problem, completions: Sequence[Completion]
) -> list[float]:
    """A reward function's scores, or zeros (logged) if it broke its contract."""
    try:
        scores = [float(s) for s in reward.score(problem, completions)]
    except Exception as exc:  # one broken reward must not lose the round's rollouts
        log.warning("reward %r failed on problem %s (%s: %s); scored 0", name, problem.id, type(exc).__name__, exc)
        return [0.0] * len(completions)
    if len(scores) != len(completions) or not all(math.isfinite(s) for s in scores):
        log.warning(
            "reward %r returned %d scores (finite: %s) for %d completions; scored 0",
            name,
            len(scores),
            all(math.isfinite(s) for s in scores),
            len(completions),
        )
        return [0.0] * len(completions)
    return scores


def make_group(
    config: Config,
    problem: Problem,
    completions: Sequence[Completion],
    per_function: Mapping[str, Sequence[float]],
    *,
    node: str,
) -> Group:
    """A `Group` from the reward functions' scores: their weighted sum (``rewards.weights``), and
    group advantages (gated by ``rewards.gate``, scaled as ``advantages.scale_by_std`` says)."""
    weights = {name: w for name, w in config.rewards.weights.items() if name in per_function}
    rewards = combine_rewards(per_function, weights)
    gate = per_function.get(config.rewards.gate) if config.rewards.gate else None
    advantages = group_advantages(rewards, scale_by_std=config.advantages.scale_by_std, gate=gate)
    return Group(problem=problem, completions=completions, rewards=rewards, advantages=advantages, node=node)


def score_batch(
    config: Config,
    rewards: Mapping[str, RewardFunction],
    problems: Sequence[Problem],
    outputs: Sequence[Sequence[Completion]],
    *,
    node: str,
) -> tuple[list[Group], list[Scores]]:
    """The groups of the problems that got all their completions, and each one's scores per reward."""
    n = config.inference.num_completions
    complete = [(p, c[:n]) for p, c in zip(problems, outputs) if len(c) >= n]
    scored = [reward_scores(rewards, p, c) for p, c in complete]
    return [make_group(config, p, c, parts, node=node) for (p, c), parts in zip(complete, scored)], scored


# --------------------------------------------------------------------------------- metrics


def batch_metrics(
    groups: Sequence[Group], scored: Sequence[Mapping[str, Sequence[float]]], tasks: Iterable[str]
) -> dict[str, float]:
    """What a batch of own groups says: `reward_metrics`, `function_metrics`, `completion_metrics`."""
    return {**reward_metrics(groups, tasks), **function_metrics(scored), **completion_metrics(groups)}


def reward_metrics(groups: Sequence[Group], tasks: Iterable[str]) -> dict[str, float]:
    """``reward/mean``, ``reward/max_group_mean``, ``groups/zero_variance``, ``groups/no_signal``,
    and ``reward/task/<task>``: the mean reward of each task's groups."""
    rewards = [r for group in groups for r in group.rewards]
    metrics = {
        "reward/mean": mean(rewards),
        "reward/max_group_mean": max((g.mean_reward for g in groups), default=0.0),
        "groups/zero_variance": sum(group.zero_variance for group in groups),
        "groups/no_signal": sum(group.no_signal for group in groups),
    }
    for task in tasks:
        of_task = [r for group in groups if group.problem.task == task for r in group.rewards]
        if of_task:
            metrics[f"reward/task/{task}"] = mean(of_task)
    return metrics


def function_metrics(scored: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, float]:
    """``reward/fn/<name>``: each reward function's mean score; ``reward/accuracy``: the fraction
    of completions with correctness 1.0 (when ``correctness`` is one of the rewards)."""
    from sapo_core.evaluation import CORRECT

    metrics: dict[str, float] = {}
    for name in dict.fromkeys(name for parts in scored for name in parts):
        values = [v for parts in scored for v in parts.get(name, ())]
        metrics[f"reward/fn/{name}"] = mean(values)
        if name == "correctness":
            metrics["reward/accuracy"] = mean([float(v >= CORRECT) for v in values])
    return metrics


def completion_metrics(groups: Sequence[Group]) -> dict[str, float]:
    """``completions/mean_tokens`` and ``completions/truncated`` (the fraction that hit max_new_tokens)."""
    completions = [c for group in groups for c in group.completions]
    tokens = [c.num_tokens for c in completions if c.num_tokens is not None]
    metrics = {"completions/truncated": mean([float(c.finish_reason == "length") for c in completions])}
    if tokens:
        metrics["completions/mean_tokens"] = mean(tokens)
    return metrics


def completion_tokens(outputs: Sequence[Sequence[Completion]]) -> list[int]:
    """The token count of every completion that reports one."""
    return [c.num_tokens for completions in outputs for c in completions if c.num_tokens is not None]


def follow_curriculum(
    curriculum: Curriculum, groups: Sequence[Group], scored: Sequence[Mapping[str, Sequence[float]]], gate: str
) -> dict[str, float]:
    """Tell the curriculum how this round's own groups did (success as ``rewards.gate`` ``gate``
    judges it); ``curriculum/<task>/level`` (this round's) and ``curriculum/<task>/success`` (this
    round's mean group success)."""
    successes: dict[str, list[float]] = {}
    for group, parts in zip(groups, scored):
        successes.setdefault(group.problem.task, []).append(group_success(parts, group.rewards, gate))
    metrics = {f"curriculum/{name}/level": float(level) for name, level in curriculum.levels.items()}
    for name, rates in successes.items():
        if name in curriculum.levels:
            metrics[f"curriculum/{name}/success"] = mean(rates)
    curriculum.observe(successes)
    return metrics


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
