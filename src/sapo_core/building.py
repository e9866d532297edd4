"""Building a node from its config: its role, its run directory, and a backend for every stage.

`build_backends` is all of `Node.from_config` but the constructor call. It settles everything a
backend is told about its run (`BackendContext`, with the final run directory) before the first
backend is built, so that no backend ever sees a context that changes under it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from sapo_core import preflight, rundir
from sapo_core.config import Config, backend_settings
from sapo_core.coordinator import Coordinator, check_lease_settings
from sapo_core.curriculum import Curriculum
from sapo_core.errors import ConfigError, SapoError
from sapo_core.interfaces import BackendContext, Checkpointer, RewardFunction, Task
from sapo_core.plugins import Plugins

__all__ = [
    "TRACKERS_PLUGIN",
    "backend_context",
    "backend_label",
    "build_backends",
    "build_curriculum",
    "check_gate",
    "node_role",
    "planned_workdir",
    "process_rank",
    "resumable_run",
    "run_context",
    "warn_if_untracked",
]

log = logging.getLogger("sapo.node")
#: The entry-point name of sapo-trackers, the plugin that reports to the trackers of ``run.report_to``.
TRACKERS_PLUGIN = "sapo_trackers"


def build_backends(config: Config, plugins: Plugins) -> dict[str, Any]:
    """Check the config, settle the run directory, and build the backends its role needs: the
    `Node`'s fields besides its config and plugins (``context``, ``tasks``, ``rewards``,
    ``transport``, and the ones the role needs of ``inference``, ``eval_inference``,
    ``checkpointer``, ``curriculum``, ``standby``, ``learner``)."""
    role = node_role(config, plugins)
    preflight.check(config, plugins, role)  # every setting, before any backend loads
    warn_if_untracked(config, plugins)
    planned = planned_workdir(config)
    check_gate(config)
    context, checkpointer, created = run_context(config, plugins, role, planned)
    try:
        return _build(config, plugins, context, checkpointer)
    except BaseException:
        if created is not None:
            rundir.discard_if_empty(created)
        raise


def warn_if_untracked(config: Config, plugins: Plugins) -> None:
    """``run.report_to`` is sapo-trackers' to act on: without that plugin the run would report nowhere, silently."""
    if config.run.report_to and not plugins.pm.has_plugin(TRACKERS_PLUGIN):
        names = ",".join(config.run.report_to)
        log.warning(
            "run.report_to = %s, but sapo-trackers is not installed (or not loaded); the run goes on "
            "without trackers. Install it with: pip install 'sapo-trackers[%s]'",
            list(config.run.report_to),
            names,
        )


def node_role(config: Config, plugins: Plugins) -> str:
    """``run.role``, except that a default worker with no learner installed contributes instead."""
    role = config.run.role
    if role == "worker" and ("learner", config.train.backend) not in plugins.registry:
        if config.source("run.role") != "default":
            plugins.registry.get("learner", config.train.backend)  # raises: unknown learner, with choices
        # Nothing here can train (an API-only install): share rollouts instead of failing.
        log.warning(
            "no learner %r is installed (pip install sapo-local to train); running as a contributor",
            config.train.backend,
        )
        role = "contributor"
    return role


def planned_workdir(config: Config) -> Path:
    """The run directory the config asks for: ``run.dir``; offline, a new timestamped folder of the
    experiment (its name only: `run_context` creates it, or picks the run that ``--resume`` continues);
    in a swarm, the node's folder."""
    run = config.run
    if run.dir:
        workdir = Path(run.dir)
        if not run.resume and rundir.holds_run(workdir):
            raise ConfigError(
                f"run.dir {workdir} already holds a run ({rundir.METRICS_FILE}): continue it with --resume, "
                "or give another --run-dir"
            )
        return workdir
    if config.swarm.transport == "none":
        return config.experiment_dir / rundir.timestamp()
    return config.node_dir


def run_context(
    config: Config,
    plugins: Plugins,
    role: str,
    planned: Path,
) -> tuple[BackendContext, Checkpointer | None, Path | None]:
    """The backends' context with the final run directory; the checkpointer that ``--resume``
    found there (or None); the directory created here, to discard if building fails (or None)."""
    automatic = config.swarm.transport == "none" and not config.run.dir
    if role == "coordinator" or not automatic:
        return backend_context(config, role, planned), None, None
    if config.run.resume:
        return (*resumable_run(config, plugins, role), None)
    if process_rank() == 0:
        workdir = rundir.new_dir(config.experiment_dir, planned.name)
    else:  # another process of a distributed learner: rank 0 owns the run directory
        workdir = Path(tempfile.mkdtemp(prefix=f"sapo-rank{process_rank()}-"))
    return backend_context(config, role, workdir), None, workdir


