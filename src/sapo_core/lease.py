"""The coordinator's lease: at most one node writes the swarm's round state at a time.

A node coordinates only while it holds the lease of the highest epoch. It renews the lease
every third of ``swarm.lease_seconds``; a node that wants to coordinate (the coordinator after
a restart, or a worker with ``swarm.standby``) takes the next epoch once the current lease has
expired. Taking an epoch is an exclusive create (`Leases.claim_lease`), so of two contenders
exactly one wins.

Why a holder and a successor never act at once: the holder stops acting three quarters of a
lease after the start of its last successful renewal, measured on its own monotonic clock,
while a successor waits for the ``expires_at`` the holder wrote (a whole lease after that
renewal; later still by the storage's clock, see `FolderTransport.read_lease`). The last
quarter absorbs disagreeing clocks and slow writes; keep the machines NTP-synced.

Policy, in `LeaseKeeper.acquire`:

* no lease was ever taken: a coordinator takes epoch 0 at once; a stand-by first waits a whole
  lease from its start (the coordinator may just be starting);
* the newest lease is this node's own (an earlier run of it, killed or restarted): taken back
  with the next epoch as soon as it has missed a renewal (`TWIN_SHARE` of a lease since the last
  one). Until then another live process with the same node id holds it (each acquisition has its
  own token): stand by rather than take it back and forth;
* it is another node's and has not expired: wait, and say so in the log once;
* it has expired, or has been unreadable for a whole lease: take the next epoch.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import attrs

from sapo_core.interfaces import Lease, Leases

log = logging.getLogger("sapo.lease")

#: Share of a lease, from the start of a renewal, during which the holder may act.
ACT_SHARE = 0.75
#: A holder renews once this share of a lease has passed since its last renewal.
RENEW_SHARE = 1 / 3
#: A lease of this node renewed within this share of a lease is another live process's: a holder
#: renews every `RENEW_SHARE` of a lease, at its polls (at most a quarter of a lease apart).
TWIN_SHARE = 2 * RENEW_SHARE
#: The smallest ``lease_seconds / poll_seconds``: a coordinator renews at its polls, and must
#: get a few chances to do so before its lease lapses.
MIN_POLLS_PER_LEASE = 4


def supports_leases(transport: object) -> bool:
    """Whether ``transport`` implements the optional `Leases` methods."""
    return isinstance(transport, Leases)


@attrs.define
class LeaseKeeper:
    """Takes, renews and releases the coordinator's lease for ``node`` (see the module docstring)."""

    transport: Leases
    node: str
    seconds: float
    #: A stand-by does not take a lease that was never taken before it has waited a whole lease.
    standby: bool = False
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    lease: Lease | None = None
    _act_until: float = 0.0
    _renewed: float = 0.0
    _since: float = attrs.field(init=False)
    _said: tuple[object, ...] = ()

    def __attrs_post_init__(self) -> None:
        self._since = self.monotonic()

    def holds(self) -> bool:
        """Whether this node may act as the coordinator right now."""
        return self.lease is not None and self.monotonic() < self._act_until

    def expired(self, lease: Lease, now: float) -> bool:
        """Whether ``lease`` has expired at ``now`` (this machine's clock)."""
        if not lease.holder:  # unreadable: give its writer a whole lease from its last write
            return now >= lease.renewed_at + self.seconds
        return now >= lease.expires_at

    def _renewed_by_another_process(self, lease: Lease) -> bool:
        now = self.clock()
        return not self.expired(lease, now) and now - lease.renewed_at < self.seconds * TWIN_SHARE

    def acquire(self) -> Lease | None:
        """The lease, taken if the policy allows and no other node took it first; None: wait."""
        if self.holds():
            return self.lease
        self.lease = None
        current = self.transport.read_lease()
        if not self._may_take(current):
            return None
        return self._claim(current)

    def _may_take(self, current: Lease | None) -> bool:
        """Whether the policy lets this node take the epoch after ``current`` now; logs why not, once."""
        if current is None:
            waited = self.monotonic() - self._since
            if self.standby and waited < self.seconds:
                self._say(
                    ("none",),
                    "%s: stand-by: no coordinator lease yet; taking over if none appears within %.0f s",
                    self.node,
                    self.seconds - waited,
                )
                return False
        elif current.holder == self.node and self._renewed_by_another_process(current):
            self._say(
                ("twin", current.epoch),
                "%s: another live process with this node id holds the coordinator lease (epoch %d); "
                "standing by while it renews",
                self.node,
                current.epoch,
            )
            return False
        elif current.holder == self.node:
            log.info(
                "%s: taking back its own coordinator lease (epoch %d, from an earlier run of this node)",
                self.node,
                current.epoch,
            )
        elif not self.expired(current, self.clock()):
            self._say(
                ("held", current.epoch),
                "%s: standing by: %s holds the coordinator lease (epoch %d) until %s; not coordinating meanwhile",
                self.node,
                current.holder or "an unreadable lease file",
                current.epoch,
                time.strftime("%H:%M:%S", time.localtime(current.expires_at or current.renewed_at + self.seconds)),
            )
            return False
        else:
            log.warning(
                "%s: the coordinator lease of %s (epoch %d) has expired; taking over",
                self.node,
                current.holder or "an unreadable lease file",
                current.epoch,
            )
        return True

    def _claim(self, current: Lease | None) -> Lease | None:
        """The epoch after ``current``, created exclusively for this node; None: another node took it first."""
        started, now = self.monotonic(), self.clock()
        candidate = Lease(
            epoch=0 if current is None else current.epoch + 1,
            holder=self.node,
            token=uuid.uuid4().hex,
            acquired_at=now,
            renewed_at=now,
            expires_at=now + self.seconds,
        )
        if not self.transport.claim_lease(candidate):
            log.info("%s: another node took the coordinator lease (epoch %d) first", self.node, candidate.epoch)
            return None
        self._hold(candidate, started)
        self._said = ()
        log.info(
            "%s: holds the coordinator lease (epoch %d, %.0f s, renewed while it runs)",
            self.node,
            candidate.epoch,
            self.seconds,
        )
        return candidate

    def keep(self) -> bool:
        """Renew the held lease when due; whether this node still holds it (act only then)."""
        if self.lease is None:
            return False
        started = self.monotonic()
        if started >= self._act_until:
            log.warning(
                "%s: its coordinator lease (epoch %d) lapsed before it could renew it; stops coordinating",
                self.node,
                self.lease.epoch,
            )
            self.lease = None
            return False
        if started - self._renewed < self.seconds * RENEW_SHARE:
            return True
        now = self.clock()
        renewed = attrs.evolve(self.lease, renewed_at=now, expires_at=now + self.seconds)
        try:
            still = self.transport.renew_lease(renewed)
        except OSError as exc:  # a flaky mount: try again at the next poll while the lease lasts
            log.warning("%s: cannot renew the coordinator lease (%s); retrying", self.node, exc)
            return self.holds()
        if not still:
            log.warning(
                "%s: another node took over the coordinator lease after epoch %d; stops coordinating",
                self.node,
                self.lease.epoch,
            )
            self.lease = None
            return False
        self._hold(renewed, started)
        return True

    def release(self) -> None:
        """End the held lease now (a clean exit), so that a stand-by need not wait for it to expire."""
        if self.lease is None:
            return
        lease, self.lease = self.lease, None
        now = self.clock()
        try:
            self.transport.renew_lease(attrs.evolve(lease, renewed_at=now, expires_at=now))
        except OSError as exc:  # it simply expires in its own time
            log.warning("%s: cannot release the coordinator lease (%s); it expires by itself", self.node, exc)

    def _hold(self, lease: Lease, started: float) -> None:
        self.lease = lease
        self._renewed = started
        self._act_until = started + self.seconds * ACT_SHARE

    def _say(self, key: tuple[object, ...], message: str, *args: object) -> None:
        # Waiting is re-checked at every poll: one log line per situation, not one per poll.
        if key != self._said:
            self._said = key
            log.info(message, *args)
