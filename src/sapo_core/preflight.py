"""What `sapo config` and `sapo run` check before anything heavy loads: every backend the
configuration names is installed, and its settings parse. The same checks, so a setting that
`sapo run` would refuse after seconds of loading a model is refused by `sapo config` at once."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sapo_core.config import Config, backend_settings
from sapo_core.plugins import Plugins


def backends(config: Config, role: str) -> Iterator[tuple[str, str, Mapping[str, Any], str]]:
    """(kind, name, settings values, config section) of every backend a node of ``role`` builds.

    A coordinator builds only its transport: it neither generates nor scores, so the machine it
    runs on needs none of the swarm's task, reward, inference or learner plugins."""
    transport = ("transport", config.swarm.transport, config.extras("swarm"), "swarm")
    if role == "coordinator":
        yield transport
        return
    for name in config.tasks.names:
        yield "task", name, config.extras("tasks", name), f"tasks.{name}"
    for name, weight in config.rewards.weights.items():
        if weight != 0:
            yield "reward", name, config.extras("rewards", name), f"rewards.{name}"
    yield transport
    yield "inference", config.inference.backend, config.extras("inference"), "inference"
    if config.eval.inference:
        yield "inference", config.eval.inference, config.extras("eval"), "eval"
    yield "checkpointer", config.checkpoint.backend, config.extras("checkpoint"), "checkpoint"
    if role == "worker":
        yield "learner", config.train.backend, config.extras("train"), "train"


def check(config: Config, plugins: Plugins, role: str | None = None) -> None:
    """Raise the `PluginError` (unknown backend, with the choices) or `ConfigError` (a bad setting)
    that building the node would raise, without building anything."""
    role = role or config.run.role
    if (
        role == "worker"
        and ("learner", config.train.backend) not in plugins.registry
        and (config.source("run.role") == "default")
    ):
        role = "contributor"  # as Node.from_config: an API-only install shares rollouts instead
    for kind, name, values, where in backends(config, role):
        backend_settings(plugins.registry.get(kind, name), values, where)
