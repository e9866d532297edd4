"""A node's curriculum: each task's difficulty follows how well the model does on it.

GRPO learns only from groups whose completions score differently. On a task far beyond the
model every group scores 0, on one it has mastered every group scores 1: either way the
learner gets nothing. So each node keeps, per task, a level on the task's difficulty ladder
(`sapo_core.tasks.levels`) and the success rates of its own groups at that level (a group's
success is the share of its completions the verifier scores 1.0, partial credit aside). Once ``window`` groups have been seen at a
level, their mean decides: below ``band[0]`` the task moves one level down, above ``band[1]``
one level up, and the count starts again at the new level. Nothing else goes in, so the
levels are a pure function of the node's rollouts, which the seeds make reproducible.

Training draws problems at the current levels; the held-out evaluation stays at the levels the
configuration sets, so pass@1 is comparable across rounds and runs. A task without a ladder,
or whose settings are on no rung, keeps its configured settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sapo_core.interfaces import Task

log = logging.getLogger("sapo.curriculum")


def task_level(task: Task) -> int | None:
    """The task's level on its ladder, or None when it has none (or its settings are on no rung)."""
    level = getattr(task, "level", None)
    if not isinstance(level, int) or isinstance(level, bool) or not callable(getattr(task, "at_level", None)):
        return None
    return level


def task_variants(task: Task) -> dict[int, Task]:
    """The task at each level of its ladder that its other settings allow ({} without a ladder)."""
    if task_level(task) is None:
        return {}
    variants: dict[int, Task] = {}
    for level in range(1, int(getattr(task, "max_level", 0)) + 1):
        try:
            variants[level] = task.at_level(level)  # type: ignore[attr-defined]
        except ValueError:  # e.g. countdown's min_number above this rung's max_number
            continue
    return variants


class Curriculum:
    """The training levels of one node's tasks; see the module docstring."""

    def __init__(self, tasks: Mapping[str, Task], *, band: Sequence[float] = (0.2, 0.8), window: int = 8) -> None:
        low, high = band
        if not 0 <= low < high <= 1 or window < 1:
            raise ValueError(f"need 0 <= low < high <= 1 and window >= 1, got band {band}, window {window}")
        self.band, self.window = (float(low), float(high)), int(window)
        self._home = dict(tasks)
        self._variants = {name: task_variants(task) for name, task in tasks.items()}
        self.levels: dict[str, int] = {}
        for name, task in tasks.items():
            level = task_level(task)
            if level is not None and level in self._variants[name]:
                self.levels[name] = level
        self._seen: dict[str, list[float]] = {name: [] for name in self.levels}

    def tasks(self) -> dict[str, Task]:
        """Every task at its current training level (the configured task where it has no ladder)."""
        return {
            name: self._variants[name][self.levels[name]] if name in self.levels else task
            for name, task in self._home.items()
        }

    def observe(self, successes: Mapping[str, Sequence[float]]) -> dict[str, tuple[int, int]]:
        """Take this round's group success rates per task; return the tasks that moved: name -> (old, new)."""
        moved: dict[str, tuple[int, int]] = {}
        low, high = self.band
        for name, rates in successes.items():
            if name not in self.levels:
                continue
            seen = self._seen[name]
            seen.extend(float(rate) for rate in rates)
            if len(seen) < self.window:
                continue
            del seen[: len(seen) - self.window]
            rate, level = sum(seen) / len(seen), self.levels[name]
            available = self._variants[name]
            target = level + 1 if rate > high else level - 1 if rate < low else level
            if target != level and target in available:
                self.levels[name] = target
                seen.clear()
                moved[name] = (level, target)
                log.info(
                    "curriculum: %s level %d -> %d (success %.2f over %d groups, band %.2f-%.2f)",
                    name,
                    level,
                    target,
                    rate,
                    self.window,
                    low,
                    high,
                )
        return moved

    def state(self) -> dict[str, Any]:
        """JSON-ready state for a checkpoint."""
        return {"levels": dict(self.levels), "seen": {name: list(seen) for name, seen in self._seen.items()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take a `state` back (from a checkpoint); entries for other tasks or levels are ignored."""
        levels = state.get("levels", {}) if isinstance(state, Mapping) else {}
        seen = state.get("seen", {}) if isinstance(state, Mapping) else {}
        for name in self.levels:
            level = levels.get(name)
            if isinstance(level, int) and level in self._variants[name]:
                self.levels[name] = level
                rates = seen.get(name, [])
                self._seen[name] = [float(r) for r in rates if isinstance(r, (int, float))][-self.window :]


def group_success(per_function: Mapping[str, Sequence[float]], rewards: Sequence[float], verifier: str) -> float:
    """How well one group did: the share of completions its verifier scores 1.0, as pass@1 counts
    them (without a verifier, the mean total reward)."""
    scores = per_function.get(verifier) or per_function.get("correctness")
    if scores:
        # Partial credit is not success: a random 3-SAT assignment satisfies 7/8 of the clauses, and
        # counting that took sat to its top level, where nothing was ever solved (docs/benchmarks.md).
        return sum(score >= 1.0 for score in scores) / len(scores)
    return sum(rewards) / len(rewards) if rewards else 0.0
