"""One node of a swarm (or the offline loop): build its backends from the config, run its rounds.

A worker's or contributor's round (DESIGN.md, "One node, one round"):

1. read the swarm state (round, deadline) from the transport;
2. sample B problems from the task mix, deterministically from (seed, node, round);
3. generate G completions each through the inference backend;
4. score them with the reward functions and compute group advantages;
5. publish its groups; collect peers' groups until the round advances or its deadline passes;
6. build the training set: I local + J external groups, external ones re-scored here;
7. learner step (workers only);
8. every ``eval.every`` rounds and after the last: evaluate on the held-out problems;
9. a checkpoint every K rounds and after the last; the round's metrics to the run directory.

A coordinator only owns the round state: it advances when a quorum of live nodes has
published or the deadline passes, whichever comes first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from sapo_core import __version__, codec, preflight, rundir
from sapo_core.advantages import group_advantages
from sapo_core.checkpoints import keeps_optimizer_state, write_learner_state
from sapo_core.config import Config
from sapo_core.coordinator import Coordinator, check_lease_settings, standing_by
from sapo_core.contracts import checked_generation
from sapo_core.curriculum import Curriculum, group_success, task_variants
from sapo_core.errors import ConfigError, SapoError, StopRun
from sapo_core.evaluation import Evaluator, ProblemResult
from sapo_core.interfaces import (
    BackendContext,
    Checkpointer,
    InferenceBackend,
    Learner,
    NodeInfo,
    RewardFunction,
    SamplingParams,
    Task,
    Transport,
)
from sapo_core.logsafe import printable
from sapo_core.plugins import Plugins
from sapo_core.records import SCHEMA_VERSION, Completion, Group, Problem, RoundPayload
from sapo_core.rewards import CorrectnessReward, FormatReward, combine_rewards
from sapo_core.sampling import sample_problems, training_set
from sapo_core.seeding import derive_seed

log = logging.getLogger("sapo.node")

#: The curriculum's state in a checkpoint folder, beside the learner's files.
CURRICULUM_FILE = "curriculum.json"

#: Settings every node of one experiment must agree on; stored by the first node to start.
SHARED_SETTINGS = (
    "tasks.names",
    "tasks.weights",
    "tasks.problems_per_round",
    "inference.num_completions",
    "rewards.weights",
    "advantages.scale_by_std",
    "swarm.local_groups",
    "swarm.external_groups",
    "swarm.round_seconds",
)


def swarm_settings(config: Config) -> dict[str, Any]:
    """The values of `SHARED_SETTINGS`, with the payload schema version."""
    data = config.to_dict(redact=True)
    settings: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    for key in SHARED_SETTINGS:
        section, name = key.split(".")
        settings[key] = data[section][name]
    return settings


def check_compatible(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> None:
    """Refuse to join a swarm whose stored settings differ from ours, naming each difference."""
    diffs = [
        f"{key}: swarm has {json.dumps(theirs.get(key))}, this node has {json.dumps(ours.get(key))}"
        for key in sorted(set(ours) | set(theirs))
        if json.dumps(ours.get(key), sort_keys=True) != json.dumps(theirs.get(key), sort_keys=True)
    ]
    if diffs:
        raise ConfigError(
            "This node's settings do not match the swarm's:\n  "
            + "\n  ".join(diffs)
            + "\nUse the swarm's values (e.g. --set KEY=VALUE) or start a new experiment."
        )


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


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


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
    # Set when a backend asked to stop during an evaluation: the round is finished, then the run ends.
    _stop: StopRun | None = attrs.field(default=None, init=False, repr=False)

    # ---------------------------------------------------------------------- building

    @classmethod
    def from_config(cls, config: Config, plugins: Plugins) -> Node:
        run = config.run
        role = run.role
        if role == "worker" and ("learner", config.train.backend) not in plugins.registry:
            if config.source("run.role") != "default":
                plugins.registry.get("learner", config.train.backend)  # raises: unknown learner, with choices
            # Nothing here can train (an API-only install): share rollouts instead of failing.
            log.warning(
                "no learner %r is installed (pip install sapo-local to train); running as a contributor",
                config.train.backend,
            )
            role = "contributor"
        preflight.check(config, plugins, role)  # every setting, before any backend loads
        offline = config.swarm.transport == "none"
        automatic = offline and not run.dir
        if run.dir:
            workdir = Path(run.dir)
            if not run.resume and rundir.holds_run(workdir):
                raise ConfigError(
                    f"run.dir {workdir} already holds a run ({rundir.METRICS_FILE}): continue it with --resume, "
                    "or give another --run-dir"
                )
        elif offline:  # a fresh timestamped run directory, unless --resume picks an existing one below
            workdir = config.experiment_dir / rundir.timestamp()
        else:
            workdir = config.node_dir
        context = BackendContext(
            experiment=run.experiment,
            node=run.node_id,
            role=role,
            model=config.model.name,
            seed=run.seed,
            workdir=workdir,
            config=config.to_dict(redact=False),
        )
        build = _Builder(config, plugins, context)
        check_gate(config)
        tasks: dict[str, Task] = {}
        rewards: dict[str, RewardFunction] = {}
        if role != "coordinator":  # it neither generates nor scores: its machine needs no task or reward plugin
            tasks = {name: build("task", name, config.extras("tasks", name), f"tasks.{name}")
                     for name in config.tasks.names}
            context.tasks = tasks
            rewards = {
                name: build("reward", name, config.extras("rewards", name), f"rewards.{name}")
                for name, weight in config.rewards.weights.items()
                if weight != 0
            }
        checkpointer = None
        if role != "coordinator":
            if automatic and run.resume:
                context.workdir, checkpointer = cls._resumable_run(config, build, context)
            elif automatic and process_rank() == 0:
                context.workdir = rundir.new_dir(config.experiment_dir, workdir.name)
            elif automatic:  # another process of a distributed learner: rank 0 owns the run directory
                context.workdir = Path(tempfile.mkdtemp(prefix=f"sapo-rank{process_rank()}-"))
        created = context.workdir if automatic and not run.resume else None
        try:
            transport = build("transport", config.swarm.transport, config.extras("swarm"), "swarm")
            check_lease_settings(config, transport, role)
            node = cls(config=config, plugins=plugins, context=context, tasks=tasks, rewards=rewards, transport=transport)
            if role != "coordinator":
                node.curriculum = build_curriculum(config, tasks)
                node.inference = build("inference", config.inference.backend, config.extras("inference"), "inference")
                if config.eval.inference:
                    node.eval_inference = build("inference", config.eval.inference, config.extras("eval"), "eval")
                node.checkpointer = checkpointer or build(
                    "checkpointer", config.checkpoint.backend, config.extras("checkpoint"), "checkpoint"
                )
            if config.swarm.standby and process_rank() == 0:  # its own transport: one call at a time per backend
                standby = build("transport", config.swarm.transport, config.extras("swarm"), "swarm")
                node.standby = Coordinator(config, standby, run.node_id, standby=True)
            if role == "worker":
                node.learner = build("learner", config.train.backend, config.extras("train"), "train")
        except BaseException:
            if created is not None:
                rundir.discard_if_empty(created)
            raise
        return node

    @staticmethod
    def _resumable_run(config: Config, build: _Builder, context: BackendContext) -> tuple[Path, Checkpointer]:
        """The newest automatic run directory of the experiment with a checkpoint, and its checkpointer."""
        for candidate in rundir.stamped_runs(config.experiment_dir):
            context.workdir = candidate
            checkpointer = build("checkpointer", config.checkpoint.backend, config.extras("checkpoint"), "checkpoint")
            saved = checkpointer.list()
            if saved:
                log.info("--resume: continuing run %s (the newest of experiment %r with a checkpoint, round %d)",
                         candidate, config.run.experiment, saved[-1].round)
                return candidate, checkpointer
            close = getattr(checkpointer, "close", None)
            if callable(close):
                close()
        raise ConfigError(
            f"--resume: no run of experiment {config.run.experiment!r} in {config.experiment_dir} has a checkpoint. "
            "Start a new run without --resume, or give the run's folder with --run-dir (run.dir)."
        )

    def close(self) -> None:
        backends = (self.inference, self.eval_inference, self.learner, self.checkpointer, self.transport)
        for backend in (*backends, *self.rewards.values()):
            close = getattr(backend, "close", None)
            if callable(close):
                close()

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
    def main(self) -> bool:
        """False in the other processes of a distributed learner (``accelerate launch``).

        Every process runs the same loop on the same rollouts (the seeds make them identical;
        a collective inference backend shares the generation out) and the learner shares the
        training out; only the main process writes: the run directory, metrics, checkpoints,
        payloads and heartbeats. Only it evaluates, unless `eval_collective`.
        """
        return process_rank() == 0

    @property
    def eval_collective(self) -> bool:
        """Whether every process evaluates: the evaluation's backend says that all processes must call
        its ``generate`` together (``collective``, e.g. the local backend sharding its rows).
        Otherwise the main process evaluates alone, so that a paid API is not asked N times."""
        return bool(getattr(self.eval_inference or self.inference, "collective", False))

    def join(self) -> None:
        """Check this node's settings against the swarm's and announce it (idempotent)."""
        self.context.workdir.mkdir(parents=True, exist_ok=True)
        if not self.main:
            return
        self.write_config()
        check_compatible(swarm_settings(self.config), self.transport.ensure_settings(swarm_settings(self.config)))
        self.transport.heartbeat(self.info())

    def write_config(self) -> None:
        """``config.json`` in the run directory: the resolved configuration, secrets redacted.

        A resumed run whose settings changed logs the differences and stores the new ones.
        """
        path = self.context.workdir / rundir.CONFIG_FILE
        data = self.config.to_dict(redact=True)
        data["run"]["dir"] = str(self.context.workdir)
        if path.is_file():
            try:
                changes = rundir.config_changes(json.loads(path.read_text(encoding="utf-8")), data)
            except (OSError, ValueError, AttributeError):
                changes = []
            if changes:
                log.info("%s: settings changed since %s was written: %s", self.context.node, path, "; ".join(changes))
        rundir.write_json(path, data)

    def work(self) -> None:
        """The worker/contributor loop."""
        if self.main:
            log.info("%s: run directory %s", self.context.node, self.context.workdir)
        done = self.resume() if self.config.run.resume else -1
        evaluates = self.main or self.eval_collective
        if done == -1 and self.config.eval.at_start and self.inference is not None and evaluates:
            try:
                self.evaluate_baseline()
            except StopRun as exc:
                log.warning("%s: %s; the run ends before round 0", self.context.node, exc)
                return
        from sapo_core.progress import run_progress  # rich is imported only when running

        label = self.label or self.context.node
        with run_progress(self.config.run.rounds, done + 1, label=label, quiet=not self.main) as progress:
            self.on_phase = progress.phase
            try:
                while True:
                    round = self.next_round(done)
                    if round >= self.config.run.rounds:
                        break
                    try:
                        metrics = self.step(round)
                    except StopRun as exc:
                        log.warning("%s: %s; the run ends before round %d", self.context.node, exc, round)
                        break
                    self.finish_round(round, metrics)
                    progress.round_done(round, metrics)
                    done = round
                    if self._stop is not None:
                        log.warning("%s: %s; the run ends after round %d", self.context.node, self._stop, round)
                        break
            finally:
                self.on_phase = None

    def beat(self, round: int) -> None:
        """Heartbeat (from the main process only)."""
        if self.main:
            self.transport.heartbeat(self.info(round))

    def info(self, round: int = -1) -> NodeInfo:
        now = time.time()
        return NodeInfo(
            node=self.context.node, role=self.context.role, model=self.context.model, started_at=now, last_seen=now, round=round
        )

    def next_round(self, done: int) -> int:
        """The round to work on after ``done``: the swarm's current one (jumping ahead if behind)."""
        if not self.transport.shared:
            return done + 1
        swarm = self.config.swarm
        waited_since = time.monotonic()
        while True:
            self.beat(done)
            state = self.transport.read_state()
            if state is not None and state.round > done:
                if state.round > done + 1 and done >= 0:
                    log.warning("%s: swarm is at round %d; skipping ahead from %d", self.context.node, state.round, done)
                return state.round
            # No node waits forever: without a coordinator's word, go on alone after a round's time.
            patience = swarm.round_seconds
            if state is not None and state.deadline is not None:
                patience = max(0.0, state.deadline - time.time()) + swarm.round_seconds
            if time.monotonic() - waited_since > patience:
                log.warning("%s: no new round from the coordinator; running round %d alone", self.context.node, done + 1)
                return done + 1
            self.sleep(swarm.poll_seconds)

    def step(self, round: int) -> dict[str, Any]:
        """One round: generate, score, share, train. Returns its metrics."""
        if self.inference is None:
            raise SapoError(f"role {self.context.role!r} does not generate")
        config, timer = self.config, Timer(on_phase=self.on_phase)
        start = time.perf_counter()
        metrics: dict[str, Any] = {"round": round, "node": self.context.node, "time": time.time()}
        with timer.phase("generate"):
            problems, outputs = self.generate(round)
        with timer.phase("score"):
            local, scored = self.score_batch(problems, outputs)
        metrics["inference/dropped_problems"] = len(problems) - len(local)
        tokens = completion_tokens([group.completions for group in local])
        # Reward, completion and curriculum metrics describe the first batch: the model's own draw.
        metrics.update(self.reward_metrics(local))
        metrics.update(self.function_metrics(scored))
        metrics.update(completion_metrics(local))
        if self.curriculum is not None:
            metrics.update(self.follow_curriculum(local, scored))
        if config.tasks.resample:
            extra, extra_tokens = self.resample(round, local, timer, metrics)
            local, tokens = local + extra, tokens + extra_tokens
        if tokens and timer.seconds.get("generate"):
            # A backend's own round_metrics() with these keys, merged below, takes precedence.
            metrics["inference/tokens"] = sum(tokens)
            metrics["inference/tokens_per_second"] = sum(tokens) / timer.seconds["generate"]

        external: list[Group] = []
        if self.transport.shared:
            with timer.phase("share"):
                external = self.share(round, local, metrics)
        metrics["groups/local"] = len(local)
        metrics["groups/external_available"] = len(external)

        if self.learner is not None:
            chosen = training_set(
                local,
                external,
                local_count=config.swarm.local_groups if self.transport.shared else None,
                external_count=config.swarm.external_groups,
                seed=config.run.seed,
                node=self.context.node,
                round=round,
            )
            own = sum(1 for group in chosen if group.node == self.context.node)
            metrics["groups/trained_local"] = own
            metrics["groups/trained_external"] = len(chosen) - own
            if chosen:
                with timer.phase("train"):
                    learned = self.learner.train(chosen, round)
                metrics.update({f"train/{key}": value for key, value in learned.items()})
            else:
                log.info("%s: round %d has no group with a learning signal; no learner step", self.context.node, round)
        backends = [("inference", self.inference), ("learner", self.learner), ("transport", self.transport)]
        backends += [(f"reward/{name}", reward) for name, reward in self.rewards.items()]  # e.g. a judge's requests
        for kind, backend in backends:
            extra = getattr(backend, "round_metrics", None)
            if callable(extra):
                metrics.update({f"{kind}/{key}": value for key, value in extra().items()})
        metrics.update({f"time/{name}": value for name, value in timer.seconds.items()})
        metrics["time/round"] = time.perf_counter() - start
        return metrics

    def generate(self, round: int, attempt: int = 0) -> tuple[list[Problem], list[list[Completion]]]:
        """The round's problems (batch ``attempt``: 0, then dynamic sampling's) and their completions."""
        assert self.inference is not None
        config = self.config
        problems = sample_problems(
            self.curriculum.tasks() if self.curriculum is not None else self.tasks,
            config.tasks.weights,
            config.tasks.problems_per_round,
            seed=config.run.seed,
            node=self.context.node,
            round=round,
            attempt=attempt,
        )
        params = SamplingParams(
            temperature=config.inference.temperature,
            top_p=config.inference.top_p,
            top_k=config.inference.top_k,
            max_new_tokens=config.inference.max_new_tokens,
            seed=derive_seed(config.run.seed, self.context.node, round, "sampling", *([attempt] if attempt else [])),
        )
        n = config.inference.num_completions
        return problems, checked_generation(self.inference_label(), problems, n, self.inference.generate(problems, n, params))

    def score_batch(self, problems: Sequence[Problem], outputs: Sequence[Sequence[Completion]],
                    ) -> tuple[list[Group], list[dict[str, list[float]]]]:
        """The groups of the problems that got all their completions, and each one's scores per reward."""
        n = self.config.inference.num_completions
        complete = [(p, c[:n]) for p, c in zip(problems, outputs) if len(c) >= n]
        scored = [self.score_functions(p, c) for p, c in complete]
        return [self.group(p, c, parts, node=self.context.node) for (p, c), parts in zip(complete, scored)], scored

    def resample(self, round: int, local: Sequence[Group], timer: Timer, metrics: dict[str, Any]) -> tuple[list[Group], list[int]]:
        """DAPO's dynamic sampling: while fewer than problems_per_round own groups have a learning
        signal, up to ``tasks.resample`` more batches of new problems; the groups with a signal they
        add (up to that count in all), and the tokens generated for them."""
        wanted = self.config.tasks.problems_per_round - sum(not group.no_signal for group in local)
        extra: list[Group] = []
        tokens: list[int] = []
        batches = 0
        while wanted > 0 and batches < self.config.tasks.resample:
            batches += 1
            with timer.phase("generate"):
                problems, outputs = self.generate(round, attempt=batches)
            with timer.phase("score"):
                groups, _ = self.score_batch(problems, outputs)
            useful = [group for group in groups if not group.no_signal][:wanted]
            extra += useful
            wanted -= len(useful)
            tokens += completion_tokens(outputs)
        metrics["inference/extra_batches"] = batches
        metrics["groups/resampled"] = len(extra)
        return extra, tokens

    def follow_curriculum(self, local: Sequence[Group], scored: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, float]:
        """Tell the curriculum how this round's own groups did; ``curriculum/<task>/level`` (this
        round's) and ``curriculum/<task>/success`` (this round's mean group success)."""
        assert self.curriculum is not None
        successes: dict[str, list[float]] = {}
        for group, parts in zip(local, scored):
            successes.setdefault(group.problem.task, []).append(
                group_success(parts, group.rewards, self.config.rewards.gate))
        metrics = {f"curriculum/{name}/level": float(level) for name, level in self.curriculum.levels.items()}
        for name, rates in successes.items():
            if name in self.curriculum.levels:
                metrics[f"curriculum/{name}/success"] = _mean(rates)
        self.curriculum.observe(successes)
        return metrics

    def score(self, problem: Problem, completions: Sequence[Completion], *, node: str) -> Group:
        """Score one problem's completions with this node's rewards: a `Group` with advantages."""
        return self.group(problem, completions, self.score_functions(problem, completions), node=node)

    def score_functions(self, problem: Problem, completions: Sequence[Completion]) -> dict[str, list[float]]:
        """Each reward function's scores of one problem's completions (a broken one scores 0)."""
        return {name: _checked_scores(name, reward, problem, completions) for name, reward in self.rewards.items()}

    def group(self, problem: Problem, completions: Sequence[Completion], per_function: Mapping[str, Sequence[float]],
              *, node: str) -> Group:
        """A `Group` from the reward functions' scores: their weighted sum, and group advantages."""
        weights = {name: w for name, w in self.config.rewards.weights.items() if name in per_function}
        rewards = combine_rewards(per_function, weights)
        gate = per_function.get(self.config.rewards.gate) if self.config.rewards.gate else None
        advantages = group_advantages(rewards, scale_by_std=self.config.advantages.scale_by_std, gate=gate)
        return Group(problem=problem, completions=completions, rewards=rewards, advantages=advantages, node=node)

    @staticmethod
    def function_metrics(scored: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, float]:
        """``reward/fn/<name>``: each reward function's mean score; ``reward/accuracy``: the fraction
        of completions with correctness 1.0 (when ``correctness`` is one of the rewards)."""
        from sapo_core.evaluation import CORRECT

        metrics: dict[str, float] = {}
        for name in dict.fromkeys(name for parts in scored for name in parts):
            values = [v for parts in scored for v in parts.get(name, ())]
            metrics[f"reward/fn/{name}"] = _mean(values)
            if name == "correctness":
                metrics["reward/accuracy"] = _mean([float(v >= CORRECT) for v in values])
        return metrics

    def reward_metrics(self, groups: Sequence[Group]) -> dict[str, float]:
        rewards = [r for group in groups for r in group.rewards]
        metrics = {
            "reward/mean": _mean(rewards),
            "reward/max_group_mean": max((g.mean_reward for g in groups), default=0.0),
            "groups/zero_variance": sum(group.zero_variance for group in groups),
            "groups/no_signal": sum(group.no_signal for group in groups),
        }
        for task in self.tasks:
            of_task = [r for group in groups if group.problem.task == task for r in group.rewards]
            if of_task:
                metrics[f"reward/task/{task}"] = _mean(of_task)
        return metrics

    def share(self, round: int, local: Sequence[Group], metrics: dict[str, Any]) -> list[Group]:
        """Publish our groups, wait for peers (bounded), return their groups re-scored here."""
        payload = RoundPayload(
            experiment=self.context.experiment,
            round=round,
            node=self.context.node,
            groups=tuple(local),
            model=self.context.model,
            created_at=time.time(),
        )
        if self.main:
            self.transport.publish(payload)
        self.wait_for_peers(round)
        collected = self.transport.collect(round)
        for reason in collected.rejected:  # any transport's: its file names and reasons come from peers
            log.warning("%s: refused a payload for round %d: %s", self.context.node, round, printable(reason))
        metrics["payloads/rejected"] = len(collected.rejected)
        peers = {p.node: p for p in collected.payloads if p.node != self.context.node}
        metrics["payloads/peers"] = len(peers)
        external, unknown, forged = [], 0, 0
        for peer in peers.values():
            for group in peer.groups:
                if group.problem.task not in self.tasks:
                    unknown += 1
                    continue
                problem = self.regenerate(group.problem)
                if problem is None:
                    forged += 1
                    log.warning("%s: %s sent problem %r, which its task does not generate; refused",
                                self.context.node, peer.node, group.problem.id)
                    continue
                # SAPO re-scores others' rollouts with this node's own rewards.
                external.append(self.score(problem, group.completions, node=peer.node))
        metrics["groups/external_unknown_task"] = unknown
        metrics["groups/external_refused"] = forged
        return external

    def regenerate(self, problem: Problem) -> Problem | None:
        """This node's own copy of a peer's problem (from the seed its id ends in), or None if it differs."""
        _, _, seed = problem.id.rpartition("-")
        if not seed.isdigit():
            return None
        task = self.tasks[problem.task]
        sent = codec.to_data(problem)
        # A peer's curriculum may have it at another level of the task than ours.
        for candidate in (task, *self._variants(problem.task)):
            try:
                ours = candidate.generate(int(seed))
            except Exception:  # a task that cannot regenerate this id did not make it
                continue
            if codec.to_data(ours) == sent:
                return ours
        return None

    def _variants(self, name: str) -> list[Task]:
        if name not in self._levels:
            self._levels[name] = list(task_variants(self.tasks[name]).values())
        return self._levels[name]

    def inference_label(self) -> str:
        """How errors name this node's inference backend: its name and the distribution it came from."""
        name = self.config.inference.backend
        try:
            distribution = self.plugins.registry.get("inference", name).distribution
        except SapoError:
            distribution = ""
        return f"inference backend {name!r}" + (f" from {distribution}" if distribution else "")

    def wait_for_peers(self, round: int) -> None:
        """Until the round has closed and the payloads it closed with are here, or, with no coordinator
        in the round, every live peer has published; or a deadline passes (the round's, or
        ``round_seconds`` after it closed)."""
        swarm = self.config.swarm
        state = self.transport.read_state()
        deadline = state.deadline if state is not None and state.round == round and state.deadline else None
        if deadline is None:
            deadline = time.time() + swarm.round_seconds
        closed_seen: float | None = None
        while True:
            self.beat(round)
            state = self.transport.read_state()
            published = {p.node for p in self.transport.collect(round).payloads}
            if state is not None and state.round > round:
                # On a synced folder the new state can arrive before the payloads that closed the round.
                closed_seen = time.time() if closed_seen is None else closed_seen
                late = set(state.closed_with) - published if state.round == round + 1 else set()
                if not late or time.time() >= closed_seen + swarm.round_seconds:
                    return
            else:
                if time.time() >= deadline:
                    return
                # A coordinator's word decides who is in the round: on a lagging folder this node's view
                # of who is live can miss a peer whose heartbeat has not arrived whole yet.
                if state is None or not state.coordinator:
                    peers = {n.node for n in self.transport.live_nodes(swarm.live_seconds) if n.role != "coordinator"}
                    if peers <= published:
                        return
            self.sleep(swarm.poll_seconds)

    def eval_due(self, round: int) -> bool:
        """Whether ``round`` ends with an evaluation: every ``eval.every`` rounds and after the last."""
        every = self.config.eval.every
        if every == 0 or self.inference is None or not (self.main or self.eval_collective):
            return False
        return (round + 1) % every == 0 or round == self.config.run.rounds - 1

    def evaluate(self) -> tuple[dict[str, float], list[ProblemResult]]:
        """Evaluate the current policy on the held-out problems (see `sapo_core.evaluation`)."""
        if self.inference is None:
            raise SapoError(f"role {self.context.role!r} does not generate, so it does not evaluate")
        if self._evaluator is None:
            extra: dict[str, RewardFunction] = {}  # pass@1 and eval/format need these even when not weighted
            if "correctness" not in self.rewards:
                extra["correctness"] = CorrectnessReward(self.context)
            if "format" not in self.rewards:
                extra["format"] = FormatReward()

            def score(problem: Problem, completions: Sequence[Completion]) -> dict[str, list[float]]:
                scores = self.score_functions(problem, completions)
                scores.update({n: _checked_scores(n, r, problem, completions) for n, r in extra.items()})
                return scores

            inference = self.config.inference
            self._evaluator = Evaluator.build(
                self.config.eval,
                inference=self.eval_inference or self.inference,
                score=score,
                weights=self.config.rewards.weights,
                tasks=self.tasks,
                names=self.config.tasks.names,
                base=SamplingParams(top_p=inference.top_p, top_k=inference.top_k, max_new_tokens=inference.max_new_tokens),
            )
        return self._evaluator.evaluate()

    def evaluate_baseline(self) -> dict[str, Any]:
        """Evaluate before any training: a ``"round": -1`` line in metrics.jsonl and ``metrics/eval_start.json``."""
        started = time.perf_counter()
        evaluated, results = self.evaluate()
        drain = getattr(self.eval_inference or self.inference, "round_metrics", None)
        if callable(drain):  # the evaluation's tokens must not count in round 0's inference/*
            evaluated.update({f"eval/inference/{key}": value for key, value in drain().items()})
        metrics = {"round": -1, "node": self.context.node, "time": time.time(), **evaluated,
                   "time/eval": time.perf_counter() - started}
        if not self.main:  # it took part in a collective evaluation; the main process writes
            return metrics
        workdir = self.context.workdir
        with open(workdir / rundir.METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(metrics, sort_keys=True, default=str) + "\n")
        rundir.write_json(workdir / rundir.METRICS_DIR / "eval_start.json",
                          {**metrics, "problems": [result.to_data() for result in results]})
        log.info("%s: before training: pass@1 %.3f, reward %.3f", self.context.node,
                 evaluated.get("eval/pass@1", 0.0), evaluated.get("eval/reward_mean", 0.0))
        # Observers see it as round -1, so a swarm's shared metrics hold the starting point too.
        self.plugins.notify("round_finished", context=self.context, round=-1, metrics=metrics)
        return metrics

    def finish_round(self, round: int, metrics: dict[str, Any]) -> None:
        """Evaluate and checkpoint if due, write the round's metrics, tell the observers."""
        timer = Timer(on_phase=self.on_phase)
        results: list[ProblemResult] | None = None
        if self.eval_due(round):
            try:
                with timer.phase("eval"):
                    evaluated, results = self.evaluate()
                metrics.update(evaluated)
            except StopRun as exc:  # the round's own work is done: keep its metrics, then stop
                self._stop = exc
            # The inference backend's numbers since the round's were read are the evaluation's:
            # report them apart, so they do not count in the next round's inference/*.
            drain = getattr(self.eval_inference or self.inference, "round_metrics", None)
            if callable(drain):
                metrics.update({f"eval/inference/{key}": value for key, value in drain().items()})
        every = self.config.checkpoint.every
        last = round == self.config.run.rounds - 1
        # A contributor has no weights: its progress is the swarm's round, nothing to save.
        due = (round + 1) % every == 0 or last
        if self.checkpointer is not None and self.learner is not None and due and self.main:
            with timer.phase("checkpoint"):
                optimizer = keeps_optimizer_state(self.config.checkpoint.optimizer_state, last_round=last)
                if not optimizer and self.config.checkpoint.optimizer_state == "newest":
                    log.info("%s: the checkpoint after the last round holds no optimizer state: a --resume with more "
                             "rounds restarts the optimizer (checkpoint.optimizer_state=all keeps it)", self.context.node)
                self.checkpointer.save(round, lambda folder: self._write_checkpoint(folder, optimizer=optimizer),
                                       {"round": round, "sapo_core": __version__})
        metrics.update({f"time/{name}": value for name, value in timer.seconds.items()})
        if "time/round" in metrics:
            metrics["time/round"] += sum(timer.seconds.values())
        self.last_metrics = metrics
        if self.main:
            self.write_metrics(round, metrics, results)
            self.plugins.notify("round_finished", context=self.context, round=round, metrics=metrics)

    def write_metrics(self, round: int, metrics: Mapping[str, Any], results: Sequence[ProblemResult] | None) -> None:
        """Append the round's line to ``metrics.jsonl``; write ``metrics/train_iter_<round>.json``
        (the round's metrics without eval/*) and, when it evaluated, ``metrics/eval_iter_<round>.json``."""
        workdir = self.context.workdir
        with open(workdir / rundir.METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(metrics, sort_keys=True, default=str) + "\n")
        common = {key: metrics[key] for key in ("round", "node", "time") if key in metrics}
        train = {key: value for key, value in metrics.items() if not key.startswith(("eval/", "time/eval"))}
        rundir.write_json(rundir.iter_file(workdir, "train", round), train)
        if results is not None:
            evaluated = {key: value for key, value in metrics.items() if key.startswith("eval/") or key == "time/eval"}
            problems = [result.to_data() for result in results]
            rundir.write_json(rundir.iter_file(workdir, "eval", round), {**common, **evaluated, "problems": problems})

    def _write_checkpoint(self, folder: Path, *, optimizer: bool = True) -> None:
        if self.learner is not None:
            write_learner_state(self.learner, folder, optimizer=optimizer)
        if self.curriculum is not None:
            rundir.write_json(folder / CURRICULUM_FILE, self.curriculum.state())

    def resume(self) -> int:
        """Load the newest complete checkpoint; return its round (-1 when there is none)."""
        if self.checkpointer is None:
            return -1
        with tempfile.TemporaryDirectory(prefix="sapo-resume-") as tmp:
            info = self.checkpointer.restore(Path(tmp))
            if info is None:
                log.info("%s: no checkpoint to resume from; starting at round 0", self.context.node)
                return -1
            if self.learner is not None:
                self.learner.load(Path(tmp))
            saved = Path(tmp) / CURRICULUM_FILE
            if self.curriculum is not None and saved.is_file():
                self.curriculum.restore(json.loads(saved.read_text(encoding="utf-8")))
        log.info("%s: resumed from the checkpoint of round %d (%s)", self.context.node, info.round, info.location)
        return info.round

    # ------------------------------------------------------------------- coordinator

    def coordinate(self) -> None:
        """Own the round state: advance on quorum of live nodes or at the deadline (`sapo_core.coordinator`)."""

        def closed(round: int, metrics: dict[str, Any]) -> None:
            self.last_metrics = metrics
            self.plugins.notify("round_finished", context=self.context, round=round, metrics=metrics)

        Coordinator(self.config, self.transport, self.context.node, sleep=self.sleep, beat=self.beat,
                    on_closed=closed).run()


