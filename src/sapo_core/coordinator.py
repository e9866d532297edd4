"""The coordinator: owns the swarm's round state, and a worker's stand-by for it.

The coordinator advances the round when a quorum of the live nodes has published, or when the
round's deadline passes, whichever comes first, and writes `SwarmState` (round, deadline, who
coordinates). Where the transport supports leases (`sapo_core.lease`), it acts only while it
holds the coordinator's lease, so it can be killed and restarted without losing the round
(``state.json`` keeps it), and a worker with ``swarm.standby = true`` takes over when the
coordinator stays away for longer than ``swarm.lease_seconds``. A restarted coordinator that
finds the lease held by a stand-by waits, and takes over again only if that one goes away.

A round whose deadline passes with no live worker and no payload is held open (closing it would
burn the run's rounds while every worker is away), but not for ever: after ``swarm.idle_rounds``
such deadlines in a row the coordinator stops with `IdleSwarm` (``sapo run`` exits 1), its
round left in ``state.json`` for a restart.

A stand-by coordinates in a thread of its own, with a transport instance of its own (backends
are called one call at a time), alongside the worker's rounds, until the run ends.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from sapo_core.config import Config
from sapo_core.errors import ConfigError, SapoError
from sapo_core.interfaces import SwarmState, Transport
from sapo_core.lease import MIN_POLLS_PER_LEASE, LeaseKeeper, supports_leases
from sapo_core.polling import Backoff

log = logging.getLogger("sapo.coordinator")


class IdleSwarm(SapoError):
    """A coordinator stopped because no worker came for ``swarm.idle_rounds`` round deadlines."""


def check_lease_settings(config: Config, transport: Transport, role: str) -> None:
    """Refuse a stand-by the swarm cannot have, and a lease too short for the polling interval."""
    swarm = config.swarm
    if swarm.standby:
        if role == "coordinator":
            raise ConfigError(
                "swarm.standby is for workers and contributors; a coordinator takes the lease anyway. "
                "Remove swarm.standby, or run this node with --role worker"
            )
        if not transport.shared:
            raise ConfigError("swarm.standby needs a swarm: set swarm.transport (e.g. --transport gdrive --root PATH)")
        if not supports_leases(transport):
            raise ConfigError(
                f"transport {swarm.transport!r} cannot hold the coordinator's lease (no read_lease/claim_lease/"
                "renew_lease), so it cannot have a stand-by coordinator. Use a transport that can (gdrive, fs, "
                "memory) or remove swarm.standby"
            )
    uses_lease = swarm.standby or (role == "coordinator" and supports_leases(transport))
    if uses_lease and swarm.lease_seconds < MIN_POLLS_PER_LEASE * swarm.poll_seconds:
        raise ConfigError(
            f"swarm.lease_seconds = {swarm.lease_seconds:g} is too short for swarm.poll_seconds = "
            f"{swarm.poll_seconds:g}: the lease is renewed at polls; make it at least "
            f"{MIN_POLLS_PER_LEASE} x poll_seconds ({MIN_POLLS_PER_LEASE * swarm.poll_seconds:g})"
        )


@attrs.define
class Coordinator:
    """The round loop of whoever coordinates: the coordinator node, or a worker's stand-by thread."""

    config: Config
    transport: Transport
    node: str
    #: A stand-by waits a whole lease before taking one that was never taken.
    standby: bool = False
    sleep: Callable[[float], object] = time.sleep  # Event.wait in a stand-by: a stop wakes it
    #: Told ``(round)`` at each poll (the coordinator node's heartbeat; a stand-by's worker beats itself).
    beat: Callable[[int], None] | None = None
    #: Told ``(round, metrics)`` when a round is closed (the coordinator node's observers).
    on_closed: Callable[[int, dict[str, Any]], None] | None = None
    #: Polled between steps: True ends the loop (the stand-by's worker has finished).
    stopped: Callable[[], bool] = lambda: False

    def run(self) -> None:
        """Coordinate until the swarm has done ``run.rounds`` rounds (or `stopped`)."""
        swarm = self.config.swarm
        keeper = None
        if supports_leases(self.transport):
            keeper = LeaseKeeper(self.transport, self.node, swarm.lease_seconds, standby=self.standby)  # type: ignore[arg-type]
        try:
            self._loop(keeper)
        finally:
            if keeper is not None:
                keeper.release()

    def _loop(self, keeper: LeaseKeeper | None) -> None:
        swarm, rounds = self.config.swarm, self.config.run.rounds
        state: SwarmState | None = None  # while this node holds the lease, it is the only writer
        idle = 0  # round deadlines in a row that passed with no live worker and no payload
        backoff, heard = Backoff(swarm.poll_seconds, self.sleep), 0  # heard: payloads of the round seen so far
        while not self.stopped():
            if keeper is not None and not keeper.keep():
                state = None
                if keeper.acquire() is None:
                    current = self.transport.read_state()
                    if current is not None and current.round >= rounds:
                        return  # another coordinator finished the run
                    # A full interval: taking over is paced by the lease, not by the polls.
                    self.sleep(swarm.poll_seconds)
                    continue
            if state is None:
                state = self.transport.read_state()
                if state is None:
                    state = self._advance_to(0)
                log.info("%s: coordinating from round %d", self.node, state.round)
                backoff.reset()
                heard = 0
            if state.round >= rounds:
                return
            if self.beat is not None:
                self.beat(state.round)
            live = {n.node for n in self.transport.live_nodes(swarm.live_seconds) if n.role != "coordinator"}
            published = {p.node for p in self.transport.collect(state.round).payloads}
            if len(published) > heard:
                backoff.nudge()  # the round closes at its last payload, soon after this one in a swarm in step
            heard = len(published)
            quorum = math.ceil(swarm.quorum * len(live)) if live else None
            reached = quorum is not None and len(published & live) >= quorum
            idle = 0 if live or published else idle
            if reached or (state.deadline is not None and time.time() >= state.deadline):
                if keeper is not None and not keeper.holds():
                    continue  # the lease lapsed while it looked: the loop's top decides who writes
                if not reached and not live and not published:
                    idle += 1
                    state = self._hold_open(idle, state.round)
                    continue
                state = self._close(state.round, "quorum" if reached else "deadline", published, live)
                backoff.reset()
                heard = 0
                continue
            backoff.pause()

    def _hold_open(self, idle: int, round: int) -> SwarmState:
        """Give ``round`` a new deadline: nobody to wait for and nothing to close; `IdleSwarm` after a while.

        Closing would burn the run's rounds while every worker is away. Hold the round open for those
        who come back, for a while: a coordinator nobody joins must not wait unseen for ever."""
        self._stop_if_idle(idle, round)
        log.warning(
            "%s: round %d: no live worker and no payload at its deadline; holding it open%s",
            self.node,
            round,
            self._idle_note(idle),
        )
        return self._advance_to(round)

    def _close(self, round: int, why: str, published: set[str], live: set[str]) -> SwarmState:
        """Close ``round`` (by ``why``: quorum or deadline) with the payloads ``published``; the next round's state."""
        log.info("%s: round %d closed by %s (%d published)", self.node, round, why, len(published))
        state = self._advance_to(round + 1, closed_with=sorted(published))
        # Told after the write: a round reported closed has advanced, even if this process dies now.
        if self.on_closed is not None:
            self.on_closed(round, {"round": round, "closed_by": why, "published": len(published), "live": len(live)})
        return state

    @property
    def idle_limit(self) -> int:
        """``swarm.idle_rounds``; 0 (no bound) for a stand-by: the worker it runs in is there."""
        return 0 if self.standby else self.config.swarm.idle_rounds

    def _stop_if_idle(self, idle: int, round: int) -> None:
        """Raise `IdleSwarm` once `idle_limit` deadlines in a row found nobody."""
        if self.idle_limit == 0 or idle < self.idle_limit:
            return
        swarm, experiment = self.config.swarm, self.config.run.experiment
        # The round's state is left as it is: a restarted coordinator goes on from it.
        raise IdleSwarm(
            f"{self.node}: no worker was live in experiment {experiment!r} (swarm folder {swarm.root or '(none)'}) "
            f"and none published for {idle} round deadlines in a row ({idle * swarm.round_seconds:g} s); "
            f"stopping. Round {round} stays open in the swarm state, so nothing is lost: start a worker with the "
            f"same --root and --experiment (sapo run --transport {swarm.transport} --root {swarm.root or 'PATH'} "
            f"--experiment {experiment} --role worker) and this coordinator again, in either order; or set "
            "swarm.idle_rounds=0 to wait for ever"
        )

    def _idle_note(self, idle: int) -> str:
        limit = self.idle_limit
        return f" ({idle} of swarm.idle_rounds = {limit}, then it stops)" if limit else ""

    def _advance_to(self, round: int, closed_with: Sequence[str] = ()) -> SwarmState:
        now = time.time()
        finished = round >= self.config.run.rounds  # the run is over: no round is open, so no deadline
        state = SwarmState(
            round=round,
            deadline=None if finished else now + self.config.swarm.round_seconds,
            updated_at=now,
            coordinator=self.node,
            closed_with=tuple(closed_with),
        )
        self.transport.write_state(state)
        return state


@contextmanager
def standing_by(coordinator: Coordinator | None) -> Iterator[None]:
    """Run ``coordinator`` (a stand-by) in a background thread while the body runs; stop it after."""
    if coordinator is None:
        yield
        return
    done = threading.Event()
    coordinator.stopped = done.is_set
    coordinator.sleep = done.wait  # a stop wakes it at once

    def duty() -> None:
        poll = coordinator.config.swarm.poll_seconds
        while not done.is_set():
            try:
                coordinator.run()
                return
            except OSError as exc:  # a flaky shared folder: the stand-by keeps watching
                log.warning("%s: stand-by coordinator: %s; retrying", coordinator.node, exc)
                done.wait(poll)
            except Exception:  # a bug must not end the worker's run; say it loudly and stop standing by
                log.exception("%s: the stand-by coordinator failed; this node no longer stands by", coordinator.node)
                return

    thread = threading.Thread(target=duty, name=f"sapo-standby-{coordinator.node}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=max(10.0, 3 * coordinator.config.swarm.poll_seconds))
        close = getattr(coordinator.transport, "close", None)
        if callable(close):
            close()