def backend_context(config: Config, role: str, workdir: Path) -> BackendContext:
    run = config.run
    return BackendContext(
        experiment=run.experiment,
        node=run.node_id,
        role=role,
        model=config.model.name,
        seed=run.seed,
        workdir=workdir,
        config=config,
    )


def resumable_run(config: Config, plugins: Plugins, role: str) -> tuple[BackendContext, Checkpointer]:
    """The newest automatic run directory of the experiment with a checkpoint: its context and checkpointer."""
    for candidate in rundir.stamped_runs(config.experiment_dir):
        context = backend_context(config, role, candidate)
        checkpointer = _Builder(config, plugins, context)(
            "checkpointer", config.checkpoint.backend, config.extras("checkpoint"), "checkpoint"
        )
        saved = checkpointer.list()
        if saved:
            log.info(
                "--resume: continuing run %s (the newest of experiment %r with a checkpoint, round %d)",
                candidate,
                config.run.experiment,
                saved[-1].round,
            )
            return context, checkpointer
        close = getattr(checkpointer, "close", None)
        if callable(close):
            close()
    raise ConfigError(
        f"--resume: no run of experiment {config.run.experiment!r} in {config.experiment_dir} has a checkpoint. "
        "Start a new run without --resume, or give the run's folder with --run-dir (run.dir)."
    )


def _build(
    config: Config, plugins: Plugins, context: BackendContext, checkpointer: Checkpointer | None
) -> dict[str, Any]:
    """Each stage's backend, in order: tasks, rewards, transport; then generation's, the learner's."""
    build, role = _Builder(config, plugins, context), context.role
    tasks: dict[str, Task] = {}
    rewards: dict[str, RewardFunction] = {}
    if role != "coordinator":  # it neither generates nor scores: its machine needs no task or reward plugin
        tasks = {
            name: build("task", name, config.extras("tasks", name), f"tasks.{name}") for name in config.tasks.names
        }
        context.tasks = tasks
        rewards = {
            name: build("reward", name, config.extras("rewards", name), f"rewards.{name}")
            for name, weight in config.rewards.weights.items()
            if weight != 0
        }
    transport = build("transport", config.swarm.transport, config.extras("swarm"), "swarm")
    check_lease_settings(config, transport, role)
    built: dict[str, Any] = {"context": context, "tasks": tasks, "rewards": rewards, "transport": transport}
    if role != "coordinator":
        built["curriculum"] = build_curriculum(config, tasks)
        built["inference"] = build("inference", config.inference.backend, config.extras("inference"), "inference")
        if config.eval.inference:
            built["eval_inference"] = build("inference", config.eval.inference, config.extras("eval"), "eval")
        built["checkpointer"] = checkpointer or build(
            "checkpointer", config.checkpoint.backend, config.extras("checkpoint"), "checkpoint"
        )
    if config.swarm.standby and process_rank() == 0:  # its own transport: one call at a time per backend
        standby = build("transport", config.swarm.transport, config.extras("swarm"), "swarm")
        built["standby"] = Coordinator(config, standby, config.run.node_id, standby=True)
    if role == "worker":
        built["learner"] = build("learner", config.train.backend, config.extras("train"), "train")
    return built


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


def process_rank() -> int:
    """This process's rank in a distributed launch (accelerate launch, torchrun), 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def backend_label(plugins: Plugins, kind: str, name: str) -> str:
    """How errors name a backend: its kind, name and the distribution it came from."""
    try:
        distribution = plugins.registry.get(kind, name).distribution
    except SapoError:
        distribution = ""
    return f"{kind} backend {name!r}" + (f" from {distribution}" if distribution else "")


@attrs.define
class _Builder:
    """Builds a backend from its registration and the settings found in the config."""

    config: Config
    plugins: Plugins
    context: BackendContext

    def __call__(self, kind: str, name: str, values: Mapping[str, Any], where: str) -> Any:
        registration = self.plugins.registry.get(kind, name)
        settings = backend_settings(registration, values, where)
        try:
            return registration.factory(settings, self.context)
        except SapoError:
            raise
        except Exception as exc:
            raise SapoError(
                f"{kind} {name!r} from {registration.distribution} failed to start: {type(exc).__name__}: {exc}"
            ) from exc
