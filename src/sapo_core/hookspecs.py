"""The hooks a sapo plugin can implement. One line of documentation each; docs/plugins.md has more.

Registry hooks receive a ``register`` callable:
``register(name, factory, *, settings=None, description="")``. The core calls
``factory(settings, context)`` when a run picks that name; ``settings`` is an instance of the
attrs class (or dataclass) given at registration (filled from the config section of that kind),
or None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
import pluggy

from sapo_core.config import Config
from sapo_core.interfaces import BackendContext
from sapo_core.registry import Register

hookspec = pluggy.HookspecMarker("sapo")


@hookspec
def register_tasks(register: Register) -> None:
    """Register task generators with their verifiers (factory returns a `Task`)."""


@hookspec
def register_inference(register: Register) -> None:
    """Register inference backends (factory returns an `InferenceBackend`)."""


@hookspec
def register_rewards(register: Register) -> None:
    """Register reward functions (factory returns a `RewardFunction`)."""


@hookspec
def register_transports(register: Register) -> None:
    """Register transports that move payloads between nodes (factory returns a `Transport`)."""


@hookspec
def register_checkpointers(register: Register) -> None:
    """Register checkpoint stores (factory returns a `Checkpointer`)."""


@hookspec
def register_learners(register: Register) -> None:
    """Register learners that update the weights (factory returns a `Learner`)."""


@hookspec
def inference_device(config: Config) -> str | None:
    """Where the configured inference backend will generate ("cpu", "cuda"), if it is this plugin's; else None."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the `sapo` CLI."""


@hookspec
def run_started(context: BackendContext) -> None:
    """Observe the start of a node's run, after its backends are built."""


@hookspec
def round_finished(context: BackendContext, round: int, metrics: Mapping[str, Any]) -> None:
    """Observe a finished round with its metrics (round -1: the evaluation before training)."""


@hookspec
def run_finished(context: BackendContext, metrics: Mapping[str, Any]) -> None:
    """Observe the end of a node's run with its last metrics."""
