"""Run directories: where one run (or one swarm node) keeps its metrics, checkpoints and config.

Layout of a run directory::

    config.json                 the resolved configuration (secrets redacted)
    metrics.jsonl               one JSON line per round (eval/* keys on the rounds that evaluated)
    metrics/train_iter_000.json that round's metrics, pretty-printed, without the eval/* keys
    metrics/eval_iter_004.json  an evaluation's metrics and, per held-out problem, its completions
    checkpoints/                the local checkpoint store (checkpoint.backend = local)

Where it is (``run.dir`` empty = automatic):

* an offline run (transport ``none``): ``<workdir>/<experiment>/<UTC timestamp>``, e.g.
  ``runs/default/20261125-101530`` (``-1``, ``-2`` ... appended when that name is taken);
  ``--resume`` continues the newest of these that has a checkpoint;
* a swarm node: ``<workdir>/<experiment>/<node_id>``, stable, so ``--resume`` finds it again;
* ``run.dir`` / ``--run-dir``: exactly that folder.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_FILE",
    "METRICS_DIR",
    "METRICS_FILE",
    "config_changes",
    "discard_if_empty",
    "flatten",
    "holds_run",
    "iter_file",
    "new_dir",
    "read_jsonl",
    "read_metrics",
    "stamped_runs",
    "timestamp",
    "write_json",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
METRICS_DIR = "metrics"

#: An automatic offline run directory's name: a UTC timestamp, maybe with a ``-<n>`` suffix.
_STAMPED = re.compile(r"^(\d{8}-\d{6})(?:-(\d+))?$")


def timestamp(now: datetime.datetime | None = None) -> str:
    """``20261125-101530``: UTC, sortable, safe as a folder name on every system."""
    now = now or datetime.datetime.now(datetime.UTC)
    return now.astimezone(datetime.UTC).strftime("%Y%m%d-%H%M%S")


def new_dir(parent: Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``parent/name-1``, ``-2`` ... when that exists."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        path = parent / (name if n == 0 else f"{name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise OSError(f"cannot create a new folder named {name}[-n] in {parent}")


def stamped_runs(experiment_dir: Path) -> list[Path]:
    """The automatic offline run directories in ``experiment_dir``, newest first."""
    if not experiment_dir.is_dir():
        return []
    found = []
    for path in experiment_dir.iterdir():
        match = _STAMPED.match(path.name)
        if match and path.is_dir():
            found.append(((match.group(1), int(match.group(2) or 0)), path))
    return [path for _, path in sorted(found, reverse=True)]


def holds_run(path: Path) -> bool:
    """Whether ``path`` already has a run's metrics in it."""
    metrics = path / METRICS_FILE
    return metrics.is_file() and metrics.stat().st_size > 0


def discard_if_empty(path: Path) -> None:
    """Remove a run directory this process created if nothing was written in it."""
    try:
        path.rmdir()
    except OSError:
        pass


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON, written atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def iter_file(run_dir: Path, kind: str, round: int) -> Path:
    """``<run_dir>/metrics/<kind>_iter_<round>.json`` (three digits at least)."""
    return run_dir / METRICS_DIR / f"{kind}_iter_{round:03d}.json"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` (a partial last line, from a crash, is skipped)."""
    path = run_dir / METRICS_FILE
    return read_jsonl(path) if path.is_file() else []


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON-object lines of a file; unreadable lines (a torn last line, sync debris) are skipped."""
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            lines.append(data)
    return lines


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"run": {"rounds": 3}}`` -> ``{"run.rounds": 3}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["run.rounds: 4 -> 8", ...]``: how a resumed run's configuration differs from the stored one."""
    before, after = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        if key == "run.dir" or json.dumps(before.get(key), sort_keys=True) == json.dumps(
            after.get(key), sort_keys=True
        ):
            continue
        changes.append(f"{key}: {json.dumps(before.get(key))} -> {json.dumps(after.get(key))}")
    return changes