def build_curriculum(config: Config, tasks: Mapping[str, Task]) -> Curriculum | None:
    """The node's curriculum (``tasks.curriculum``), or None when it is off."""
    if not config.tasks.curriculum:
        return None
    return Curriculum(tasks, band=config.tasks.curriculum_band, window=config.tasks.curriculum_window)


def check_gate(config: Config) -> None:
    """``rewards.gate`` must name a weighted reward, unless it is the default and the rewards have no correctness."""
    gate, weighted = config.rewards.gate, [name for name, w in config.rewards.weights.items() if w != 0]
    if gate and gate not in weighted and config.source("rewards.gate") != "default":
        raise ConfigError(
            f"rewards.gate = {gate!r} is not one of the weighted rewards ({', '.join(weighted)}). "
            'Name the verifier among them, or set rewards.gate = "" for no gate.'
        )


def completion_tokens(outputs: Sequence[Sequence[Completion]]) -> list[int]:
    """The token count of every completion that reports one."""
    return [c.num_tokens for completions in outputs for c in completions if c.num_tokens is not None]


def completion_metrics(groups: Sequence[Group]) -> dict[str, float]:
    """``completions/mean_tokens`` and ``completions/truncated`` (the fraction that hit max_new_tokens)."""
    completions = [c for group in groups for c in group.completions]
    tokens = [c.num_tokens for c in completions if c.num_tokens is not None]
    metrics = {"completions/truncated": _mean([float(c.finish_reason == "length") for c in completions])}
    if tokens:
        metrics["completions/mean_tokens"] = _mean(tokens)
    return metrics


