"""A round's rollouts: drawing a batch (sample problems, generate, score), DAPO's dynamic sampling
of more batches, and the learner's step on the training set; and `Timer`, the round's phases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from sapo_core.config import Config
from sapo_core.contracts import checked_generation
from sapo_core.interfaces import InferenceBackend, Learner, SamplingParams, Task
from sapo_core.records import Completion, Group, Problem
from sapo_core.sampling import sample_problems, training_set
from sapo_core.scoring import Scores, completion_tokens
from sapo_core.seeding import derive_seed

log = logging.getLogger("sapo.node")


@attrs.define
class Timer:
    """Wall time per phase of a round; ``on_phase(name)`` is told when a phase starts (progress)."""

    seconds: dict[str, float] = attrs.field(factory=dict)
    on_phase: Callable[[str], None] | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.on_phase is not None:
            self.on_phase(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@attrs.frozen
class Batch:
    """One batch of a round: its problems, their completions, and the groups of the problems that
    got all their completions with each one's scores per reward (`sapo_core.scoring.score_batch`)."""

    problems: list[Problem]
    outputs: list[list[Completion]]
    groups: list[Group]
    scored: list[Scores]


def generate(
    config: Config,
    inference: InferenceBackend,
    tasks: Mapping[str, Task],
    *,
    node: str,
    round: int,
    attempt: int = 0,
    label: str,
) -> tuple[list[Problem], list[list[Completion]]]:
    """The round's problems (batch ``attempt``: 0, then dynamic sampling's), drawn from ``tasks``,
    and their completions; ``label`` names the backend in errors (`sapo_core.contracts`)."""
    problems = sample_problems(
        tasks,
        config.tasks.weights,
        config.tasks.problems_per_round,
        seed=config.run.seed,
        node=node,
        round=round,
        attempt=attempt,
    )
    params = SamplingParams(
        temperature=config.inference.temperature,
        top_p=config.inference.top_p,
        top_k=config.inference.top_k,
        max_new_tokens=config.inference.max_new_tokens,
        seed=derive_seed(config.run.seed, node, round, "sampling", *([attempt] if attempt else [])),
    )
    n = config.inference.num_completions
    return problems, checked_generation(label, problems, n, inference.generate(problems, n, params))


def resample(
    config: Config,
    local: Sequence[Group],
    draw: Callable[[int], Batch],
) -> tuple[list[Group], list[int], dict[str, int]]:
    """DAPO's dynamic sampling: while fewer than problems_per_round own groups have a learning
    signal, up to ``tasks.resample`` more batches of new problems (``draw(attempt)``). The groups
    with a signal they add (up to that count in all), the tokens generated for them, and
    ``inference/extra_batches`` and ``groups/resampled``."""
    wanted = config.tasks.problems_per_round - sum(not group.no_signal for group in local)
    extra: list[Group] = []
    tokens: list[int] = []
    batches = 0
    while wanted > 0 and batches < config.tasks.resample:
        batches += 1
        batch = draw(batches)
        useful = [group for group in batch.groups if not group.no_signal][:wanted]
        extra += useful
        wanted -= len(useful)
        tokens += completion_tokens(batch.outputs)
    return extra, tokens, {"inference/extra_batches": batches, "groups/resampled": len(extra)}


def learn(
    learner: Learner,
    config: Config,
    local: Sequence[Group],
    external: Sequence[Group],
    *,
    node: str,
    round: int,
    shared: bool,
    timer: Timer,
) -> dict[str, Any]:
    """The learner's step on the round's training set (`sapo_core.sampling.training_set`; ``shared``:
    in a swarm): ``groups/trained_local``, ``groups/trained_external`` and the learner's ``train/*``."""
    chosen = training_set(
        local,
        external,
        local_count=config.swarm.local_groups if shared else None,
        external_count=config.swarm.external_groups,
        seed=config.run.seed,
        node=node,
        round=round,
    )
    own = sum(1 for group in chosen if group.node == node)
    metrics: dict[str, Any] = {"groups/trained_local": own, "groups/trained_external": len(chosen) - own}
    if chosen:
        with timer.phase("train"):
            learned = learner.train(chosen, round)
        metrics.update({f"train/{key}": value for key, value in learned.items()})
    else:
        log.info("%s: round %d has no group with a learning signal; no learner step", node, round)
    return metrics
