"""`FolderStore`: one experiment's folder through fsspec: atomic writes, exclusive creates, reads
that never block or overrun, listings, and signed control files.

The contracts these keep are in the `sapo_gdrive.folder` docstring (atomic writes, exclusive
create, every file opened before it is checked).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import stat
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypedDict

import fsspec.core
from fsspec.implementations.local import LocalFileSystem

from sapo_core import codec

#: The largest control file (heartbeat, state, lease, swarm.json) read: they are a few hundred
#: bytes, and every node reads every heartbeat at every poll.
MAX_CONTROL_FILE_BYTES = 1024 * 1024
# Listing keys that name a version of a file on some fsspec backend (inode, object etags, generations).
_VERSION_KEYS = ("ino", "ETag", "etag", "md5Hash", "generation", "version_id")


def mtime(info: Mapping[str, Any]) -> float | None:
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


def file_version(info: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What tells two versions of a listed file apart; None when the listing cannot (no caching)."""
    stamp = mtime(info)
    tags = tuple(str(info[key]) for key in _VERSION_KEYS if info.get(key) is not None)
    if stamp is None and not tags:
        return None
    return (info.get("size"), stamp, tags)


def json_bytes(data: Any) -> bytes:
    # allow_nan=False: a NaN/Infinity in state or settings would be unreadable by strict peers.
    return json.dumps(data, sort_keys=True, allow_nan=False, indent=1).encode("utf-8")


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


class StoreOptions(TypedDict, total=False):
    """`FolderStore`'s keyword options, which `FolderTransport` passes through."""

    secret: str
    limits: codec.Limits
    storage_options: Mapping[str, Any] | None


class FolderStore:
    """``<root>/<experiment>`` through fsspec; ``root`` is a local path or an fsspec URL
    (``memory://``, ``file://``, ``s3://``...) and ``storage_options`` go to its filesystem.

    ``secret`` signs the control files (`signed` / `read_signed`); ``limits`` bound what
    `read_bytes` reads. Raises `PayloadError` for an unsafe experiment name and ValueError for
    an empty root.
    """

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
        self.secret = secret
        self.limits = limits
        self.fs, base = fsspec.core.url_to_fs(str(root), **dict(storage_options or {}))
        self.local = isinstance(self.fs, LocalFileSystem)  # a plain path: os-level renames, fsync, appends
        self.folder = f"{base.rstrip('/')}/{self.experiment}"

    def path(self, *parts: str) -> str:
        """The fsspec path of ``parts`` under ``<root>/<experiment>`` (parts are trusted names)."""
        return posixpath.join(self.folder, *parts)

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
        limit = self.limits.max_payload_bytes if limit is None else limit
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

    def listing(self, folder: str) -> list[dict[str, Any]]:
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

    # ------------------------------------------------------------------- control files

    def signed(self, kind: str, data: Mapping[str, Any]) -> bytes:
        """A control file's bytes: ``data`` signed for ``kind`` and this experiment when the swarm has a secret."""
        return json_bytes(codec.sign_document(data, self.secret, kind=kind, experiment=self.experiment))

    def read_signed(self, path: str, kind: str) -> Any:
        """Parsed JSON of a control file whose signature holds (any, without a secret); PayloadError if not."""
        data = self.read_json(path)
        codec.verify_document(data, self.secret, kind=kind, experiment=self.experiment)
        return data
