"""Progress of a node's rounds on the terminal (stderr), with each round's headline numbers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

#: The metrics shown after each round, if present, with their labels.
HEADLINE = (("reward/mean", "reward"), ("train/loss", "loss"), ("groups/external_available", "external"), ("time/round", "s"))


def headline(metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, label in HEADLINE:
        value = metrics.get(key)
        if isinstance(value, float):
            parts.append(f"{label} {value:.3f}")
        elif value is not None:
            parts.append(f"{label} {value}")
    return "  ".join(parts)


@contextmanager
def round_progress(total: int, start: int, *, label: str) -> Iterator[Callable[[int, Mapping[str, Any]], None]]:
    """A progress bar over rounds; call the yielded function after each round."""
    console = Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[last]}"))
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress:
        task = progress.add_task(label, total=total, completed=start, last="")

        def advance(round: int, metrics: Mapping[str, Any]) -> None:
            line = headline(metrics)
            if not console.is_terminal:
                console.print(f"{label} round {round}: {line}", highlight=False)
            progress.update(task, completed=round + 1, last=line)

        yield advance
