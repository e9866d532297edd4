"""Difficulty ladders: the levels of a task that a curriculum moves along.

A ladder is a tuple of *rungs*, easiest first; a rung is the settings that differ between
levels (``{"difficulty": 2}``, ``{"min_words": 4, "max_words": 8}``). A task is at level k
(1-based) when its settings agree with rung k on every key the rung names; the settings a
ladder does not name (countdown's ``min_number``) stay as configured at every level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs

Ladder = Sequence[Mapping[str, Any]]

S = TypeVar("S")


def level_of(settings: Any, ladder: Ladder) -> int | None:
    """The 1-based level whose rung ``settings`` agree with, or None if they match no rung."""
    for level, rung in enumerate(ladder, start=1):
        if all(getattr(settings, key) == value for key, value in rung.items()):
            return level
    return None


def settings_at(settings: S, ladder: Ladder, level: int) -> S:
    """``settings`` with rung ``level``'s values; ValueError for a level off the ladder."""
    if not 1 <= level <= len(ladder):
        raise ValueError(f"level {level} is off the ladder (1..{len(ladder)})")
    return attrs.evolve(settings, **ladder[level - 1])  # type: ignore[misc]


class OnLadder:
    """What a task built from ``settings`` needs for a curriculum, given its class's ``ladder``.

    The curriculum (`sapo_core.curriculum`) looks for ``level``, ``max_level`` and ``at_level``
    on a task; a third-party task may implement them any way it likes.
    """

    ladder: Ladder = ()
    settings: Any

    @property
    def level(self) -> int | None:
        """Where the settings stand on the ladder (1 = easiest), None for settings off it."""
        return level_of(self.settings, self.ladder)

    @property
    def max_level(self) -> int:
        return len(self.ladder)

    def at_level(self, level: int) -> Any:
        """The same task at another level (a new task; this one is unchanged)."""
        task: Any = type(self)  # a task class takes its settings: ArithmeticTask(settings)
        return task(settings_at(self.settings, self.ladder, level))
