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
  is checked, and the opened file is what is checked (`FolderTransport.read_bytes`): a FIFO,
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

import contextlib
import json
import logging
import math
import os
import posixpath
import re
import stat
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn

import attrs
import fsspec.core
from fsspec.implementations.local import LocalFileSystem

from sapo_core import codec
from sapo_core.errors import BackendError, ConfigError
from sapo_core.interfaces import BackendContext, Collected, Lease, NodeInfo, SwarmState
from sapo_core.logsafe import printable, quoted
from sapo_core.records import RoundPayload

log = logging.getLogger("sapo.transport.gdrive")

SETTINGS_FILE = "swarm.json"
STATE_FILE = "state.json"
NODES_DIR = "nodes"
ROUNDS_DIR = "rounds"
LEASE_DIR = "lease"

# A sync client's copy marker: " (1)", "(2)", " (conflicted copy 2026-11-25)",
# " (alice's conflicted copy ...)". Node ids never contain parentheses, so this is unambiguous.
_COPY = r"(?:\s*\([^()/\\]*\))"
_PAYLOAD_NAME = re.compile(rf"(?P<node>.*?)(?P<copy1>{_COPY})?\.json(?P<copy2>{_COPY})?\.gz", re.DOTALL)
_NODE_NAME = re.compile(rf"(?P<node>.*?)(?P<copy1>{_COPY})?\.json(?P<copy2>{_COPY})?", re.DOTALL)
# Only canonical lease files count: a sync client's copy of one is never a newer epoch.
_LEASE_NAME = re.compile(r"(?P<epoch>[0-9]{1,18})\.json")
#: A heartbeat time further ahead of the reader's clock than this is ignored.
MAX_CLOCK_SKEW_SECONDS = 120.0
#: A refused payload file is read again after this long even if the listing shows no change.
REFUSED_RECHECK_SECONDS = 10.0
#: The longest wait between two reads of an unchanged refused file.
REFUSED_RECHECK_MAX_SECONDS = 80.0
#: The largest control file (heartbeat, state, lease, swarm.json) read: they are a few hundred
#: bytes, and every node reads every heartbeat at every poll.
MAX_CONTROL_FILE_BYTES = 1024 * 1024
# Listing keys that name a version of a file on some fsspec backend (inode, object etags, generations).
_VERSION_KEYS = ("ino", "ETag", "etag", "md5Hash", "generation", "version_id")
# How long ensure_settings waits for a peer's swarm.json to become readable (a non-atomic
# fallback create, or a sync client still downloading it).
_SETTINGS_READ_TRIES = 20
_SETTINGS_READ_PAUSE = 0.05


@attrs.frozen
class FileName:
    """A file name read from the folder, parsed: its node id (unvalidated) and whether it is a copy."""

    node: str
    canonical: bool


def parse_name(name: str, *, payload: bool) -> FileName | None:
    """Parse ``<node>.json.gz`` (payload) or ``<node>.json`` and their conflict copies; None otherwise."""
    match = (_PAYLOAD_NAME if payload else _NODE_NAME).fullmatch(name)
    if match is None:
        return None
    return FileName(node=match["node"], canonical=not (match["copy1"] or match["copy2"]))


def _mtime(info: Mapping[str, Any]) -> float | None:
    """The modification time (epoch seconds) in an fsspec ``info`` dict, whatever the backend calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value).timestamp()
            except ValueError:
                continue
    return None


def _version(info: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What tells two versions of a listed file apart; None when the listing cannot (no caching)."""
    stamp = _mtime(info)
    tags = tuple(str(info[key]) for key in _VERSION_KEYS if info.get(key) is not None)
    if stamp is None and not tags:
        return None
    return (info.get("size"), stamp, tags)


@attrs.frozen
class _Examined:
    """What `FolderTransport.collect` made of one version of one file: a payload, or why not."""

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


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _malformed(reason: str) -> NoReturn:
    # ValueError, not TypeError: callers treat any malformed document alike (skip and log).
    raise ValueError(reason)


