"""Hyperparameter sweeps: a grid of offline runs, one run directory each, and a summary.

``sapo sweep --set train.lr=5e-6,1e-5 --set train.beta=0,0.05`` runs 4 combinations. Every
``--set`` whose value has a comma outside brackets, braces and quotes is an *axis* of the grid
(``tasks.names=["arithmetic","sort"]`` is one value; ``tasks.names=arithmetic,sort`` is an axis
of two); the grid is their cartesian product, in the order given. Each combination is resolved
as if its own ``--set KEY=VALUE`` stood where the axis did, and runs into
``<sweep folder>/<k1=v1,k2=v2>``, the sweep folder being ``<workdir>/<experiment>/sweep-<UTC
timestamp>`` or ``--run-dir``. The sweep folder holds ``sweep.json`` (the grid) and
``summary.json`` (one row per combination: final reward, best eval pass@1, final loss, wall
time, status and error), rewritten after each combination.

This module knows nothing of click or of how a run is started: the CLI passes ``run``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from sapo_core import rundir
from sapo_core.errors import ConfigError, SapoError

log = logging.getLogger("sapo.sweep")

#: The largest grid `sapo sweep` runs.
MAX_COMBINATIONS = 256
#: Keys that say where or how runs go: a sweep sets them itself or requires them fixed.
NOT_SWEEPABLE = ("run.dir", "run.workdir", "run.experiment", "run.resume", "swarm.transport")
SUMMARY_FILE = "summary.json"
GRID_FILE = "sweep.json"

_OPEN, _CLOSE = "[{(", "]})"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_MAX_NAME = 120


def split_values(text: str) -> list[str]:
    """``"5e-6, 1e-5"`` -> ``["5e-6", "1e-5"]``: split at commas outside brackets, braces,
    parentheses and quotes (``'["a","b"],["c"]'`` -> two values). Parts are stripped."""
    parts: list[str] = []
    current: list[str] = []
    depth, quote, escaped = 0, "", False
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


@attrs.frozen
class Axis:
    """One swept key: its values as typed, and where its ``--set`` stood."""

    key: str
    values: tuple[str, ...]
    position: int


@attrs.frozen
class Combination:
    """One point of the grid."""

    index: int
    name: str  # its folder name, e.g. "lr=5e-6,beta=0"
    values: Mapping[str, str]  # swept key -> value as typed
    sets: tuple[str, ...]  # the --set items that resolve it

    def describe(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.values.items())


@attrs.frozen
class Grid:
    axes: tuple[Axis, ...]
    combinations: tuple[Combination, ...]
    sets: tuple[str, ...]  # the --set items as given


def _labels(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key shares: ``train.lr`` -> ``lr``."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if not any(other != key and (other == label or other.endswith("." + label)) for other in keys):
                break
        labels[key] = label
    return labels


def value_label(value: str) -> str:
    """A value as it reads in a folder name: quotes, brackets and spaces dropped, inner commas as ``+``
    (``["arithmetic", "sort"]`` -> ``arithmetic+sort``)."""
    text = re.sub(r"[\"'\[\]{}()\s]", "", value)
    return text.replace(",", "+") or "_"


def sanitize(name: str) -> str:
    """A folder name: characters other than ``A-Za-z0-9._=,+-`` become ``_``; long names are cut
    and end in a hash of the whole name; never starts with ``.`` or ``-``."""
    safe = _UNSAFE.sub("_", name).lstrip(".-") or "_"
    if len(safe) > _MAX_NAME:
        safe = safe[: _MAX_NAME - 9] + "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return safe


def parse_grid(sets: Sequence[str], *, limit: int = MAX_COMBINATIONS) -> Grid:
    """The grid that ``--set`` items describe (see the module's documentation).

    Raises ConfigError for an empty value in a list (``a,,b``), a key swept twice or with a
    repeated value, a key that cannot be swept (`NOT_SWEEPABLE`), or more than ``limit``
    combinations.
    """
    axes: list[Axis] = []
    for position, item in enumerate(sets):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            continue  # not KEY=VALUE: left for the config loader to explain
        values = split_values(raw)
        if len(values) < 2:
            continue
        if any(not value for value in values):
            raise ConfigError(f"--set {item}: a sweep list has an empty value; separate values with single commas")
        if len(set(values)) != len(values):
            raise ConfigError(f"--set {item}: a sweep list repeats a value")
        if key in NOT_SWEEPABLE:
            raise ConfigError(f"--set {item}: {key} cannot be swept (a sweep sets where and how its runs go)")
        if any(axis.key == key for axis in axes):
            raise ConfigError(f"--set {key}=...: this key is swept twice; give all its values in one --set")
        axes.append(Axis(key=key, values=tuple(values), position=position))
    count = 1
    for axis in axes:
        count *= len(axis.values)
    if count > limit:
        sizes = " x ".join(f"{len(axis.values)} ({axis.key})" for axis in axes)
        raise ConfigError(
            f"This sweep has {count} combinations ({sizes}); at most {limit} are allowed. Sweep fewer values."
        )
    labels = _labels([axis.key for axis in axes])
    combinations, names = [], set()
    for index, point in enumerate(itertools.product(*(axis.values for axis in axes))):
        items = list(sets)
        for axis, value in zip(axes, point):
            items[axis.position] = f"{axis.key}={value}"
        name = sanitize(
            ",".join(f"{labels[axis.key]}={value_label(value)}" for axis, value in zip(axes, point)) or "run"
        )
        while name in names:  # two values that read the same once sanitised
            name = f"{name}-{index}"
        names.add(name)
        chosen = {axis.key: value for axis, value in zip(axes, point)}
        combinations.append(Combination(index=index, name=name, values=chosen, sets=tuple(items)))
    return Grid(axes=tuple(axes), combinations=tuple(combinations), sets=tuple(sets))


# ------------------------------------------------------------------------------- running


@attrs.define
class Result:
    """How one combination went, read back from its run directory."""

    combination: Combination
    dir: Path
    status: str = "not run"  # ok | failed | interrupted | not run
    error: str | None = None
    wall_seconds: float | None = None
    rounds_done: int = 0
    final_reward_mean: float | None = None
    best_eval_pass_at_1: float | None = None
    best_eval_round: int | None = None
    final_train_loss: float | None = None

    def read_metrics(self) -> None:
        """Fill the numbers from the run directory's ``metrics.jsonl``."""
        lines = rundir.read_metrics(self.dir)
        self.rounds_done = len({line.get("round") for line in lines})
        rewards = [line["reward/mean"] for line in lines if _is_number(line.get("reward/mean"))]
        self.final_reward_mean = rewards[-1] if rewards else None
        losses = [line["train/loss"] for line in lines if _is_number(line.get("train/loss"))]
        self.final_train_loss = losses[-1] if losses else None
        evals = [(line["eval/pass@1"], line.get("round")) for line in lines if _is_number(line.get("eval/pass@1"))]
        if evals:
            best = max(evals, key=lambda item: item[0])
            self.best_eval_pass_at_1, self.best_eval_round = best
        else:
            self.best_eval_pass_at_1 = self.best_eval_round = None

    def to_data(self) -> dict[str, Any]:
        return {
            "index": self.combination.index,
            "name": self.combination.name,
            "values": dict(self.combination.values),
            "dir": str(self.dir),
            "status": self.status,
            "error": self.error,
            "wall_seconds": self.wall_seconds,
            "rounds_done": self.rounds_done,
            "final_reward_mean": self.final_reward_mean,
            "best_eval_pass@1": self.best_eval_pass_at_1,
            "best_eval_round": self.best_eval_round,
            "final_train_loss": self.final_train_loss,
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def grid_data(grid: Grid, folder: Path) -> dict[str, Any]:
    return {
        "folder": str(folder),
        "axes": {axis.key: list(axis.values) for axis in grid.axes},
        "sets": list(grid.sets),
        "combinations": [
            {"index": c.index, "name": c.name, "values": dict(c.values), "dir": str(folder / c.name)}
            for c in grid.combinations
        ],
    }


def write_summary(grid: Grid, folder: Path, results: Sequence[Result]) -> Path:
    path = folder / SUMMARY_FILE
    rundir.write_json(path, {**grid_data(grid, folder), "results": [r.to_data() for r in results]})
    return path


def run_sweep(grid: Grid, folder: Path, run: Callable[[Combination, Path], Any]) -> list[Result]:
    """Run every combination in turn with ``run(combination, run_dir)``, in ``folder``.

    A combination that raises is recorded as failed (its traceback in ``<run dir>/error.txt``)
    and the sweep goes on. Ctrl-C marks the running one ``interrupted``, leaves the rest
    ``not run`` and ends the sweep. ``summary.json`` is rewritten after each combination.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rundir.write_json(folder / GRID_FILE, grid_data(grid, folder))
    results = [Result(combination=c, dir=folder / c.name) for c in grid.combinations]
    total = len(results)
    for result in results:
        combination = result.combination
        log.info("sweep %d/%d: %s", combination.index + 1, total, combination.describe() or "(no axes)")
        started = time.perf_counter()
        try:
            run(combination, result.dir)
        except KeyboardInterrupt:
            result.status, result.error = "interrupted", "interrupted (Ctrl-C)"
            log.warning("sweep interrupted during %s; the remaining combinations were not run", combination.name)
        except Exception as exc:  # noqa: BLE001  one failing combination must not end the sweep
            result.status = "failed"
            result.error = str(exc) if isinstance(exc, SapoError) else f"{type(exc).__name__}: {exc}"
            log.error("sweep %d/%d (%s) failed: %s", combination.index + 1, total, combination.name, result.error)
            try:
                result.dir.mkdir(parents=True, exist_ok=True)
                (result.dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            except OSError:
                pass
        else:
            result.status = "ok"
        result.wall_seconds = time.perf_counter() - started
        result.read_metrics()
        write_summary(grid, folder, results)
        if result.status == "interrupted":
            break
    return results
