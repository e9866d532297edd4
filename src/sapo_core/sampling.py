"""Which problems a node works on, and which groups it trains on (SAPO's I local + J external)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence

from sapo_core.interfaces import Task
from sapo_core.records import Group, Problem
from sapo_core.seeding import derive_seed

log = logging.getLogger("sapo.tasks")


def sample_problems(
    tasks: Mapping[str, Task],
    weights: Sequence[float],
    count: int,
    *,
    seed: int,
    node: str,
    round: int,
    attempt: int = 0,
) -> list[Problem]:
    """``count`` problems from the task mix, a pure function of (seed, node, round, attempt).

    Nodes draw different problems (the node is part of the seed) and a node that re-runs a
    round (after a crash) draws the same ones again. ``attempt`` > 0 is a further batch of the
    same round (dynamic sampling), with problems of its own.
    """
    names = list(tasks)
    extra = ("resample", attempt) if attempt else ()
    rng = random.Random(derive_seed(seed, node, round, "problems", *extra))
    picks = rng.choices(names, weights=list(weights) or None, k=count)
    drawn = (
        generate_or_skip(tasks[name], name, derive_seed(seed, node, round, *extra, index))
        for index, name in enumerate(picks)
    )
    return [problem for problem in drawn if problem is not None]


def generate_or_skip(task: Task, name: str, seed: int) -> Problem | None:
    """``task.generate(seed)``, or None with a warning when the task's generator raises for that seed
    (a third-party generator can fail on some draws; the round goes on with one problem fewer)."""
    try:
        return task.generate(seed)
    except Exception as exc:
        log.warning(
            "task %r could not generate the problem of seed %d, skipped: %s: %s", name, seed, type(exc).__name__, exc
        )
        return None


def select_groups(groups: Sequence[Group], count: int, rng: random.Random) -> list[Group]:
    """Up to ``count`` groups, uniformly, after dropping those with no learning signal.

    A group with all-zero advantages (equal rewards, or a verifier that cannot tell its
    completions apart) contributes no policy gradient, so it would only dilute the batch (the
    SAPO paper filters zero-variance groups the same way).
    """
    useful = [group for group in groups if not group.no_signal]
    if count >= len(useful):
        return useful
    return rng.sample(useful, count)


def training_set(
    local: Sequence[Group],
    external: Sequence[Group],
    *,
    local_count: int | None,
    external_count: int,
    seed: int,
    node: str,
    round: int,
) -> list[Group]:
    """SAPO's training set: ``local_count`` own groups (None: all) and ``external_count`` peers'."""
    rng = random.Random(derive_seed(seed, node, round, "training-set"))
    own = select_groups(local, len(local) if local_count is None else local_count, rng)
    return own + select_groups(external, external_count, rng)