def state_from_data(data: object) -> SwarmState:
    """A `SwarmState` from parsed JSON; ValueError when the document is not one."""
    if not isinstance(data, dict):
        _malformed("not a JSON object")
    round_, deadline = data.get("round"), data.get("deadline")
    updated_at, coordinator = data.get("updated_at", 0.0), data.get("coordinator", "")
    if type(round_) is not int or round_ < 0:
        _malformed(f"round: expected a non-negative integer, got {round_!r}")
    if deadline is not None and not _is_number(deadline):
        _malformed("deadline: expected a finite number or null")
    if not _is_number(updated_at):
        _malformed("updated_at: expected a finite number")
    if not isinstance(coordinator, str):
        _malformed("coordinator: expected a string")
    closed_with = data.get("closed_with", [])
    if not isinstance(closed_with, list) or not all(isinstance(node, str) for node in closed_with):
        _malformed("closed_with: expected a list of node ids")
    return SwarmState(
        round=round_,
        deadline=None if deadline is None else float(deadline),
        updated_at=float(updated_at),
        coordinator=coordinator,
        closed_with=tuple(codec.validate_node_id(node) for node in closed_with),
    )


def node_from_data(data: object) -> NodeInfo:
    """A `NodeInfo` from parsed JSON; ValueError (or PayloadError) when the document is not one."""
    if not isinstance(data, dict):
        _malformed("not a JSON object")
    node, role, model = data.get("node"), data.get("role"), data.get("model", "")
    if not isinstance(node, str):
        _malformed("node: expected a string")
    codec.validate_node_id(node)
    if not isinstance(role, str) or not isinstance(model, str):
        _malformed("role and model: expected strings")
    numbers = {key: data.get(key, 0.0) for key in ("started_at", "last_seen")}
    if not all(_is_number(v) for v in numbers.values()):
        _malformed("started_at and last_seen: expected finite numbers")
    round_ = data.get("round", -1)
    if type(round_) is not int:
        _malformed("round: expected an integer")
    return NodeInfo(
        node=node,
        role=role,
        model=model,
        started_at=float(numbers["started_at"]),
        last_seen=float(numbers["last_seen"]),
        round=round_,
    )


def lease_from_data(data: object) -> Lease:
    """A `Lease` from parsed JSON; ValueError (or PayloadError) when the document is not one."""
    if not isinstance(data, dict):
        _malformed("not a JSON object")
    epoch, holder, token = data.get("epoch"), data.get("holder"), data.get("token", "")
    if type(epoch) is not int or epoch < 0:
        _malformed(f"epoch: expected a non-negative integer, got {epoch!r}")
    if not isinstance(holder, str) or not isinstance(token, str):
        _malformed("holder and token: expected strings")
    codec.validate_node_id(holder)
    numbers = {key: data.get(key, 0.0) for key in ("acquired_at", "renewed_at", "expires_at")}
    if not all(_is_number(v) for v in numbers.values()):
        _malformed("acquired_at, renewed_at and expires_at: expected finite numbers")
    return Lease(epoch=epoch, holder=holder, token=token, **{key: float(v) for key, v in numbers.items()})


def _json_bytes(data: Any) -> bytes:
    # allow_nan=False: a NaN/Infinity in state or settings would be unreadable by strict peers.
    return json.dumps(data, sort_keys=True, allow_nan=False, indent=1).encode("utf-8")


