"""What every tracker shares: the run it reports, its config with secrets redacted, its metrics.

A tracker module has ``start(run: RunInfo) -> Tracker``; it imports its library inside
``start`` so that naming a tracker whose extra is missing costs nothing until it is used, and
raises `MissingExtra` when that import fails.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs

from sapo_core import redaction
from sapo_core.config import REDACTED, is_secret
from sapo_core.interfaces import BackendContext

#: Keys of a round's metrics that identify the line rather than measure anything: the round is
#: the tracker's step, the node is the tracker's run, and the wall-clock time every tracker keeps itself.
NOT_METRICS = frozenset({"round", "node", "time"})


class MissingExtra(ImportError):
    """The tracker's library is not installed: the message names the extra and its pip command."""

    def __init__(self, tracker: str, cause: BaseException) -> None:
        self.tracker = tracker
        self.command = install_command(tracker)
        super().__init__(f"{tracker} is not installed ({cause}); install it with: {self.command}")


def install_command(tracker: str) -> str:
    return f"pip install 'sapo-trackers[{tracker}]'"


class Tracker(Protocol):
    """One node's run in one tracker."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def finish(self) -> None: ...


@attrs.frozen
class RunInfo:
    """What a tracker needs of the node's run: names, folders, and the config it may show."""

    experiment: str
    node: str
    role: str
    run_dir: Path  # this node's run directory (config.json, metrics.jsonl)
    workdir: Path  # run.workdir: the folder above every experiment's runs
    config: Mapping[str, Any]  # the resolved config, secrets redacted

    @classmethod
    def of(cls, context: BackendContext) -> RunInfo:
        return cls(
            experiment=context.experiment,
            node=context.node,
            role=context.role,
            run_dir=Path(context.workdir),
            workdir=Path(context.config.run.workdir),
            config=redacted(context.config.to_dict()),
        )


def redacted(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A copy of the resolved config as plain data (``Config.to_dict``) that shows no secret: a key the config itself treats as secret (`sapo_core.config.is_secret`: ``swarm.secret``,
    an extra named like a key or token) reads ``"***"`` as in ``sapo config``, and any registered
    secret value (an API key found in the environment) inside another string reads ``<redacted>``."""
    out: dict[str, Any] = {}
    for name, value in config.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if "." in key and is_secret(key) and value not in ("", None):
            out[str(name)] = REDACTED
        elif isinstance(value, Mapping):
            out[str(name)] = redacted(value, key)
        else:
            out[str(name)] = _scrubbed(value)
    return out


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return redaction.redact(value)
    if isinstance(value, (list, tuple)):
        return [_scrubbed(item) for item in value]
    return value


def flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """Dotted keys to scalars (lists as JSON text): for trackers whose parameters are flat (MLflow)."""
    out: dict[str, str | int | float | bool] = {}
    for name, value in config.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, Mapping):
            out.update(flat(value, key))
        elif isinstance(value, (str, int, float, bool)):
            out[key] = value
        else:
            out[key] = json.dumps(value, default=str)
    return out


def numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The round's measurements under sapo's own names (``reward/mean``, ``eval/pass@1``):
    numbers only (a bool as 0/1), nested tables joined with ``/``, the line's identifiers left out."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        key = f"{prefix}/{name}" if prefix else str(name)
        if not prefix and key in NOT_METRICS:
            continue
        if isinstance(value, Mapping):
            out.update(numbers(value, key))
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def step_of(round: int) -> int:
    """The tracker's step for sapo's round: the round as every display counts it, from 1, so
    the evaluation before training (round -1) is step 0 and no tracker sees a negative step."""
    return round + 1
