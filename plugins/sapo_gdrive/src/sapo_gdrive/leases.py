"""`LeaseFiles`: the coordinator's lease of each epoch, ``lease/<epoch>.json`` (`sapo_core.lease`).

Taking an epoch is an exclusive create; renewing rewrites the holder's own file while no higher
epoch exists; no file is ever deleted, so no epoch is taken twice (the `sapo_gdrive.folder`
docstring has the contract).
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import attrs

from sapo_core import codec
from sapo_core.interfaces import Lease
from sapo_core.logsafe import printable
from sapo_gdrive.layout import LEASE_DIR, LEASE_NAME
from sapo_gdrive.store import FolderStore, mtime

log = logging.getLogger("sapo.transport.gdrive")


class LeaseFiles:
    """The leases of the experiment in ``store``: the `Leases` protocol of `FolderTransport`."""

    def __init__(self, store: FolderStore) -> None:
        self._store = store

    def path(self, epoch: int) -> str:
        return self._store.path(LEASE_DIR, f"{int(epoch)}.json")

    def _entries(self) -> dict[int, dict[str, Any]]:
        """Epoch -> listing entry of each canonical ``lease/<epoch>.json``."""
        entries = {}
        for entry in self._store.listing(self._store.path(LEASE_DIR)):
            match = LEASE_NAME.fullmatch(posixpath.basename(entry["name"]))
            if match is not None:
                entries[int(match["epoch"])] = entry
        return entries

    def _newest_epoch(self) -> int:
        """The highest epoch taken; with a secret, the highest whose lease file is signed (a forged
        ``lease/1000.json`` must not depose the coordinator)."""
        epochs = sorted(self._entries(), reverse=True)
        if not self._store.secret:
            return epochs[0] if epochs else -1
        return next((epoch for epoch in epochs if self._stored(self.path(epoch)) is not None), -1)

    def _stored(self, path: str) -> Lease | None:
        try:
            return codec.lease_from_data(self._store.read_signed(path, "lease"))
        except (FileNotFoundError, ValueError, codec.PayloadError):
            return None

    def read(self) -> Lease | None:
        """The lease of the highest epoch (see `Leases`); an unreadable one has holder ""."""
        # The highest epoch by name, signed or not: an unreadable (or forged) one reads as a lease
        # with no holder, so the next claim goes above it; it cannot depose a signed holder, whose
        # renewals look only at signed epochs (`_newest_epoch`).
        entries = self._entries()
        if not entries:
            return None
        epoch = max(entries)
        written = mtime(entries[epoch]) or 0.0
        try:
            lease = codec.lease_from_data(self._store.read_signed(entries[epoch]["name"], "lease"))
            if lease.epoch != epoch:
                raise ValueError(f"describes epoch {lease.epoch}")
        except (FileNotFoundError, ValueError, codec.PayloadError) as exc:
            log.warning("unreadable coordinator lease %s: %s", self.path(epoch), printable(exc))
            return Lease(epoch=epoch, holder="", renewed_at=written, expires_at=written)
        duration = lease.expires_at - lease.renewed_at
        return attrs.evolve(lease, expires_at=max(lease.expires_at, written + duration))

    def claim(self, lease: Lease) -> bool:
        """Take epoch ``lease.epoch``: True for exactly one claimant, False if a higher epoch exists."""
        if self._newest_epoch() >= lease.epoch:
            return False
        path = self.path(lease.epoch)
        if not self._store.create_exclusive(path, self._store.signed("lease", attrs.asdict(lease))):
            return False
        stored = self._stored(path)
        return stored is not None and stored.token == lease.token and self._newest_epoch() == lease.epoch

    def renew(self, lease: Lease) -> bool:
        """Rewrite the holder's own lease file; False (nothing written) once a higher epoch exists."""
        path = self.path(lease.epoch)
        stored = self._stored(path)
        if stored is None or stored.token != lease.token or self._newest_epoch() > lease.epoch:
            return False
        self._store.write_atomic(path, self._store.signed("lease", attrs.asdict(lease)))
        return self._newest_epoch() == lease.epoch
