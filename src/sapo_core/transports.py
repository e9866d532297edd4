"""The transports that ship with the core: ``none`` (the offline loop) and ``memory``.

``memory`` keeps a swarm inside one process, keyed by (root, experiment), so several nodes run
as threads of one test. Payloads still go through the codec as bytes, exactly as they would
through a shared folder, so validation and signatures are exercised for real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import attrs

from sapo_core import codec
from sapo_core.interfaces import BackendContext, Collected, Lease, NodeInfo, SwarmState
from sapo_core.logsafe import printable, quoted
from sapo_core.records import RoundPayload


class OfflineTransport:
    """No peers: the node drives its own rounds (``sapo run --transport none``)."""

    shared = False

    def __init__(self) -> None:
        self._state: SwarmState | None = None

    def ensure_settings(self, settings: Mapping[str, Any]) -> Mapping[str, Any]:
        return settings

    def heartbeat(self, node: NodeInfo) -> None:
        pass

    def live_nodes(self, within_seconds: float) -> list[NodeInfo]:
        return []

    def read_state(self) -> SwarmState | None:
        return self._state

    def write_state(self, state: SwarmState) -> None:
        self._state = state

    def publish(self, payload: RoundPayload) -> None:
        pass

    def collect(self, round: int) -> Collected:
        return Collected()


@attrs.define
class _MemorySwarm:
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    settings: Mapping[str, Any] | None = None
    state: SwarmState | None = None
    nodes: dict[str, NodeInfo] = attrs.field(factory=dict)
    rounds: dict[int, dict[str, bytes]] = attrs.field(factory=dict)
    leases: dict[int, Lease] = attrs.field(factory=dict)


_SWARMS: dict[tuple[str, str], _MemorySwarm] = {}
_SWARMS_LOCK = threading.Lock()


def memory_swarm(root: str, experiment: str) -> _MemorySwarm:
    """The in-process swarm for (root, experiment), created on first use."""
    with _SWARMS_LOCK:
        return _SWARMS.setdefault((root, experiment), _MemorySwarm())


class MemoryTransport:
    """A swarm inside one process; payload bytes go through the codec like files would."""

    shared = True

    def __init__(
        self, root: str, experiment: str, *, secret: str = "", limits: codec.Limits = codec.DEFAULT_LIMITS
    ) -> None:
        self._swarm = memory_swarm(root, experiment)
        self._secret = secret
        self._limits = limits

    def ensure_settings(self, settings: Mapping[str, Any]) -> Mapping[str, Any]:
        with self._swarm.lock:
            if self._swarm.settings is None:
                self._swarm.settings = dict(settings)
            return dict(self._swarm.settings)

    def heartbeat(self, node: NodeInfo) -> None:
        with self._swarm.lock:
            self._swarm.nodes[node.node] = attrs.evolve(node, last_seen=time.time())

    def live_nodes(self, within_seconds: float) -> list[NodeInfo]:
        cutoff = time.time() - within_seconds
        with self._swarm.lock:
            return [n for n in self._swarm.nodes.values() if n.last_seen >= cutoff]

    def read_state(self) -> SwarmState | None:
        with self._swarm.lock:
            return self._swarm.state

    def write_state(self, state: SwarmState) -> None:
        with self._swarm.lock:
            self._swarm.state = state

    def read_lease(self) -> Lease | None:
        with self._swarm.lock:
            return self._swarm.leases[max(self._swarm.leases)] if self._swarm.leases else None

    def claim_lease(self, lease: Lease) -> bool:
        with self._swarm.lock:
            if any(epoch >= lease.epoch for epoch in self._swarm.leases):
                return False
            self._swarm.leases[lease.epoch] = lease
            return True

    def renew_lease(self, lease: Lease) -> bool:
        with self._swarm.lock:
            held = self._swarm.leases.get(lease.epoch)
            if held is None or held.token != lease.token or max(self._swarm.leases) > lease.epoch:
                return False
            self._swarm.leases[lease.epoch] = lease
            return True

    def publish(self, payload: RoundPayload) -> None:
        if self._secret:
            payload = codec.sign_payload(payload, self._secret)
        blob = codec.write_gz(payload)
        with self._swarm.lock:
            self._swarm.rounds.setdefault(payload.round, {})[payload.node] = blob

    def put_raw(self, round: int, name: str, blob: bytes) -> None:
        """Store raw bytes as if a peer had written them (fault-injection in tests)."""
        with self._swarm.lock:
            self._swarm.rounds.setdefault(round, {})[name] = blob

    def collect(self, round: int) -> Collected:
        with self._swarm.lock:
            blobs = dict(self._swarm.rounds.get(round, {}))
        payloads, rejected = [], []
        for name, blob in sorted(blobs.items()):
            try:
                payload = codec.read_gz(blob, self._limits)
                codec.verify_signature(payload, self._secret or None)
                if payload.round != round:
                    raise codec.PayloadError(f"payload is for round {payload.round}, not {round}")
            except codec.PayloadError as exc:
                rejected.append(f"{quoted(name)}: {printable(exc)}")  # as the folder transport names them
                continue
            payloads.append(payload)
        return Collected(payloads=payloads, rejected=rejected)


def build_offline(settings: object, context: BackendContext) -> OfflineTransport:
    return OfflineTransport()


def build_memory(settings: object, context: BackendContext) -> MemoryTransport:
    swarm = context.config.swarm
    return MemoryTransport(swarm.root, context.experiment, secret=swarm.secret)