def process_rank() -> int:
    """This process's rank in a distributed launch (accelerate launch, torchrun), 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def _checked_scores(name: str, reward: RewardFunction, problem: Problem, completions: Sequence[Completion]) -> list[float]:
    """A reward function's scores, or zeros (logged) if it broke its contract."""
    try:
        scores = [float(s) for s in reward.score(problem, completions)]
    except Exception as exc:  # one broken reward must not lose the round's rollouts
        log.warning("reward %r failed on problem %s (%s: %s); scored 0", name, problem.id, type(exc).__name__, exc)
        return [0.0] * len(completions)
    if len(scores) != len(completions) or not all(math.isfinite(s) for s in scores):
        log.warning("reward %r returned %d scores (finite: %s) for %d completions; scored 0", name, len(scores),
                    all(math.isfinite(s) for s in scores), len(completions))
        return [0.0] * len(completions)
    return scores


@attrs.define
class _Builder:
    """Builds a backend from its registration and the settings found in the config."""

    config: Config
    plugins: Plugins
    context: BackendContext

    def __call__(self, kind: str, name: str, values: Mapping[str, Any], where: str) -> Any:
        registration = self.plugins.registry.get(kind, name)
        settings = preflight.settings_for(registration, values, where)
        try:
            return registration.factory(settings, self.context)
        except SapoError:
            raise
        except Exception as exc:
            raise SapoError(
                f"{kind} {name!r} from {registration.distribution} failed to start: {type(exc).__name__}: {exc}"
            ) from exc


def run_node(config: Config, plugins: Plugins) -> dict[str, Any]:
    """Build the node the config describes and run it to the end."""
    os.makedirs(config.run.workdir, exist_ok=True)
    return Node.from_config(config, plugins).run()
