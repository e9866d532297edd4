"""`PayloadFiles`: each node's payload of each round, ``rounds/<round>/<node>.json.gz``.

Publishing signs (with a secret) and writes one atomically; collecting reads a round's files,
verifies each and keeps one per node, and remembers what it made of each version of each file
so that a poll costs a listing, not a read (the `sapo_gdrive.folder` docstring has the contract).
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Mapping
from typing import Any

import attrs

from sapo_core import codec
from sapo_core.interfaces import Collected
from sapo_core.logsafe import printable, quoted
from sapo_core.records import RoundPayload
from sapo_gdrive.layout import ROUNDS_DIR, parse_name
from sapo_gdrive.store import FolderStore, file_version

#: A refused payload file is read again after this long even if the listing shows no change.
REFUSED_RECHECK_SECONDS = 10.0
#: The longest wait between two reads of an unchanged refused file.
REFUSED_RECHECK_MAX_SECONDS = 80.0


@attrs.frozen
class _Examined:
    """What `PayloadFiles.collect` made of one version of one file: a payload, or why not."""

    version: tuple[Any, ...] | None
    at: float  # time.monotonic() when read
    canonical: bool = False
    payload: RoundPayload | None = None
    refused: str = ""
    reads: int = 1  # reads of this version so far

    def due(self, now: float) -> bool:
        """Whether a refused, unchanged file is to be read again."""
        wait = min(REFUSED_RECHECK_SECONDS * 2 ** (self.reads - 1), REFUSED_RECHECK_MAX_SECONDS)
        return now - self.at >= wait


class PayloadFiles:
    """The round payloads of the experiment in ``store``, as `FolderTransport` publishes and collects them."""

    def __init__(self, store: FolderStore) -> None:
        self._store = store
        # round -> file name -> what collect found in it (the round collected last only).
        self._examined: dict[int, dict[str, _Examined]] = {}

    def path(self, round: int, node: str) -> str:
        return self._store.path(ROUNDS_DIR, str(int(round)), f"{codec.validate_node_id(node)}.json.gz")

    def publish(self, payload: RoundPayload) -> None:
        """Write the (signed, with a secret) payload at ``rounds/<round>/<node>.json.gz``."""
        path = self.path(payload.round, payload.node)
        if self._store.secret:
            payload = codec.sign_payload(payload, self._store.secret)
        self._store.write_atomic(path, codec.write_gz(payload, self._store.limits))

    def collect(self, round: int) -> Collected:
        """One valid payload per node found for ``round``, and why every other file was refused.

        Files already read are not read again unless they changed (see the module docstring).
        """
        round = int(round)
        known = self._examined.get(round, {})
        examined: dict[str, _Examined] = {}
        listing = self._store.listing(self._store.path(ROUNDS_DIR, str(round)))
        for entry in sorted(listing, key=lambda e: str(e["name"])):
            name = posixpath.basename(entry["name"])
            # Writers' temp files (.<name>.<uuid>.tmp) and OS clutter; a dot-name that looks like a
            # payload is examined (and refused: node ids never start with '.').
            if name.startswith(".") and (name.startswith("._") or parse_name(name, payload=True) is None):
                continue
            version, now = file_version(entry), time.monotonic()
            found = known.get(name)
            fresh = found is not None and version is not None and found.version == version
            if not fresh:
                found = self._examine(entry, name, round, version, now)
            elif found is not None and found.payload is None and found.due(now):
                again = self._examine(entry, name, round, version, now)
                found = attrs.evolve(again, reads=found.reads + 1) if again is not None else None
            if found is not None:
                examined[name] = found
        self._examined = {round: examined}  # a node reads one round at a time: keep no older one
        candidates: dict[str, list[_Examined]] = {}
        for found in examined.values():
            if found.payload is not None:
                candidates.setdefault(found.payload.node, []).append(found)
        payloads = [
            max(found, key=lambda c: (c.canonical, c.payload.created_at)).payload  # type: ignore[union-attr]
            for _, found in sorted(candidates.items())
        ]
        # Peers choose these names and much of the reasons: quoted, they log as one harmless line.
        rejected = [
            f"{quoted(name)}: {printable(found.refused)}" for name, found in examined.items() if found.payload is None
        ]
        return Collected(payloads=payloads, rejected=rejected)

    def _examine(
        self, entry: Mapping[str, Any], name: str, round: int, version: tuple[Any, ...] | None, now: float
    ) -> _Examined | None:
        """Read and check one listed file of round ``round``; None when it vanished since the listing."""
        store = self._store
        try:
            parsed = parse_name(name, payload=True)
            if parsed is None:
                raise codec.PayloadError("not a payload file name (<node>.json.gz)")
            node = codec.validate_node_id(parsed.node)
            if entry.get("type") not in ("file", None):
                # A symlink, FIFO or device: reading it could block or never end.
                raise codec.PayloadError(f"not a regular file ({entry.get('type')})")
            size = entry.get("size")
            if isinstance(size, int) and size > store.limits.max_payload_bytes:
                raise codec.PayloadError(f"file of {size} bytes exceeds {store.limits.max_payload_bytes}")
            try:
                blob = store.read_bytes(entry["name"])
            except FileNotFoundError:
                return None  # replaced or removed since the listing: nothing to refuse
            except (OSError, ValueError) as exc:
                raise codec.PayloadError(str(exc)) from exc
            payload = codec.read_gz(blob, store.limits)
            codec.verify_signature(payload, store.secret or None)
            if payload.experiment != store.experiment:
                raise codec.PayloadError(f"payload of experiment {payload.experiment!r}, not {store.experiment!r}")
            if payload.node != node:
                raise codec.PayloadError(f"payload of node {payload.node!r} in the file of node {node!r}")
            if payload.round != round:
                raise codec.PayloadError(f"payload is for round {payload.round}, not {round}")
        except codec.PayloadError as exc:
            return _Examined(version=version, at=now, refused=str(exc))
        return _Examined(version=version, at=now, canonical=parsed.canonical, payload=payload)
