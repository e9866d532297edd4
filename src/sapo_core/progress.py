"""Progress of a node's rounds on the terminal (stderr): the current phase, and one line per round.

On a terminal: a bar over the rounds with the phase in progress (generate / score / share /
train / eval / checkpoint) and how long it has been running, and above it one summary line
per finished round. When stderr is not a terminal (a log file, CI, a notebook's captured
output), only the summary lines are printed.

The summary line shows whichever of these metrics the round has (`SUMMARY`):

* ``reward``: ``reward/mean`` (the training rollouts' mean total reward);
* ``acc``: ``reward/accuracy`` (fraction of training completions with correctness 1.0);
* ``pass@1``: ``eval/pass@1``, on the rounds that evaluated;
* ``kl``: ``train/kl``;
* ``clip``: ``train/clip_ratio``, else ``train/clip_ratio_low`` + ``train/clip_ratio_high``;
* ``tok/s``: ``inference/tokens_per_second``, else ``train/tokens_per_second``;
* ``loss``: ``train/loss``; ``peers``: ``payloads/peers`` (swarm nodes); and the round's seconds.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.errors import LiveError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

#: Label -> metric keys (the first present wins) -> format, in the order they are shown.
SUMMARY: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("reward", ("reward/mean",), ".3f"),
    ("acc", ("reward/accuracy",), ".3f"),
    ("pass@1", ("eval/pass@1",), ".3f"),
    ("kl", ("train/kl",), ".4g"),
    ("clip", ("train/clip_ratio", "train/clip_ratio_low+high"), ".3f"),
    ("tok/s", ("inference/tokens_per_second", "train/tokens_per_second"), ".0f"),
    ("loss", ("train/loss",), ".4g"),
    ("peers", ("payloads/peers",), "d"),
)


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _lookup(metrics: Mapping[str, Any], key: str) -> float | int | None:
    if key == "train/clip_ratio_low+high":
        low, high = _number(metrics.get("train/clip_ratio_low")), _number(metrics.get("train/clip_ratio_high"))
        return None if low is None and high is None else (low or 0.0) + (high or 0.0)
    return _number(metrics.get(key))


def summary(metrics: Mapping[str, Any]) -> str:
    """``reward 0.412  acc 0.375  pass@1 0.406  kl 0.0123  clip 0.021  tok/s 1534  loss 0.123  12.3s``."""
    parts = []
    for label, keys, fmt in SUMMARY:
        value = next((v for v in (_lookup(metrics, k) for k in keys) if v is not None), None)
        if value is None:
            continue
        if fmt == "d":
            parts.append(f"{label} {int(value)}")
        else:
            parts.append(f"{label} {value:{fmt}}" if math.isfinite(value) else f"{label} {value}")
    seconds = _number(metrics.get("time/round"))
    if seconds is not None:
        parts.append(f"{seconds:.1f}s")
    return "  ".join(parts)


def summary_line(label: str, round: int, total: int, metrics: Mapping[str, Any]) -> str:
    """One finished round: ``node-0 round 3/10: reward 0.412  ...`` (rounds counted from 1)."""
    return f"{label} round {round + 1}/{total}: {summary(metrics)}"


@functools.cache
def stderr_console() -> Console:
    """The one console on stderr that logging and progress share (so log lines print above the bar)."""
    return Console(stderr=True)


class _PhaseColumn(ProgressColumn):
    """The phase in progress and its elapsed seconds."""

    def render(self, task: Any) -> Text:
        phase = task.fields.get("phase") or ""
        if not phase:
            return Text("")
        return Text(f"{phase} {time.monotonic() - task.fields.get('since', time.monotonic()):.0f}s", style="cyan")


class RunProgress:
    """What a node reports to: `phase` when one starts, `round_done` after each round."""

    def __init__(self, progress: Progress, console: Console, *, total: int, start: int, label: str) -> None:
        self._progress, self._console = progress, console
        self.total, self.label = total, label
        self.lines: list[str] = []
        self._task = progress.add_task(label, total=total, completed=start, phase="", since=time.monotonic())

    def phase(self, name: str) -> None:
        self._progress.update(self._task, phase=name, since=time.monotonic())

    def round_done(self, round: int, metrics: Mapping[str, Any]) -> None:
        line = summary_line(self.label, round, self.total, metrics)
        self.lines.append(line)
        self._console.print(line, highlight=False, markup=False, soft_wrap=True)
        self._progress.update(self._task, completed=round + 1, phase="")


@contextmanager
def run_progress(total: int, start: int, *, label: str, console: Console | None = None,
                 quiet: bool = False) -> Iterator[RunProgress]:
    """Show a run's progress while the block runs; the bar only when ``console`` is a terminal.

    ``quiet``: nothing is shown (the other processes of a distributed learner repeat rank 0's rounds).
    """
    console = Console(quiet=True) if quiet else console or stderr_console()
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), _PhaseColumn())
    progress = Progress(*columns, console=console, transient=True, disable=not console.is_terminal)
    try:
        progress.start()
    except LiveError:  # another display is live on this console (several nodes in one process): lines only
        progress = Progress(*columns, console=console, disable=True)
    try:
        yield RunProgress(progress, console, total=total, start=start, label=label)
    finally:
        progress.stop()
