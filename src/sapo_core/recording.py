"""What a node keeps of its run: the evaluations, the metrics files of the run directory, its
``config.json``, and the checkpoints it saves and resumes from.

The run directory (`sapo_core.rundir` names its files): ``config.json``; ``metrics.jsonl``, a line a
round (``"round": -1`` for the evaluation before training); ``metrics/train_iter_<round>.json`` and,
when the round evaluated, ``metrics/eval_iter_<round>.json`` (``metrics/eval_start.json`` for the
baseline), each evaluated problem included.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sapo_core import __version__, rundir
from sapo_core.checkpoints import keeps_optimizer_state, write_learner_state
from sapo_core.config import Config
from sapo_core.curriculum import Curriculum
from sapo_core.errors import StopRun
from sapo_core.evaluation import Evaluator, ProblemResult
from sapo_core.interfaces import (
    BackendContext,
    Checkpointer,
    InferenceBackend,
    Learner,
    RewardFunction,
    SamplingParams,
    Task,
)
from sapo_core.records import Completion, Problem
from sapo_core.rewards import CorrectnessReward, FormatReward
from sapo_core.rollouts import Timer
from sapo_core.scoring import Scores, checked_scores, reward_scores

log = logging.getLogger("sapo.node")

#: The curriculum's state in a checkpoint folder, beside the learner's files.
CURRICULUM_FILE = "curriculum.json"


# ------------------------------------------------------------------------------ evaluation


def eval_due(round: int, *, every: int, rounds: int) -> bool:
    """Whether ``round`` ends with an evaluation: every ``eval.every`` rounds (0: never) and after the last."""
    if every == 0:
        return False
    return (round + 1) % every == 0 or round == rounds - 1


def new_evaluator(
    config: Config,
    inference: InferenceBackend,
    rewards: Mapping[str, RewardFunction],
    tasks: Mapping[str, Task],
    context: BackendContext,
) -> Evaluator:
    """The held-out evaluation (`sapo_core.evaluation`), scored with the node's rewards and, for
    pass@1 and eval/format, correctness and format even when they are not weighted."""
    extra: dict[str, RewardFunction] = {}
    if "correctness" not in rewards:
        extra["correctness"] = CorrectnessReward(context)
    if "format" not in rewards:
        extra["format"] = FormatReward()

    def score(problem: Problem, completions: Sequence[Completion]) -> Scores:
        scores = reward_scores(rewards, problem, completions)
        scores.update({n: checked_scores(n, r, problem, completions) for n, r in extra.items()})
        return scores

    settings = config.inference
    return Evaluator.build(
        config.eval,
        inference=inference,
        score=score,
        weights=config.rewards.weights,
        tasks=tasks,
        names=config.tasks.names,
        base=SamplingParams(top_p=settings.top_p, top_k=settings.top_k, max_new_tokens=settings.max_new_tokens),
    )


def evaluation(
    evaluate: Callable[[], tuple[dict[str, float], list[ProblemResult]]],
    backend: Any,
    timer: Timer,
) -> tuple[dict[str, Any], list[ProblemResult] | None, StopRun | None]:
    """``evaluate()``, timed as ``eval``: its metrics, results, and the stop a backend asked for (then
    no results). The metrics end with the evaluation ``backend``'s numbers since the round's were
    read, ``eval/inference/*``: they must not count in the next round's ``inference/*``."""
    metrics: dict[str, Any] = {}
    results: list[ProblemResult] | None = None
    stop: StopRun | None = None
    try:
        with timer.phase("eval"):
            evaluated, results = evaluate()
        metrics.update(evaluated)
    except StopRun as exc:
        stop = exc
    metrics.update(drained(backend, "eval/inference/"))
    return metrics, results, stop


def backend_metrics(
    inference: Any, learner: Any, transport: Any, rewards: Mapping[str, RewardFunction]
) -> dict[str, Any]:
    """Each backend's ``round_metrics()`` since the last read, under its kind (a reward's, e.g. a
    judge's requests, under ``reward/<name>/``)."""
    backends: dict[str, Any] = {"inference": inference, "learner": learner, "transport": transport}
    backends.update({f"reward/{name}": reward for name, reward in rewards.items()})
    metrics: dict[str, Any] = {}
    for kind, backend in backends.items():
        metrics.update(drained(backend, f"{kind}/"))
    return metrics


def close_backends(*backends: Any) -> None:
    """Call ``close()`` on each backend that has one (None and those without are skipped)."""
    for backend in backends:
        close = getattr(backend, "close", None)
        if callable(close):
            close()


def drained(backend: Any, prefix: str) -> dict[str, Any]:
    """A backend's ``round_metrics()`` since they were last read (none if it has none), each key prefixed."""
    drain = getattr(backend, "round_metrics", None)
    if not callable(drain):
        return {}
    return {f"{prefix}{key}": value for key, value in drain().items()}


# ------------------------------------------------------------------------- run directory


def append_metrics(workdir: Path, metrics: Mapping[str, Any]) -> None:
    """One line of ``metrics.jsonl``."""
    with open(workdir / rundir.METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(metrics, sort_keys=True, default=str) + "\n")


def write_baseline(workdir: Path, metrics: Mapping[str, Any], results: Sequence[ProblemResult]) -> None:
    """The evaluation before training: its ``metrics.jsonl`` line and ``metrics/eval_start.json``."""
    append_metrics(workdir, metrics)
    rundir.write_json(
        workdir / rundir.METRICS_DIR / "eval_start.json",
        {**metrics, "problems": [result.to_data() for result in results]},
    )
    pass_at_1, reward = metrics.get("eval/pass@1", 0.0), metrics.get("eval/reward_mean", 0.0)
    log.info("%s: before training: pass@1 %.3f, reward %.3f", metrics.get("node"), pass_at_1, reward)


def write_round(workdir: Path, round: int, metrics: Mapping[str, Any], results: Sequence[ProblemResult] | None) -> None:
    """Append the round's line to ``metrics.jsonl``; write ``metrics/train_iter_<round>.json``
    (the round's metrics without eval/*) and, when it evaluated, ``metrics/eval_iter_<round>.json``."""
    append_metrics(workdir, metrics)
    common = {key: metrics[key] for key in ("round", "node", "time") if key in metrics}
    train = {key: value for key, value in metrics.items() if not key.startswith(("eval/", "time/eval"))}
    rundir.write_json(rundir.iter_file(workdir, "train", round), train)
    if results is not None:
        evaluated = {key: value for key, value in metrics.items() if key.startswith("eval/") or key == "time/eval"}
        problems = [result.to_data() for result in results]
        rundir.write_json(rundir.iter_file(workdir, "eval", round), {**common, **evaluated, "problems": problems})


def write_config(workdir: Path, config: Config, *, node: str) -> None:
    """``config.json`` in the run directory: the resolved configuration, secrets redacted.

    A resumed run whose settings changed logs the differences and stores the new ones.
    """
    path = workdir / rundir.CONFIG_FILE
    data = config.to_dict(redact=True)
    data["run"]["dir"] = str(workdir)
    if path.is_file():
        try:
            changes = rundir.config_changes(json.loads(path.read_text(encoding="utf-8")), data)
        except (OSError, ValueError, AttributeError):
            changes = []
        if changes:
            log.info("%s: settings changed since %s was written: %s", node, path, "; ".join(changes))
    rundir.write_json(path, data)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_due(round: int, *, every: int, rounds: int) -> bool:
    """Whether a checkpoint follows ``round``: every ``checkpoint.every`` rounds and after the last."""
    return (round + 1) % every == 0 or round == rounds - 1


def saves_optimizer_state(config: Config, round: int) -> bool:
    """Whether a checkpoint holding the optimizer's state follows ``round`` (a sharded optimizer is gathered for it)."""
    last = round == config.run.rounds - 1
    return checkpoint_due(round, every=config.checkpoint.every, rounds=config.run.rounds) and keeps_optimizer_state(
        config.checkpoint.optimizer_state, last_round=last
    )


def checkpoint_if_due(
    checkpointer: Checkpointer,
    round: int,
    config: Config,
    learner: Learner,
    curriculum: Curriculum | None,
    *,
    node: str,
    timer: Timer,
) -> None:
    """`save_checkpoint` after every ``checkpoint.every`` rounds and the last, timed as ``checkpoint``."""
    if checkpoint_due(round, every=config.checkpoint.every, rounds=config.run.rounds):
        with timer.phase("checkpoint"):
            save_checkpoint(checkpointer, round, config, learner=learner, curriculum=curriculum, node=node)


def save_checkpoint(
    checkpointer: Checkpointer,
    round: int,
    config: Config,
    *,
    learner: Learner | None,
    curriculum: Curriculum | None,
    node: str,
) -> None:
    """Save the learner's state and the curriculum's as the checkpoint of ``round``, with the
    optimizer's state as ``checkpoint.optimizer_state`` says."""
    last = round == config.run.rounds - 1
    optimizer = keeps_optimizer_state(config.checkpoint.optimizer_state, last_round=last)
    if not optimizer and config.checkpoint.optimizer_state == "newest":
        log.info(
            "%s: the checkpoint after the last round holds no optimizer state: a --resume with more "
            "rounds restarts the optimizer (checkpoint.optimizer_state=all keeps it)",
            node,
        )

    def write(folder: Path) -> None:
        if learner is not None:
            write_learner_state(learner, folder, optimizer=optimizer)
        if curriculum is not None:
            rundir.write_json(folder / CURRICULUM_FILE, curriculum.state())

    checkpointer.save(round, write, {"round": round, "sapo_core": __version__})


def restore_checkpoint(
    checkpointer: Checkpointer, *, learner: Learner | None, curriculum: Curriculum | None, node: str
) -> int:
    """Load the newest complete checkpoint into the learner and the curriculum; return its round
    (-1 when there is none)."""
    with tempfile.TemporaryDirectory(prefix="sapo-resume-") as tmp:
        info = checkpointer.restore(Path(tmp))
        if info is None:
            log.info("%s: no checkpoint to resume from; starting at round 0", node)
            return -1
        if learner is not None:
            learner.load(Path(tmp))
        saved = Path(tmp) / CURRICULUM_FILE
        if curriculum is not None and saved.is_file():
            curriculum.restore(json.loads(saved.read_text(encoding="utf-8")))
    log.info("%s: resumed from the checkpoint of round %d (%s)", node, info.round, info.location)
    return info.round
