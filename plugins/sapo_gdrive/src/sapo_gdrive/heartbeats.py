"""`HeartbeatFiles`: each node's `NodeInfo`, ``nodes/<node>.json``, and who is live by it.

Liveness trusts the later of a node's own clock (``last_seen``) and the storage's (the file's
mtime), and remembers the last heartbeat read from each node (the `sapo_gdrive.folder`
docstring has the contract).
"""

from __future__ import annotations

import logging
import posixpath
import time

import attrs

from sapo_core import codec
from sapo_core.interfaces import NodeInfo
from sapo_core.logsafe import printable, quoted
from sapo_gdrive.layout import NODES_DIR, parse_name
from sapo_gdrive.store import FolderStore, mtime

log = logging.getLogger("sapo.transport.gdrive")

#: A heartbeat time further ahead of the reader's clock than this is ignored.
MAX_CLOCK_SKEW_SECONDS = 120.0


class HeartbeatFiles:
    """The heartbeats of the experiment in ``store``: this node's written, every node's read."""

    def __init__(self, store: FolderStore) -> None:
        self._store = store
        # node -> the newest heartbeat read from it (what keeps it live while its file is unreadable).
        self._newest: dict[str, NodeInfo] = {}

    def write(self, node: NodeInfo) -> None:
        """Write ``nodes/<node>.json`` with ``last_seen`` set to now (this machine's clock)."""
        name = codec.validate_node_id(node.node)
        info = attrs.evolve(node, last_seen=time.time())
        self._store.write_atomic(
            self._store.path(NODES_DIR, f"{name}.json"), self._store.signed("node", attrs.asdict(info))
        )

    def live(self, within_seconds: float) -> list[NodeInfo]:
        """Nodes seen within ``within_seconds`` of now, sorted by id (see the module docstring on clocks).

        ``last_seen`` of each returned node is the later of its own claim and its file's mtime. A
        heartbeat that cannot be read now (half synced, replaced as it was read, or gone from a
        listing mid-sync) is "not yet", never "gone": its node stays live until the last heartbeat
        this transport read from it expires.
        """
        now = time.time()
        cutoff, future = now - within_seconds, now + MAX_CLOCK_SKEW_SECONDS
        best: dict[str, NodeInfo] = {}
        for entry in self._store.listing(self._store.path(NODES_DIR)):
            name = posixpath.basename(entry["name"])
            parsed = None if name.startswith(".") else parse_name(name, payload=False)
            if parsed is None:
                continue
            try:
                info = codec.node_info_from_data(self._store.read_signed(entry["name"], "node"))
                if info.node != parsed.node:
                    raise ValueError(f"describes node {info.node!r}")
            except FileNotFoundError:
                continue  # replaced or removed since the listing
            except (ValueError, codec.PayloadError) as exc:
                log.warning(
                    "unreadable heartbeat %s (the last good one still counts): %s", quoted(name), printable(exc)
                )
                continue
            # A time beyond the clock-skew bound is no evidence of life: it would keep a node live for ever.
            seen = max((t for t in (info.last_seen, mtime(entry) or 0.0) if t <= future), default=None)
            if seen is None:
                log.warning(
                    "ignoring heartbeat %s: seen in the future (clocks more than %.0f s apart?)",
                    quoted(name),
                    MAX_CLOCK_SKEW_SECONDS,
                )
                continue
            info = attrs.evolve(info, last_seen=seen)
            if info.node not in best or info.last_seen > best[info.node].last_seen:
                best[info.node] = info
        for node, info in best.items():
            known = self._newest.get(node)
            if known is None or info.last_seen >= known.last_seen:
                self._newest[node] = info
        return [info for node, info in sorted(self._newest.items()) if info.last_seen >= cutoff]
