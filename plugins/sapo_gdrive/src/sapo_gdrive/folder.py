"""`FolderTransport`: a swarm over a shared folder (Google Drive mount, any path, fsspec storage).

Layout under ``<root>/<experiment>/``::

    swarm.json                       experiment settings, written once (first writer wins)
    state.json                       the `SwarmState` the coordinator wrote
    nodes/<node>.json                each node's `NodeInfo` (registration + heartbeat)
    rounds/<round>/<node>.json.gz    one payload per node per round (`codec.write_gz`)
    lease/<epoch>.json               the coordinator's lease of each epoch (`sapo_core.lease`)

Contracts
---------
* Every write is atomic: the bytes go to ``.<name>.<uuid>.tmp`` in the same folder (flushed and
  fsynced on a local filesystem), then are renamed over the final name. A reader sees the old
  file or the new one, never half of one; a writer killed halfway leaves only a dot-temp file,
  which readers ignore.
* ``swarm.json`` is created exclusively (a hard link of a fsynced temp on a local filesystem,
  ``open(mode="xb")`` elsewhere), so of two nodes starting at once exactly one wins and both
  return what is stored.
* Readers never raise for what synced folders do: a missing folder is an empty result; a
  corrupt, partial, oversized, unsigned (in a signed swarm) or misplaced payload is skipped with
  its reason in `Collected.rejected` (``"<file name>": <reason>``, the name `sapo_core.logsafe.quoted`:
  peers choose names, and a newline or terminal escape in one must not forge or garble a log
  line); a corrupt ``state.json`` reads as None and a corrupt ``nodes/*.json`` is skipped (both
  logged, names quoted the same way). Sync clients' conflict copies
  (``alice (1).json.gz``, ``alice (conflicted copy 2026-11-25).json.gz``,
  ``alice.json (1).gz``) count as candidates for node ``alice``: one valid payload is kept per
  node, the canonical file first, else the newest ``created_at``. Every file is opened before it
  is checked, and the opened file is what is checked (`FolderStore.read_bytes`): a FIFO,
  device or symlink put in place of any file is refused, never waited on.
* `collect` reads each file once per version: a valid payload is kept by the transport (for the
  round collected last only, so memory holds one round's payloads at most) until the listing
  shows its file changed (size, modification time, inode or etag), so a node polling for its
  peers pays for a listing, not for reading, inflating, validating and verifying every peer's
  payload again. A refused file is read again when it changes, and, unchanged, after
  `REFUSED_RECHECK_SECONDS`, then twice as long each time up to `REFUSED_RECHECK_MAX_SECONDS`: a
  synced file still downloading can look complete in a listing before its bytes are, but a
  hostile file that stays as it is costs a few reads, not one every 10 s for ever.
* Node ids and the experiment name are validated (`codec.validate_node_id`), and file names
  read from the folder are parsed, never joined as given, so nothing reads or writes outside
  ``<root>/<experiment>``.
* Liveness: a node is live when ``now - max(last_seen, file mtime) <= within_seconds``, with
  ``now`` the *reader's* clock. ``last_seen`` is the writer's clock: the file's modification
  time (the storage's clock) rescues a peer whose clock lags; a peer whose clock runs ahead
  looks live a little longer than it is, which only delays a round until its deadline. A
  heartbeat that cannot be read (a sync client copies files in place, in pieces) leaves its node
  live until the last heartbeat this transport read from it expires.
* Leases: taking epoch N is the exclusive create of ``lease/N.json`` (as for ``swarm.json``), after
  checking that no higher epoch exists, and the file read back must hold the claimant's token
  (on storage where the create is only best effort, the last writer is the one that won). The
  holder renews by rewriting its own file atomically, only while no higher epoch exists. Lease
  files are never deleted, so no epoch is ever taken twice. A lease expires at the later of its
  ``expires_at`` and its file's mtime plus its duration: the storage's clock rescues a holder
  whose clock lags, as for heartbeats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Unpack

import attrs

import sapo_core
from sapo_core import codec
from sapo_core.errors import BackendError, ConfigError
from sapo_core.interfaces import BackendContext, Collected, Lease, NodeInfo, SwarmState
from sapo_core.logsafe import printable
from sapo_core.records import RoundPayload
from sapo_core.registry import Register
from sapo_gdrive.heartbeats import HeartbeatFiles
from sapo_gdrive.layout import SETTINGS_FILE, STATE_FILE
from sapo_gdrive.leases import LeaseFiles
from sapo_gdrive.payloads import PayloadFiles
from sapo_gdrive.store import FolderStore, StoreOptions, json_bytes

log = logging.getLogger("sapo.transport.gdrive")

# How long ensure_settings waits for a peer's swarm.json to become readable (a non-atomic
# fallback create, or a sync client still downloading it).
_SETTINGS_READ_TRIES = 20
_SETTINGS_READ_PAUSE = 0.05


class FolderTransport:
    """The `Transport` and `Leases` protocols over a folder reachable through fsspec (see the
    module docstring): the settings and the state here, the rest in one collaborator per kind of
    file, all over one `FolderStore`.

    ``root`` is a local path or an fsspec URL (``memory://``, ``file://``, ``s3://``...);
    ``storage_options`` go to the fsspec filesystem. Raises `PayloadError` for an unsafe
    experiment name and ValueError for an empty root.
    """

    shared = True

    def __init__(self, root: str, experiment: str, **options: Unpack[StoreOptions]) -> None:
        self.store = FolderStore(root, experiment, **options)
        self.experiment = self.store.experiment
        self.payloads = PayloadFiles(self.store)
        self.heartbeats = HeartbeatFiles(self.store)
        self.leases = LeaseFiles(self.store)

    # -------------------------------------------------------------------------- settings

    def ensure_settings(self, settings: Mapping[str, Any]) -> Mapping[str, Any]:
        """Store ``settings`` in ``swarm.json`` unless some node already did; return the stored ones."""
        path = self.store.path(SETTINGS_FILE)
        self.store.create_exclusive(path, json_bytes(dict(settings)))
        problem = "missing"
        for attempt in range(_SETTINGS_READ_TRIES):
            try:
                stored = self.store.read_json(path)
                if isinstance(stored, dict):
                    return stored
                problem = "not a JSON object"
            except FileNotFoundError:
                problem = "missing"
            except ValueError as exc:
                problem = printable(exc)
            time.sleep(_SETTINGS_READ_PAUSE * (attempt + 1))
        raise BackendError(
            f"cannot read the swarm settings {path} ({problem}); if it is damaged, delete it and restart the nodes"
        )

    # ------------------------------------------------------------------------------ state

    def write_state(self, state: SwarmState) -> None:
        self.store.write_atomic(self.store.path(STATE_FILE), self.store.signed("state", attrs.asdict(state)))

    def read_state(self) -> SwarmState | None:
        """The stored state, or None when there is none or it cannot be read (logged)."""
        path = self.store.path(STATE_FILE)
        try:
            return codec.swarm_state_from_data(self.store.read_signed(path, "state"))
        except FileNotFoundError:
            return None
        except (ValueError, codec.PayloadError) as exc:
            log.warning("ignoring unreadable swarm state %s: %s", path, printable(exc))
            return None

    # ---------------------------------------------------------------- nodes, leases, payloads

    def heartbeat(self, node: NodeInfo) -> None:
        """Write ``nodes/<node>.json`` with ``last_seen`` set to now (`HeartbeatFiles.write`)."""
        self.heartbeats.write(node)

    def live_nodes(self, within_seconds: float) -> list[NodeInfo]:
        """Nodes seen within ``within_seconds`` of now, sorted by id (`HeartbeatFiles.live`)."""
        return self.heartbeats.live(within_seconds)

    def read_lease(self) -> Lease | None:
        return self.leases.read()

    def claim_lease(self, lease: Lease) -> bool:
        return self.leases.claim(lease)

    def renew_lease(self, lease: Lease) -> bool:
        return self.leases.renew(lease)

    def publish(self, payload: RoundPayload) -> None:
        """Write the (signed, with a secret) payload at ``rounds/<round>/<node>.json.gz``."""
        self.payloads.publish(payload)

    def collect(self, round: int) -> Collected:
        """One valid payload per node found for ``round``, and why every other file was refused
        (`PayloadFiles.collect`)."""
        return self.payloads.collect(round)


def build_folder_transport(settings: object, context: BackendContext) -> FolderTransport:
    """The ``gdrive`` / ``fs`` factory: ``swarm.root`` is the folder, ``swarm.secret`` signs payloads."""
    swarm = context.config.swarm
    root = swarm.root.strip()
    if not root:
        raise ConfigError(
            "transport 'gdrive' needs the swarm's shared folder: pass --root PATH (a mounted Google Drive "
            "folder, any shared path, or an fsspec URL such as s3://bucket/swarms) or set GDRIVE_PATH"
        )
    try:
        return FolderTransport(root, context.experiment, secret=swarm.secret)
    except codec.PayloadError as exc:
        raise ConfigError(f"run.experiment: {exc}") from exc


@sapo_core.hookimpl
def register_transports(register: Register) -> None:
    register(
        "gdrive",
        build_folder_transport,
        description="A swarm over a shared folder: a mounted Google Drive (swarm.root / GDRIVE_PATH), any path, or fsspec URL",
    )
    register(
        "fs",
        build_folder_transport,
        description="Alias of gdrive: a swarm over any folder or fsspec URL (file://, memory://, s3://...)",
    )
