"""Polling with backoff: how long a loop that watches the swarm sleeps between its looks.

A wait starts with a short sleep, ``swarm.poll_seconds`` / 16, and doubles it at each poll up to
``poll_seconds``: 0.125, 0.25, 0.5, 1.0, then 2.0 s at the default of 2 s. Why this shape:

* what a node waits for often comes soon (on a fast folder a coordinator closes the round moments
  after the last payload): a change at ``t`` seconds into a wait is seen at most about ``t`` later
  (each sleep is no longer than the time already waited, plus the first sleep), never more than
  ``poll_seconds`` later, as before;
* a poll can be a listing call (Google Drive, S3), so a long wait must not cost more of them: the
  fast start takes 15/16 of one interval, so a wait makes at most 4 polls more than it would at a
  steady ``poll_seconds``, however long it lasts;
* no sleep is longer than ``poll_seconds``: whatever renews at polls (the coordinator's lease,
  `sapo_core.lease.MIN_POLLS_PER_LEASE`) renews at least as often as it did.

A worker starts a wait when it has published (`sapo_core.peers.wait_for_peers`) and when it looks
for the next round (`sapo_core.peers.next_round`); the coordinator when it opens a round, and it
restarts the fast start (`Backoff.nudge`) when a payload arrives: the round closes at the last
one, moments later in a swarm in step. Workers do not nudge: there can be hundreds of them.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

#: The first sleep of a wait, as a share of ``poll_seconds``: four doublings reach it.
FIRST_SHARE = 1 / 16


@attrs.define
class Backoff:
    """The sleeps of one wait: `FIRST_SHARE` of ``ceiling``, doubling at each `pause` up to ``ceiling``."""

    ceiling: float
    sleep: Callable[[float], object]
    _next: float = attrs.field(init=False)
    #: Whether a sleep of ``ceiling`` was made since the last `reset`: the fast start is over.
    _settled: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new wait: the next sleep is the shortest again."""
        self._next = self.ceiling * FIRST_SHARE
        self._settled = False

    def nudge(self) -> None:
        """Something moved (a peer published): `reset`, once the fast start has ended with a full sleep.

        Not sooner, which bounds the cost of a swarm that keeps moving (hundreds of nodes publishing
        one after another): at most 5 polls in ``31/16 * ceiling`` seconds, 2.6 times the steady rate."""
        if self._settled:
            self.reset()

    def pause(self) -> float:
        """Sleep the next interval; returns it."""
        seconds = self._next
        self.sleep(seconds)
        self._settled = self._settled or seconds >= self.ceiling
        self._next = min(2 * seconds, self.ceiling)
        return seconds
