"""Evaluation on held-out problems: mean reward and pass@1, overall and per task.

The held-out set is fixed for an experiment: ``eval.problems`` problems split evenly (round
robin) over ``tasks.names``, the k-th of task ``t`` generated from
``derive_seed(eval.seed, "eval", t, k)``. It depends on neither the node, the round nor
``run.seed``, so every evaluation of every run (every seed of a sweep, every node of a swarm)
scores the same problems, and its seeds come from a namespace that training's
``derive_seed(run.seed, node, round, i)`` never produces. (A task with a tiny problem space
can still *generate* a training problem with the same text; the ids always differ.)

Each problem gets ``eval.num_completions`` (k) completions at ``eval.temperature`` (0: greedy)
from the node's inference backend, scored by the node's reward functions. pass@1 of a problem
is the fraction of its k completions whose ``correctness`` score is 1.0 (the unbiased pass@1
estimate from k samples); the reported pass@1 is its mean over problems. With k > 1,
``eval/pass@<k>`` is the fraction of problems with at least one correct completion.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from sapo_core.config import EvalSettings
from sapo_core.contracts import checked_generation
from sapo_core.interfaces import InferenceBackend, SamplingParams, Task
from sapo_core.records import Completion, Problem
from sapo_core.rewards import combine_rewards
from sapo_core.sampling import generate_or_skip
from sapo_core.seeding import derive_seed

log = logging.getLogger("sapo.eval")

#: A correctness score counts as correct from here (1.0, allowing float noise).
CORRECT = 1.0 - 1e-9


def eval_problems(tasks: Mapping[str, Task], names: Sequence[str], count: int, *, seed: int) -> list[Problem]:
    """The held-out problems: ``count`` of them, round robin over ``names``.

    The k-th problem of task ``t`` comes from ``derive_seed(seed, "eval", t, k)``, so a task's
    held-out problems do not change when other tasks join the mix.
    """
    per_task = dict.fromkeys(names, 0)
    problems = []
    for index in range(count):
        name = names[index % len(names)]
        problem = generate_or_skip(tasks[name], name, derive_seed(seed, "eval", name, per_task[name]))
        per_task[name] += 1
        if problem is not None:
            problems.append(problem)
    return problems


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from ``n`` samples of which ``c`` are correct (Chen et al. 2021).

    ``1 - C(n-c, k) / C(n, k)``; pass@1 is ``c / n``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_1(correctness: Sequence[Sequence[float]]) -> float:
    """Mean over problems of the fraction of a problem's completions with correctness 1.0.

    ``correctness`` holds one list of scores per problem (problems without completions are
    skipped); 0.0 when there is none.
    """
    fractions = [sum(score >= CORRECT for score in scores) / len(scores) for scores in correctness if scores]
    return sum(fractions) / len(fractions) if fractions else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@attrs.frozen
class ProblemResult:
    """One held-out problem's completions and their scores."""

    problem: Problem
    completions: tuple[Completion, ...]
    rewards: tuple[float, ...]  # the combined reward, as in training
    scores: Mapping[str, Sequence[float]]  # per reward function, correctness and format always included

    @property
    def correct(self) -> int:
        return sum(score >= CORRECT for score in self.scores.get("correctness", ()))

    def to_data(self) -> dict[str, Any]:
        n = len(self.completions)
        return {
            "id": self.problem.id,
            "task": self.problem.task,
            "answer": self.problem.answer,
            "pass@1": self.correct / n if n else 0.0,
            "rewards": list(self.rewards),
            "scores": {name: list(values) for name, values in self.scores.items()},
            "completions": [
                {"text": c.text, "finish_reason": c.finish_reason, "num_tokens": c.num_tokens} for c in self.completions
            ],
        }


def summarize(results: Sequence[ProblemResult], *, k: int, dropped: int = 0) -> dict[str, float]:
    """The ``eval/*`` metrics of one evaluation."""
    metrics: dict[str, float] = {
        "eval/problems": len(results),
        "eval/dropped_problems": dropped,
        "eval/reward_mean": _mean([_mean(r.rewards) for r in results]),
        "eval/pass@1": pass_at_1([r.scores.get("correctness", ()) for r in results]),
        "eval/format": _mean([_mean(r.scores.get("format", ())) for r in results]),
    }
    if k > 1:
        metrics[f"eval/pass@{k}"] = _mean([pass_at_k(len(r.completions), r.correct, k) for r in results])
    completions = [c for r in results for c in r.completions]
    if completions:
        metrics["eval/truncated"] = sum(c.finish_reason == "length" for c in completions) / len(completions)
        tokens = [c.num_tokens for c in completions if c.num_tokens is not None]
        if tokens:
            metrics["eval/mean_tokens"] = _mean(tokens)
    for task in dict.fromkeys(r.problem.task for r in results):
        of_task = [r for r in results if r.problem.task == task]
        metrics[f"eval/reward_mean/{task}"] = _mean([_mean(r.rewards) for r in of_task])
        metrics[f"eval/pass@1/{task}"] = pass_at_1([r.scores.get("correctness", ()) for r in of_task])
    return metrics


#: Scores a problem's completions with every reward function: name -> one score per completion.
ScoreFunctions = Callable[[Problem, Sequence[Completion]], Mapping[str, Sequence[float]]]


@attrs.define
class Evaluator:
    """Runs evaluations of one node on its fixed held-out problems.

    ``score`` gives every reward function's scores of a problem's completions and must include
    ``correctness`` and ``format`` (the node adds the built-in ones when the config does not
    weigh them); ``weights`` are ``rewards.weights``: the combined reward counts only the
    functions named there, as training does.
    """

    settings: EvalSettings
    inference: InferenceBackend
    score: ScoreFunctions
    weights: Mapping[str, float]
    problems: list[Problem]
    params: SamplingParams

    @classmethod
    def build(
        cls,
        settings: EvalSettings,
        *,
        inference: InferenceBackend,
        score: ScoreFunctions,
        weights: Mapping[str, float],
        tasks: Mapping[str, Task],
        names: Sequence[str],
        base: SamplingParams,
    ) -> Evaluator:
        if settings.temperature == 0 and settings.num_completions > 1:
            log.warning(
                "eval.temperature is 0 (greedy): the %d completions per problem will be the same; "
                "set eval.temperature > 0 or eval.num_completions = 1",
                settings.num_completions,
            )
        params = attrs.evolve(
            base, temperature=settings.temperature, seed=derive_seed(settings.seed, "eval", "sampling")
        )
        problems = eval_problems(tasks, list(names), settings.problems, seed=settings.seed)
        return cls(
            settings=settings, inference=inference, score=score, weights=dict(weights), problems=problems, params=params
        )

    def evaluate(self) -> tuple[dict[str, float], list[ProblemResult]]:
        """Generate, score, summarise: the ``eval/*`` metrics and each problem's result."""
        k = self.settings.num_completions
        outputs = checked_generation(
            "the inference backend (evaluation)",
            self.problems,
            k,
            self.inference.generate(self.problems, k, self.params),
        )
        results, dropped = [], 0
        for problem, generated in zip(self.problems, outputs):
            completions = tuple(generated[:k])
            if not completions:  # a failed request: left out of the means, counted
                dropped += 1
                continue
            scores = {name: list(values) for name, values in self.score(problem, completions).items()}
            weighted = {name: values for name, values in scores.items() if name in self.weights}
            rewards = combine_rewards(weighted, {n: w for n, w in self.weights.items() if n in weighted})
            results.append(
                ProblemResult(problem=problem, completions=completions, rewards=tuple(rewards), scores=scores)
            )
        return summarize(results, k=k, dropped=dropped), results
