"""One node of a swarm (or the offline loop): build its backends from the config, run its rounds.

A worker's or contributor's round, `Node.step` then `Node.finish_round`:

1. read the swarm state (round, deadline) from the transport;
2. sample B problems from the task mix, deterministically from (seed, node, round);
3. generate G completions each through the inference backend;
4. score them with the reward functions and compute group advantages;
5. publish its groups; collect peers' groups until the round advances or its deadline passes;
6. build the training set: I local + J external groups, external ones re-scored here;
7. learner step (workers only);
8. every ``eval.every`` rounds and after the last: evaluate on the held-out problems;
9. a checkpoint every K rounds and after the last; the round's metrics to the run directory
   (docs/offline.md, "The run directory" and "What each round reports").

A coordinator only owns the round state: it advances when a quorum of live nodes has
published or the deadline passes, whichever comes first (`sapo_core.coordinator`).

The helpers live in modules named for their concept; read them in this order:

* `sapo_core.building`: the node's role, its run directory and a backend for every stage;
* `sapo_core.rollouts`: a batch drawn (problems, completions, scores), dynamic sampling, the learner's step;
* `sapo_core.scoring`: rewards, groups and advantages, and the metrics that describe them;
* `sapo_core.peers`: the settings a swarm shares, its round, waiting for and taking in peers' groups;
* `sapo_core.recording`: evaluations, the run directory's metrics files, ``config.json``, checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from sapo_core import peers, recording, rollouts
from sapo_core.building import backend_label, build_backends, process_rank
from sapo_core.config import Config
from sapo_core.coordinator import Coordinator, standing_by
from sapo_core.curriculum import Curriculum
from sapo_core.errors import SapoError, StopRun
from sapo_core.evaluation import Evaluator, ProblemResult
from sapo_core.interfaces import (
    BackendContext,
    Checkpointer,
    InferenceBackend,
    Learner,
    RewardFunction,
    Task,
    Transport,
)
from sapo_core.peers import check_compatible, round_payload, swarm_settings, take_in
from sapo_core.plugins import Plugins
from sapo_core.records import Completion, Group, Problem
from sapo_core.rollouts import Batch, Timer
from sapo_core.scoring import (
    batch_metrics,
    completion_tokens,
    follow_curriculum,
    make_group,
    reward_scores,
    score_batch,
)

__all__ = ["Node", "Timer", "process_rank"]

log = logging.getLogger("sapo.node")


@attrs.define
class Node:
    """A node's backends and the loop that drives them. Build one with `Node.from_config`."""

    config: Config
    plugins: Plugins
    context: BackendContext
    tasks: dict[str, Task]
    rewards: dict[str, RewardFunction]
    transport: Transport
    inference: InferenceBackend | None = None
    #: The evaluation's own backend (``eval.inference``); None: evaluate with `inference`.
    eval_inference: InferenceBackend | None = None
    learner: Learner | None = None
    checkpointer: Checkpointer | None = None
    #: A worker's stand-by coordinator (``swarm.standby``), run alongside its rounds.
    standby: Coordinator | None = None
    #: The training difficulty of each task (``tasks.curriculum``); None: always as configured.
    curriculum: Curriculum | None = None
    sleep: Callable[[float], None] = time.sleep
    last_metrics: dict[str, Any] = attrs.field(factory=dict)
    #: How the progress display names this node (default: its node id).
    label: str = ""
    #: Told when a phase of a round starts (set by `work` to the progress display's).
    on_phase: Callable[[str], None] | None = None
    _evaluator: Evaluator | None = attrs.field(default=None, init=False, repr=False)
    _levels: dict[str, list[Task]] = attrs.field(factory=dict, init=False, repr=False)  # each task at every level
    _stop: StopRun | None = attrs.field(default=None, init=False, repr=False)  # asked for in an evaluation
    _last_beat: tuple[int, float] | None = attrs.field(default=None, init=False, repr=False)  # (round, monotonic)

    @classmethod
    def from_config(cls, config: Config, plugins: Plugins) -> Node:
        """The node the config describes, its backends built (`sapo_core.building.build_backends`)."""
        return cls(config=config, plugins=plugins, **build_backends(config, plugins))

    def close(self) -> None:
        backends = (self.inference, self.eval_inference, self.learner, self.checkpointer, self.transport)
        recording.close_backends(*backends, *self.rewards.values())

    # ----------------------------------------------------------------------- running

    def run(self) -> dict[str, Any]:
        """Run this node's rounds (up to `run.rounds`); return the last round's metrics."""
        self.join()
        self.plugins.notify("run_started", context=self.context)
        try:
            if self.context.role == "coordinator":
                self.coordinate()
            else:
                with standing_by(self.standby):
                    self.work()
        finally:
            self.plugins.notify("run_finished", context=self.context, metrics=self.last_metrics)
            self.close()
        return self.last_metrics

    @property
    def is_main_process(self) -> bool:
        """False in the other processes of a distributed learner (``accelerate launch``).

        Every process runs the same loop on the same rollouts (the seeds make them identical) and
        the learner shares the training out; only the main process writes (the run directory,
        metrics, checkpoints, payloads, heartbeats) and evaluates, unless `eval_collective`.
        """
        return process_rank() == 0

    @property
    def eval_collective(self) -> bool:
        """Whether every process evaluates, as a ``collective`` backend needs (the local one shards its
        rows); otherwise the main process evaluates alone, so that a paid API is not asked N times."""
        return bool(getattr(self.eval_inference or self.inference, "collective", False))

    def join(self) -> None:
        """Check this node's settings against the swarm's and announce it (idempotent)."""
        self.context.workdir.mkdir(parents=True, exist_ok=True)
        if not self.is_main_process:
            return
        recording.write_config(self.context.workdir, self.config, node=self.context.node)
        check_compatible(swarm_settings(self.config), self.transport.ensure_settings(swarm_settings(self.config)))
        self.transport.heartbeat(peers.node_info(self.context))

    def work(self) -> None:
        """The worker/contributor loop."""
        node, swarm = self.context.node, self.config.swarm
        if self.is_main_process:
            log.info("%s: run directory %s", node, self.context.workdir)
        done = self.resume() if self.config.run.resume else -1
        evaluates = self.is_main_process or self.eval_collective
        if done == -1 and self.config.eval.at_start and self.inference is not None and evaluates:
            try:
                self.evaluate_baseline()
            except StopRun as exc:
                log.warning("%s: %s; the run ends before round 0", node, exc)
                return
        from sapo_core.progress import run_progress  # rich is imported only when running

        label = self.label or node
        with run_progress(self.config.run.rounds, done + 1, label=label, quiet=not self.is_main_process) as progress:
            self.on_phase = progress.phase
            try:
                while True:
                    # The swarm's current round: a node that fell behind jumps ahead.
                    round = peers.next_round(self.transport, swarm, done, node=node, beat=self.beat, sleep=self.sleep)
                    if round >= self.config.run.rounds:
                        break
                    try:
                        metrics = self.step(round)
                    except StopRun as exc:
                        log.warning("%s: %s; the run ends before round %d", node, exc, round)
                        break
                    self.finish_round(round, metrics)
                    progress.round_done(round, metrics)
                    done = round
                    if self._stop is not None:
                        log.warning("%s: %s; the run ends after round %d", node, self._stop, round)
                        break
            finally:
                self.on_phase = None

    def beat(self, round: int) -> None:
        """Heartbeat (from the main process only): at once for a new round, else at most once a
        ``swarm.poll_seconds``. Waits poll faster than that at first (`sapo_core.polling`), and on
        shared storage each heartbeat is a write (an upload on Drive, several requests on S3)."""
        if not self.is_main_process:
            return
        now = time.monotonic()
        last = self._last_beat
        if last is not None and last[0] == round and now - last[1] < self.config.swarm.poll_seconds:
            return
        self.transport.heartbeat(peers.node_info(self.context, round))
        self._last_beat = (round, now)

    # ------------------------------------------------------------------------- a round

    def step(self, round: int) -> dict[str, Any]:
        """One round: generate, score, share, train. Returns its metrics."""
        if self.inference is None:
            raise SapoError(f"role {self.context.role!r} does not generate")
        timer = Timer(on_phase=self.on_phase)
        start = time.perf_counter()
        metrics: dict[str, Any] = {"round": round, "node": self.context.node, "time": time.time()}
        batch = self.draw(round, timer)
        local = batch.groups
        metrics["inference/dropped_problems"] = len(batch.problems) - len(local)
        tokens = completion_tokens([group.completions for group in local])
        # Reward, completion and curriculum metrics describe the first batch: the model's own draw.
        metrics.update(batch_metrics(local, batch.scored, self.tasks))
        if self.curriculum is not None:
            metrics.update(follow_curriculum(self.curriculum, local, batch.scored, self.config.rewards.gate))
        # Dynamic sampling tops up what this node trains on: a contributor (often an API billed per
        # token) trains on nothing, so it publishes its one batch.
        if self.config.tasks.resample and self.learner is not None:
            extra, extra_tokens, resampled = rollouts.resample(self.config, local, lambda a: self.draw(round, timer, a))
            metrics.update(resampled)
            local, tokens = local + extra, tokens + extra_tokens
        if tokens and timer.seconds.get("generate"):
            # A backend's own round_metrics() with these keys, merged below, takes precedence.
            metrics["inference/tokens"] = sum(tokens)
            metrics["inference/tokens_per_second"] = sum(tokens) / timer.seconds["generate"]

        external: list[Group] = []
        if self.transport.shared:
            with timer.phase("share"):
                external, shared = self.share(round, local)
            metrics.update(shared)
        metrics["groups/local"] = len(local)
        metrics["groups/external_available"] = len(external)
        if self.learner is not None:
            metrics.update(
                rollouts.learn(
                    self.learner,
                    self.config,
                    local,
                    external,
                    node=self.context.node,
                    round=round,
                    shared=self.transport.shared,
                    timer=timer,
                )
            )
        metrics.update(recording.backend_metrics(self.inference, self.learner, self.transport, self.rewards))
        metrics.update({f"time/{name}": value for name, value in timer.seconds.items()})
        metrics["time/round"] = time.perf_counter() - start
        return metrics

    def draw(self, round: int, timer: Timer, attempt: int = 0) -> Batch:
        """Batch ``attempt`` of the round (0, then dynamic sampling's): generated, then scored."""
        assert self.inference is not None
        tasks = self.curriculum.tasks() if self.curriculum is not None else self.tasks
        label = backend_label(self.plugins, "inference", self.config.inference.backend)
        with timer.phase("generate"):
            problems, outputs = rollouts.generate(
                self.config, self.inference, tasks, node=self.context.node, round=round, attempt=attempt, label=label
            )
        with timer.phase("score"):
            groups, scored = score_batch(self.config, self.rewards, problems, outputs, node=self.context.node)
        return Batch(problems, outputs, groups, scored)

    def score(self, problem: Problem, completions: Sequence[Completion], *, node: str) -> Group:
        """Score one problem's completions with this node's rewards: a `Group` with advantages."""
        return make_group(
            self.config, problem, completions, reward_scores(self.rewards, problem, completions), node=node
        )

    def share(self, round: int, local: Sequence[Group]) -> tuple[list[Group], dict[str, int]]:
        """Publish our groups, wait for peers (bounded); their groups re-scored here, and what was
        collected and refused (``payloads/*``, ``groups/external_*``)."""
        if self.is_main_process:
            self.transport.publish(round_payload(self.context, round, local))
        self.wait_for_peers(round)
        collected = self.transport.collect(round)
        return take_in(
            collected,
            round,
            node=self.context.node,
            tasks=self.tasks,
            levels=self._levels,
            rescore=lambda problem, completions, peer: self.score(problem, completions, node=peer),
        )

    def wait_for_peers(self, round: int) -> None:
        """Until the round closed with its payloads here, every live peer published, or a deadline passed."""
        peers.wait_for_peers(self.transport, self.config.swarm, round, beat=self.beat, sleep=self.sleep)

    # --------------------------------------------------------- evaluation, records, checkpoints

    def eval_due(self, round: int) -> bool:
        """Whether ``round`` ends with an evaluation: every ``eval.every`` rounds and after the last."""
        if self.inference is None or not (self.is_main_process or self.eval_collective):
            return False
        return recording.eval_due(round, every=self.config.eval.every, rounds=self.config.run.rounds)

    def evaluate(self) -> tuple[dict[str, float], list[ProblemResult]]:
        """Evaluate the current policy on the held-out problems (see `sapo_core.evaluation`)."""
        if self.inference is None:
            raise SapoError(f"role {self.context.role!r} does not generate, so it does not evaluate")
        if self._evaluator is None:
            self._evaluator = recording.new_evaluator(
                self.config, self.eval_inference or self.inference, self.rewards, self.tasks, self.context
            )
        return self._evaluator.evaluate()

    def evaluate_baseline(self) -> dict[str, Any]:
        """Evaluate before any training: a ``"round": -1`` line in metrics.jsonl and ``metrics/eval_start.json``."""
        timer = Timer()
        evaluated, results, stop = recording.evaluation(self.evaluate, self.eval_inference or self.inference, timer)
        if stop is not None:
            raise stop
        assert results is not None
        started = {"round": -1, "node": self.context.node, "time": time.time()}
        metrics = {**started, **evaluated, "time/eval": timer.seconds["eval"]}
        if not self.is_main_process:  # it took part in a collective evaluation; the main process writes
            return metrics
        recording.write_baseline(self.context.workdir, metrics, results)
        # Observers see it as round -1, so a swarm's shared metrics hold the starting point too.
        self.plugins.notify("round_finished", context=self.context, round=-1, metrics=metrics)
        return metrics

    def finish_round(self, round: int, metrics: dict[str, Any]) -> None:
        """Evaluate and checkpoint if due, add their metrics to the round's, write those, tell the observers."""
        timer = Timer(on_phase=self.on_phase)
        results: list[ProblemResult] | None = None
        if self.eval_due(round):
            evaluated, results, stop = recording.evaluation(self.evaluate, self.eval_inference or self.inference, timer)
            metrics.update(evaluated)
            if stop is not None:  # the round's own work is done: keep its metrics, then stop
                self._stop = stop
        # A contributor has no weights: its progress is the swarm's round, nothing to save.
        if self.checkpointer is not None and self.learner is not None and self.is_main_process:
            recording.checkpoint_if_due(
                self.checkpointer,
                round,
                self.config,
                self.learner,
                self.curriculum,
                node=self.context.node,
                timer=timer,
            )
        metrics.update({f"time/{name}": value for name, value in timer.seconds.items()})
        if "time/round" in metrics:
            metrics["time/round"] += sum(timer.seconds.values())
        self.last_metrics = metrics
        if self.is_main_process:
            self.write_metrics(round, metrics, results)
            self.plugins.notify("round_finished", context=self.context, round=round, metrics=metrics)

    def write_metrics(self, round: int, metrics: dict[str, Any], results: Sequence[ProblemResult] | None) -> None:
        """The round's line of ``metrics.jsonl`` and its ``metrics/*_iter_<round>.json`` (`recording.write_round`)."""
        recording.write_round(self.context.workdir, round, metrics, results)

    def resume(self) -> int:
        """Load the newest complete checkpoint; return its round (-1 when there is none)."""
        if self.checkpointer is None:
            return -1
        return recording.restore_checkpoint(
            self.checkpointer, learner=self.learner, curriculum=self.curriculum, node=self.context.node
        )

    # ------------------------------------------------------------------- coordinator

    def coordinate(self) -> None:
        """Own the round state: advance on quorum of live nodes or at the deadline (`sapo_core.coordinator`)."""

        def closed(round: int, metrics: dict[str, Any]) -> None:
            self.last_metrics = metrics
            self.plugins.notify("round_finished", context=self.context, round=round, metrics=metrics)

        Coordinator(
            self.config, self.transport, self.context.node, sleep=self.sleep, beat=self.beat, on_closed=closed
        ).run()
