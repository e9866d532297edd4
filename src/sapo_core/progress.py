"""Progress of a node's rounds on the terminal (stderr): the current phase, and one line per round.

On a terminal: a bar over the rounds with the phase in progress (generate / score / share /
train / eval / checkpoint) and how long it has been running, and above it one summary line
per finished round. When stderr is not a terminal (a log file, CI, a notebook's captured
output), only the summary lines are printed.

Inside a phase, a backend can show the tokens it has made (`token_progress`): on a terminal a
second bar under the rounds' (tokens done / total, tokens per second, time left), elsewhere a
plain line every `LINE_SECONDS` (``generate: 1,234/6,144 tokens, 210 tok/s, ~23 s left``).

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
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

__all__ = [
    "BAR_SECONDS",
    "BEFORE_TRAINING",
    "LINE_SECONDS",
    "RunProgress",
    "SUMMARY",
    "TokenProgress",
    "duration",
    "round_name",
    "run_progress",
    "stderr_console",
    "summary",
    "summary_line",
    "token_progress",
]

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


#: What every display calls the held-out evaluation before training (``"round": -1`` in metrics.jsonl).
BEFORE_TRAINING = "before training"


def round_name(round: int, total: int | None = None) -> str:
    """A round as every display shows it: counted from 1 (``round 3/10`` is metrics.jsonl's round 2),
    and round -1 as `BEFORE_TRAINING`. Files and ``--json`` keep metrics.jsonl's numbers."""
    if round < 0:
        return BEFORE_TRAINING
    return f"round {round + 1}" if total is None else f"round {round + 1}/{total}"


def summary_line(label: str, round: int, total: int, metrics: Mapping[str, Any]) -> str:
    """One finished round: ``node-0 round 3/10: reward 0.412  ...``; ``node-0 before training: pass@1 ...``."""
    return f"{label} {round_name(round, total)}: {summary(metrics)}"


@functools.cache
def stderr_console() -> Console:
    """The one console on stderr that logging and progress share (so log lines print above the bar)."""
    return Console(stderr=True)


class _PhaseColumn(ProgressColumn):
    """The phase in progress and its elapsed seconds."""

    def render(self, task: Any) -> Text:
        detail = task.fields.get("detail")
        if detail is not None:  # a bar of `token_progress`: its rate and time left
            return Text(detail, style="cyan")
        phase = task.fields.get("phase") or ""
        if not phase:
            return Text("")
        return Text(f"{phase} {time.monotonic() - task.fields.get('since', time.monotonic()):.0f}s", style="cyan")


class RunProgress:
    """What a node reports to: `phase` when one starts, `round_done` after each round."""

    def __init__(
        self, progress: Progress, console: Console, *, total: int, start: int, label: str, live: bool = False
    ) -> None:
        self._progress, self._console = progress, console
        self.total, self.label = total, label
        self.live = live  # the bar is drawn (a terminal): `token_progress` adds its own under it
        self.lines: list[str] = []
        self._task = progress.add_task(label, total=total, completed=start, phase="", since=time.monotonic())

    def phase(self, name: str) -> None:
        self._progress.update(self._task, phase=name, since=time.monotonic())

    def round_done(self, round: int, metrics: Mapping[str, Any]) -> None:
        line = summary_line(self.label, round, self.total, metrics)
        self.lines.append(line)
        self._console.print(line, highlight=False, markup=False, soft_wrap=True)
        self._progress.update(self._task, completed=round + 1, phase="")

    @property
    def quiet(self) -> bool:
        return self._console.quiet

    @contextmanager
    def tokens(self, description: str, total: int) -> Iterator[TokenProgress]:
        """A `TokenProgress` shown with this run's: a bar under its own, or plain lines on its console."""
        with _token_display(self._progress if self.live else None, self._console, description, total) as tokens:
            yield tokens


# The run display of this thread (several nodes may run in one process, one per thread): where
# a backend's `token_progress` goes.
_current: ContextVar[RunProgress | None] = ContextVar("sapo_run_progress", default=None)


@contextmanager
def run_progress(
    total: int, start: int, *, label: str, console: Console | None = None, quiet: bool = False
) -> Iterator[RunProgress]:
    """Show a run's progress while the block runs; the bar only when ``console`` is a terminal.

    ``quiet``: nothing is shown (the other processes of a distributed learner repeat rank 0's rounds).
    """
    console = Console(quiet=True) if quiet else console or stderr_console()
    progress, live = _started(console)
    shown = RunProgress(progress, console, total=total, start=start, label=label, live=live)
    token = _current.set(shown)
    try:
        yield shown
    finally:
        _current.reset(token)
        progress.stop()


def _columns() -> tuple[ProgressColumn, ...]:
    return (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        _PhaseColumn(),
    )


def _started(console: Console) -> tuple[Progress, bool]:
    """A transient bar display on ``console``, started if it is a terminal; and whether it is drawn."""
    progress = Progress(*_columns(), console=console, transient=True, disable=not console.is_terminal)
    try:
        progress.start()
    except LiveError:  # another display is live on this console (several nodes in one process): lines only
        return Progress(*_columns(), console=console, disable=True), False
    return progress, console.is_terminal


# ------------------------------------------------------------------------- tokens inside a phase

#: Seconds between two plain lines of `token_progress` (a log or a pipe): a generate call shorter
#: than this prints none.
LINE_SECONDS = 30.0
#: Seconds between two updates of a `token_progress` bar (rich redraws at 10 Hz anyway).
BAR_SECONDS = 0.1


def duration(seconds: float) -> str:
    """``23 s``, ``4.2 min``, ``1.5 h``: a rough time, for estimates."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class TokenProgress:
    """Tokens made of a known total while a backend works (a `generate` call).

    `advance` and `update` only add and compare numbers; the display is redrawn at most every
    `BAR_SECONDS` (a bar) or `LINE_SECONDS` (a line), so a backend may advance on every decode
    step without slowing it. ``shown`` is False when nothing is displayed (the caller can then
    skip counting altogether).
    """

    def __init__(
        self,
        description: str,
        total: int,
        *,
        show: Callable[[TokenProgress], None] | None = None,
        every: float = LINE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description, self.total = description, max(0, int(total))
        self.done = 0
        self._show, self._every, self._clock = show, every, clock
        self.started = clock()
        self._next = self.started + every

    @property
    def shown(self) -> bool:
        return self._show is not None

    def advance(self, tokens: int) -> None:
        self.update(self.done + tokens)

    def update(self, done: int) -> None:
        """``done`` tokens so far (it may go back: a batch retried after running out of memory)."""
        self.done = min(max(0, done), self.total)
        if self._show is None:
            return
        now = self._clock()
        if now >= self._next:
            self._next = now + self._every
            self._show(self)

    def rate(self) -> float:
        """Tokens per second since the start."""
        elapsed = self._clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def detail(self) -> str:
        """``210 tok/s  ~23 s left``."""
        rate = self.rate()
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        return f"{rate:,.0f} tok/s  ~{duration(left)} left"

    def line(self) -> str:
        """``generate: 1,234/6,144 tokens, 210 tok/s, ~23 s left``."""
        return f"{self.description}: {self.done:,}/{self.total:,} tokens, {self.detail().replace('  ', ', ')}"


@contextmanager
def token_progress(
    description: str, total: int, *, quiet: bool = False, console: Console | None = None
) -> Iterator[TokenProgress]:
    """Show the tokens a backend makes while the block runs: ``advance`` the yielded `TokenProgress`.

    Inside a node's run (`run_progress`, in this thread) it joins that display: a second bar on a
    terminal, else a plain line on its console every `LINE_SECONDS`; it is silent where the run's
    display is (the other processes of a distributed launch). Outside one (the evaluation before
    round 0, `sapo serve`, a script) the same on ``console`` (default: stderr). ``quiet``: nothing
    is shown (a backend's own say, e.g. not rank 0 of its process group).
    """
    run = _current.get()
    if quiet or total <= 0 or (run is not None and run.quiet):
        yield TokenProgress(description, total)
        return
    if run is not None:
        with run.tokens(description, total) as tokens:
            yield tokens
        return
    console = console or stderr_console()
    progress, live = _started(console)
    try:
        with _token_display(progress if live else None, console, description, total) as tokens:
            yield tokens
    finally:
        progress.stop()


@contextmanager
def _token_display(
    progress: Progress | None, console: Console, description: str, total: int
) -> Iterator[TokenProgress]:
    """A bar in ``progress`` (a drawn display), removed at the end; without one, lines on ``console``."""
    if progress is None:

        def line(tokens: TokenProgress) -> None:
            console.print(tokens.line(), highlight=False, markup=False, soft_wrap=True)

        yield TokenProgress(description, total, show=line, every=LINE_SECONDS)
        return
    task = progress.add_task(description, total=total, detail="")

    def bar(tokens: TokenProgress) -> None:
        progress.update(task, completed=tokens.done, detail=tokens.detail())

    try:
        yield TokenProgress(description, total, show=bar, every=BAR_SECONDS)
    finally:
        progress.remove_task(task)