class FolderTransport:
    """The `Transport` protocol over a folder reachable through fsspec (see the module docstring).

    ``root`` is a local path or an fsspec URL (``memory://``, ``file://``, ``s3://``...);
    ``storage_options`` go to the fsspec filesystem. Raises `PayloadError` for an unsafe
    experiment name and ValueError for an empty root.
    """

    shared = True

    def __init__(
        self,
        root: str,
        experiment: str,
        *,
        secret: str = "",
        limits: codec.Limits = codec.DEFAULT_LIMITS,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not str(root).strip():
            raise ValueError("the swarm folder (root) is empty")
        self.experiment = codec.validate_experiment_name(experiment)
        self._secret = secret
        self._limits = limits
        self.fs, base = fsspec.core.url_to_fs(str(root), **dict(storage_options or {}))
        self.local = isinstance(self.fs, LocalFileSystem)  # a plain path: os-level renames, fsync, appends
        self.folder = f"{base.rstrip('/')}/{self.experiment}"
        # round -> file name -> what collect found in it (the round collected last only).
        self._examined: dict[int, dict[str, _Examined]] = {}
        # node -> the newest heartbeat read from it (what keeps it live while its file is unreadable).
        self._heartbeats: dict[str, NodeInfo] = {}

    # ----------------------------------------------------------------------------- paths

    def path(self, *parts: str) -> str:
        """The fsspec path of ``parts`` under ``<root>/<experiment>`` (parts are trusted names)."""
        return posixpath.join(self.folder, *parts)

    def payload_path(self, round: int, node: str) -> str:
        return self.path(ROUNDS_DIR, str(int(round)), f"{codec.validate_node_id(node)}.json.gz")

    # ---------------------------------------------------------------------------- writing

    def _temp_for(self, path: str) -> str:
        folder, name = posixpath.split(path)
        return posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")

    def _write_local_temp(self, tmp: str, data: bytes) -> None:
        # O_EXCL: the temp name is ours alone; fsync so the rename never exposes unwritten blocks.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _remove_quietly(self, path: str) -> None:
        # Best effort: a leftover dot-temp is ignored by readers anyway.
        with contextlib.suppress(OSError):
            self.fs.rm_file(path)

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` via a same-folder temp and a rename."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = self._temp_for(path)
        try:
            if self.local:
                self._write_local_temp(tmp, data)
                os.replace(tmp, path)
            else:
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, path)
        except BaseException:
            self._remove_quietly(tmp)
            raise

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` with ``data`` unless it exists; True when this call created it."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not self.local:
            try:
                with self.fs.open(path, "xb") as f:
                    f.write(data)
                return True
            except FileExistsError:
                return False
            except (NotImplementedError, ValueError):  # no exclusive create here: best effort
                if self.fs.exists(path):
                    return False
                self.write_atomic(path, data)
                return True
        tmp = self._temp_for(path)
        try:
            self._write_local_temp(tmp, data)
            try:
                os.link(tmp, path)  # atomic and exclusive: fails if path exists
                return True
            except FileExistsError:
                return False
            except OSError:
                # No hard links (some FUSE mounts): O_EXCL on the final name is still exclusive,
                # though a reader may briefly see it short; ensure_settings' read retries cover that.
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                return True
        finally:
            self._remove_quietly(tmp)

    # ---------------------------------------------------------------------------- reading

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        """The bytes of the regular file at ``path``, at most ``limit`` (the payload limit).

        FileNotFoundError if absent; ValueError for anything else that is not a readable regular
        file within the limit. A local file is opened first and the opened file is checked (never
        the path again): a FIFO swapped in after the listing would otherwise block forever.
        """
        limit = self._limits.max_payload_bytes if limit is None else limit
        if not self.local:
            blob = self.fs.cat_file(path, start=0, end=limit + 1)  # object stores hold no FIFOs or devices
        else:
            # No symlinks (a peer's link could point anywhere); O_NONBLOCK so a FIFO's open returns.
            flags = (
                os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
            )
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise ValueError(f"unreadable: {exc}") from exc
            with os.fdopen(fd, "rb", buffering=0) as f:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise ValueError("not a regular file (a FIFO, device or folder)")
                if info.st_size > limit:
                    raise ValueError(f"file of {info.st_size} bytes exceeds {limit}")
                try:
                    blob = f.read(limit + 1)
                except OSError as exc:
                    raise ValueError(f"unreadable: {exc}") from exc
        if len(blob) > limit:
            raise ValueError(f"file of more than {limit} bytes")
        return bytes(blob)

    def read_json(self, path: str) -> Any:
        """Parsed JSON at ``path``; FileNotFoundError if absent, ValueError if unreadable."""
        blob = self.read_bytes(path, MAX_CONTROL_FILE_BYTES)
        if blob.count(b"[") + blob.count(b"{") > MAX_CONTROL_FILE_BYTES // 64:
            raise ValueError("more arrays and objects than a control file holds")  # refused before parsing
        try:
            return json.loads(blob.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(str(exc)) from exc

    def _listing(self, folder: str) -> list[dict[str, Any]]:
        """The entries of ``folder`` (fsspec detail dicts); empty when it does not exist."""
        try:
            entries = self.fs.ls(folder, detail=True, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except TypeError:  # a filesystem whose ls takes no refresh
            try:
                entries = self.fs.ls(folder, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                return []
        return [e for e in entries if e.get("type") != "directory"]

    # -------------------------------------------------------------------------- settings

    def ensure_settings(self, settings: Mapping[str, Any]) -> Mapping[str, Any]:
        """Store ``settings`` in ``swarm.json`` unless some node already did; return the stored ones."""
        path = self.path(SETTINGS_FILE)
        self.create_exclusive(path, _json_bytes(dict(settings)))
        problem = "missing"
        for attempt in range(_SETTINGS_READ_TRIES):
            try:
                stored = self.read_json(path)
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

    def _signed(self, kind: str, data: Mapping[str, Any]) -> bytes:
        """A control file's bytes: ``data`` signed for ``kind`` and this experiment when the swarm has a secret."""
        return _json_bytes(codec.sign_document(data, self._secret, kind=kind, experiment=self.experiment))

    def _read_signed(self, path: str, kind: str) -> Any:
        """Parsed JSON of a control file whose signature holds (any, without a secret); PayloadError if not."""
        data = self.read_json(path)
        codec.verify_document(data, self._secret, kind=kind, experiment=self.experiment)
        return data

    def write_state(self, state: SwarmState) -> None:
        self.write_atomic(self.path(STATE_FILE), self._signed("state", attrs.asdict(state)))

    def read_state(self) -> SwarmState | None:
        """The stored state, or None when there is none or it cannot be read (logged)."""
        path = self.path(STATE_FILE)
        try:
            return state_from_data(self._read_signed(path, "state"))
        except FileNotFoundError:
            return None
        except (ValueError, codec.PayloadError) as exc:
            log.warning("ignoring unreadable swarm state %s: %s", path, printable(exc))
            return None

    # ------------------------------------------------------------------------------ nodes

    def heartbeat(self, node: NodeInfo) -> None:
        """Write ``nodes/<node>.json`` with ``last_seen`` set to now (this machine's clock)."""
        name = codec.validate_node_id(node.node)
        info = attrs.evolve(node, last_seen=time.time())
        self.write_atomic(self.path(NODES_DIR, f"{name}.json"), self._signed("node", attrs.asdict(info)))

    def live_nodes(self, within_seconds: float) -> list[NodeInfo]:
        """Nodes seen within ``within_seconds`` of now, sorted by id (see the module docstring on clocks).

        ``last_seen`` of each returned node is the later of its own claim and its file's mtime. A
        heartbeat that cannot be read now (half synced, replaced as it was read, or gone from a
        listing mid-sync) is "not yet", never "gone": its node stays live until the last heartbeat
        this transport read from it expires.
        """
        now = time.time()
        cutoff, future = now - within_seconds, now + MAX_CLOCK_SKEW_SECONDS
        best: dict[str, NodeInfo] = {}
        for entry in self._listing(self.path(NODES_DIR)):
            name = posixpath.basename(entry["name"])
            parsed = None if name.startswith(".") else parse_name(name, payload=False)
            if parsed is None:
                continue
            try:
                info = node_from_data(self._read_signed(entry["name"], "node"))
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
            seen = max((t for t in (info.last_seen, _mtime(entry) or 0.0) if t <= future), default=None)
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
            known = self._heartbeats.get(node)
            if known is None or info.last_seen >= known.last_seen:
                self._heartbeats[node] = info
        return [info for node, info in sorted(self._heartbeats.items()) if info.last_seen >= cutoff]

    # ----------------------------------------------------------------------------- leases

    def lease_path(self, epoch: int) -> str:
        return self.path(LEASE_DIR, f"{int(epoch)}.json")

    def _lease_entries(self) -> dict[int, dict[str, Any]]:
        """Epoch -> listing entry of each canonical ``lease/<epoch>.json``."""
        entries = {}
        for entry in self._listing(self.path(LEASE_DIR)):
            match = _LEASE_NAME.fullmatch(posixpath.basename(entry["name"]))
            if match is not None:
                entries[int(match["epoch"])] = entry
        return entries

    def _newest_epoch(self) -> int:
        """The highest epoch taken; with a secret, the highest whose lease file is signed (a forged
        ``lease/1000.json`` must not depose the coordinator)."""
        epochs = sorted(self._lease_entries(), reverse=True)
        if not self._secret:
            return epochs[0] if epochs else -1
        return next((epoch for epoch in epochs if self._stored_lease(self.lease_path(epoch)) is not None), -1)

    def _stored_lease(self, path: str) -> Lease | None:
        try:
            return lease_from_data(self._read_signed(path, "lease"))
        except (FileNotFoundError, ValueError, codec.PayloadError):
            return None

    def read_lease(self) -> Lease | None:
        """The lease of the highest epoch (see `Leases`); an unreadable one has holder ""."""
        # The highest epoch by name, signed or not: an unreadable (or forged) one reads as a lease
        # with no holder, so the next claim goes above it; it cannot depose a signed holder, whose
        # renewals look only at signed epochs (`_newest_epoch`).
        entries = self._lease_entries()
        if not entries:
            return None
        epoch = max(entries)
        mtime = _mtime(entries[epoch]) or 0.0
        try:
            lease = lease_from_data(self._read_signed(entries[epoch]["name"], "lease"))
            if lease.epoch != epoch:
                raise ValueError(f"describes epoch {lease.epoch}")
        except (FileNotFoundError, ValueError, codec.PayloadError) as exc:
            log.warning("unreadable coordinator lease %s: %s", self.lease_path(epoch), printable(exc))
            return Lease(epoch=epoch, holder="", renewed_at=mtime, expires_at=mtime)
        duration = lease.expires_at - lease.renewed_at
        return attrs.evolve(lease, expires_at=max(lease.expires_at, mtime + duration))

    def claim_lease(self, lease: Lease) -> bool:
        """Take epoch ``lease.epoch``: True for exactly one claimant, False if a higher epoch exists."""
        if self._newest_epoch() >= lease.epoch:
            return False
        path = self.lease_path(lease.epoch)
        if not self.create_exclusive(path, self._signed("lease", attrs.asdict(lease))):
            return False
        stored = self._stored_lease(path)
        return stored is not None and stored.token == lease.token and self._newest_epoch() == lease.epoch

    def renew_lease(self, lease: Lease) -> bool:
        """Rewrite the holder's own lease file; False (nothing written) once a higher epoch exists."""
        path = self.lease_path(lease.epoch)
        stored = self._stored_lease(path)
        if stored is None or stored.token != lease.token or self._newest_epoch() > lease.epoch:
            return False
        self.write_atomic(path, self._signed("lease", attrs.asdict(lease)))
        return self._newest_epoch() == lease.epoch

    # --------------------------------------------------------------------------- payloads

    def publish(self, payload: RoundPayload) -> None:
        """Write the (signed, with a secret) payload at ``rounds/<round>/<node>.json.gz``."""
        path = self.payload_path(payload.round, payload.node)
        if self._secret:
            payload = codec.sign_payload(payload, self._secret)
        self.write_atomic(path, codec.write_gz(payload, self._limits))

    def collect(self, round: int) -> Collected:
        """One valid payload per node found for ``round``, and why every other file was refused.

        Files already read are not read again unless they changed (see the module docstring).
        """
        round = int(round)
        known = self._examined.get(round, {})
        examined: dict[str, _Examined] = {}
        for entry in sorted(self._listing(self.path(ROUNDS_DIR, str(round))), key=lambda e: str(e["name"])):
            name = posixpath.basename(entry["name"])
            # Writers' temp files (.<name>.<uuid>.tmp) and OS clutter; a dot-name that looks like a
            # payload is examined (and refused: node ids never start with '.').
            if name.startswith(".") and (name.startswith("._") or parse_name(name, payload=True) is None):
                continue
            version, now = _version(entry), time.monotonic()
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
        try:
            parsed = parse_name(name, payload=True)
            if parsed is None:
                raise codec.PayloadError("not a payload file name (<node>.json.gz)")
            node = codec.validate_node_id(parsed.node)
            if entry.get("type") not in ("file", None):
                # A symlink, FIFO or device: reading it could block or never end.
                raise codec.PayloadError(f"not a regular file ({entry.get('type')})")
            size = entry.get("size")
            if isinstance(size, int) and size > self._limits.max_payload_bytes:
                raise codec.PayloadError(f"file of {size} bytes exceeds {self._limits.max_payload_bytes}")
            try:
                blob = self.read_bytes(entry["name"])
            except FileNotFoundError:
                return None  # replaced or removed since the listing: nothing to refuse
            except (OSError, ValueError) as exc:
                raise codec.PayloadError(str(exc)) from exc
            payload = codec.read_gz(blob, self._limits)
            codec.verify_signature(payload, self._secret or None)
            if payload.experiment != self.experiment:
                raise codec.PayloadError(f"payload of experiment {payload.experiment!r}, not {self.experiment!r}")
            if payload.node != node:
                raise codec.PayloadError(f"payload of node {payload.node!r} in the file of node {node!r}")
            if payload.round != round:
                raise codec.PayloadError(f"payload is for round {payload.round}, not {round}")
        except codec.PayloadError as exc:
            return _Examined(version=version, at=now, refused=str(exc))
        return _Examined(version=version, at=now, canonical=parsed.canonical, payload=payload)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def build_folder_transport(settings: object, context: BackendContext) -> FolderTransport:
    """The ``gdrive`` / ``fs`` factory: ``swarm.root`` is the folder, ``swarm.secret`` signs payloads."""
    swarm = context.config.get("swarm", {}) or {}
    root = str(swarm.get("root") or "").strip()
    if not root:
        raise ConfigError(
            "transport 'gdrive' needs the swarm's shared folder: pass --root PATH (a mounted Google Drive "
            "folder, any shared path, or an fsspec URL such as s3://bucket/swarms) or set GDRIVE_PATH"
        )
    try:
        return FolderTransport(root, context.experiment, secret=str(swarm.get("secret") or ""))
    except codec.PayloadError as exc:
        raise ConfigError(f"run.experiment: {exc}") from exc
