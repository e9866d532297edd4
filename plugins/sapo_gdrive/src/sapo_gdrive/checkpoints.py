"""The ``gdrive`` / ``fs`` checkpoint backend: checkpoints in the swarm's shared folder.

A node can then resume on another machine (a fresh Colab runtime): ``sapo run --resume
--set checkpoint.backend=gdrive`` finds its newest complete checkpoint in the shared folder.

Layout under ``<root>/<experiment>/checkpoints/<node>/``::

    round-000012/                    a checkpoint: whatever the learner wrote, then
      checkpoint.json                {"round": 12, "meta": {...}, "files": {path: size}}, written LAST
    .partial-round-000013-<uuid>/    an upload in progress, or one a crash left behind (ignored, swept)

Contracts
---------
* ``checkpoint.json`` is the completeness marker: a folder without a readable one is not a
  checkpoint, and `list` ignores it (a corrupt marker is skipped with a warning).
* On a local path (a mounted Google Drive included) the learner writes into the partial folder,
  its files are fsynced, then the marker is written and fsynced, and the folder is renamed into
  place (``os.replace``): `sapo_core.checkpoints.seal`, which the ``local`` store uses too.
  On fsspec storage without folder renames (``memory://``, ``s3://``...), the files are uploaded
  into the partial folder, moved file by file into ``round-NNNNNN/``, and the marker is written
  there last; an older marker of the same round is removed first.
* The newest ``checkpoint.keep`` complete checkpoints are kept (a pruned one loses its marker
  first, so it never looks complete while being deleted); partial folders and marker-less
  leftovers of this node are swept after each successful save.
* The optimizer state (the learner's ``optimizer/`` subfolder, `sapo_core.checkpoints.OPTIMIZER_DIR`)
  stays in the newest checkpoint only, unless ``checkpoint.optimizer_state = "all"``: after a save,
  each older checkpoint that lists it gets a marker without it, then loses the files.
* `restore` checks the size of every file the marker lists (a sync client may deliver the marker
  before the weights); when the newest checkpoint is incomplete it warns, naming the file, and
  falls back to the next older one; with none whole it raises `IncompleteCheckpoint`, saying
  what to do (`sapo_core.checkpoints.restore_newest`, shared with the ``local`` store).
* The node id and the experiment name are validated (`codec.validate_node_id`), and names read
  from the folder are parsed, never joined as given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import fsspec.core
from fsspec.implementations.local import LocalFileSystem

import sapo_core
from sapo_core import codec
from sapo_core.checkpoints import (
    MARKER,
    OPTIMIZER_DIR,
    IncompleteCheckpoint,
    check_sizes,
    drop_optimizer_state,
    file_sizes,
    fsync_dir,
    marker_bytes,
    parse_marker,
    restore_newest,
    seal,
    without_optimizer_state,
)
from sapo_core.errors import ConfigError
from sapo_core.interfaces import BackendContext, CheckpointInfo
from sapo_core.registry import Register

log = logging.getLogger("sapo.checkpoint.gdrive")

CHECKPOINTS_DIR = "checkpoints"
_ROUND_NAME = re.compile(r"round-(\d{6,})")
_PARTIAL_PREFIX = ".partial-round-"


@attrs.frozen
class FolderCheckpointSettings:
    root: str = ""  # the shared folder; default: swarm.root (--root / GDRIVE_PATH)


class FolderCheckpointer:
    """The `Checkpointer` protocol over ``<root>/<experiment>/checkpoints/<node>/`` (see the module docstring).

    ``root`` is a local path or an fsspec URL. Raises `codec.PayloadError` for an unsafe node id or
    experiment name, ValueError for an empty root or ``keep < 1``.
    """

    def __init__(
        self,
        root: str,
        experiment: str,
        node: str,
        *,
        keep: int = 3,
        optimizer_state: str = "newest",
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not str(root).strip():
            raise ValueError("the shared folder (root) is empty")
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.experiment = codec.validate_experiment_name(experiment)
        self.node = codec.validate_node_id(node)
        self.keep = keep
        self.optimizer_state = optimizer_state  # "all": the optimizer state stays in every checkpoint kept
        self.fs, base = fsspec.core.url_to_fs(str(root), **dict(storage_options or {}))
        self.local = isinstance(self.fs, LocalFileSystem)
        self.folder = posixpath.join(base.rstrip("/") or "/", self.experiment, CHECKPOINTS_DIR, self.node)

    # ------------------------------------------------------------------------------ paths

    def path(self, *parts: str) -> str:
        return posixpath.join(self.folder, *parts)

    def _location(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)

    def _entries(self) -> list[tuple[str, str]]:
        """(basename, full path) of the folders in this node's checkpoint folder."""
        try:
            entries = self.fs.ls(self.folder, detail=True, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except TypeError:  # a filesystem whose ls takes no refresh
            try:
                entries = self.fs.ls(self.folder, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                return []
        found = []
        for entry in entries:
            if entry.get("type") != "directory":
                continue
            name = posixpath.basename(str(entry["name"]).rstrip("/"))
            found.append((name, self.path(name)))  # parsed name, joined to our own folder
        return sorted(found)

    # ----------------------------------------------------------------------------- saving

    def save(self, round: int, write: Callable[[Path], None], meta: Mapping[str, Any]) -> CheckpointInfo:
        round = int(round)
        if round < 0:
            raise ValueError("round must be non-negative")
        name = f"round-{round:06d}"
        final = self.path(name)
        partial = self.path(f"{_PARTIAL_PREFIX}{round:06d}-{uuid.uuid4().hex[:8]}")
        if self.local:
            self._save_local(round, write, meta, partial, final)
        else:
            self._save_remote(round, write, meta, partial, final)
        self._prune(round)
        return CheckpointInfo(round=round, location=self._location(final), meta=meta)

    def _save_local(
        self, round: int, write: Callable[[Path], None], meta: Mapping[str, Any], partial: str, final: str
    ) -> None:
        os.makedirs(self.folder, exist_ok=True)
        os.mkdir(partial)
        try:
            write(Path(partial))
            seal(Path(partial), round, meta)  # the learner's files fsynced, then the marker
            if os.path.exists(final):  # the same round saved again (a resumed run) replaces it
                self._remove(final)
            os.replace(partial, final)
            fsync_dir(self.folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    def _save_remote(
        self, round: int, write: Callable[[Path], None], meta: Mapping[str, Any], partial: str, final: str
    ) -> None:
        with tempfile.TemporaryDirectory(prefix="sapo-checkpoint-") as tmp:
            local = Path(tmp)
            write(local)  # nothing is uploaded if the learner fails
            files = file_sizes(local)
            try:
                self.fs.makedirs(partial, exist_ok=True)
                for rel in files:
                    self.fs.put_file(str(local / rel), posixpath.join(partial, rel))
                if self.fs.exists(final):
                    self._remove(final)
                for rel in files:  # no folder rename here: move the files, the marker goes last
                    self.fs.mv(posixpath.join(partial, rel), posixpath.join(final, rel))
                self.fs.pipe_file(posixpath.join(final, MARKER), marker_bytes(round, meta, files))
            finally:
                self._remove(partial)

    def _remove(self, path: str) -> None:
        """Delete a checkpoint folder, its marker first (best effort)."""
        with contextlib.suppress(OSError):
            self.fs.rm_file(posixpath.join(path, MARKER))
        if self.local:
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                self.fs.rm(path, recursive=True)

    def _prune(self, saved: int) -> None:
        complete = self.list()
        for info in complete[: -self.keep]:
            self._remove(self.path(f"round-{info.round:06d}"))
        if self.optimizer_state != "all":
            for info in complete[-self.keep : -1]:
                self._drop_optimizer_state(self.path(f"round-{info.round:06d}"))
        rounds = {info.round for info in complete}
        for name, path in self._entries():
            match = _ROUND_NAME.fullmatch(name)
            if name.startswith(_PARTIAL_PREFIX):
                self._remove(path)
            elif match and int(match[1]) not in rounds and int(match[1]) < saved:
                self._remove(path)  # a marker-less leftover of a crashed save

    def _drop_optimizer_state(self, path: str) -> None:
        """Remove the optimizer state from the checkpoint ``path`` (best effort): first from its marker,
        so the checkpoint stays complete at every moment, then the files."""
        try:
            if self.local:
                drop_optimizer_state(Path(path))
                return
            data = self._read_marker(path)
            marker = None if data is None else without_optimizer_state(data)
            if marker is not None:
                self.fs.pipe_file(posixpath.join(path, MARKER), marker)
                self.fs.rm(posixpath.join(path, OPTIMIZER_DIR), recursive=True)
        except ValueError:
            return  # an unreadable marker: not a checkpoint to keep consistent
        except OSError as exc:
            log.warning("could not remove the optimizer state of %s: %s", self._location(path), exc)

    # ---------------------------------------------------------------------------- reading

    def _read_marker(self, path: str) -> dict[str, Any] | None:
        """The parsed marker of the folder ``path``; None if absent, ValueError if unreadable."""
        marker = posixpath.join(path, MARKER)
        try:
            blob = self.fs.cat_file(marker)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return parse_marker(blob)

    def list(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first. Folders without a readable marker are skipped."""
        found = []
        for name, path in self._entries():
            match = _ROUND_NAME.fullmatch(name)
            if match is None:
                continue
            try:
                data = self._read_marker(path)
                if data is None:
                    continue  # an upload in progress, or one a crash left behind
                round_ = data.get("round")
                if type(round_) is not int or round_ != int(match[1]):
                    raise ValueError(f"round {round_!r} does not match the folder")
            except (OSError, ValueError) as exc:
                log.warning("ignoring checkpoint %s with an unreadable %s: %s", self._location(path), MARKER, exc)
                continue
            found.append(CheckpointInfo(round=round_, location=self._location(path), meta=data.get("meta", {})))
        return sorted(found, key=lambda info: info.round)

    def restore(self, into: Path) -> CheckpointInfo | None:
        """Download the newest whole checkpoint into the local folder ``into``; its info, None when there
        is none, `IncompleteCheckpoint` when none is whole (see the module docstring)."""

        def fetch(info: CheckpointInfo, folder: Path) -> None:
            self._download(self.path(f"round-{info.round:06d}"), folder)

        return restore_newest(self.list(), fetch, into, where=self._location(self.folder), logger=log)

    def _download(self, path: str, into: Path) -> None:
        data = self._read_marker(path)
        if data is None:
            raise IncompleteCheckpoint("its marker is gone")
        files: dict[str, int] = data.get("files", {})
        into.mkdir(parents=True, exist_ok=True)
        for rel in [*sorted(files), MARKER]:
            target = into.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            source = posixpath.join(path, rel)
            if self.local:
                shutil.copyfile(source, target)
            else:
                self.fs.get_file(source, str(target))
        check_sizes(into, files)  # what arrived: a sync client may deliver the marker before the weights


def build_folder_checkpointer(settings: FolderCheckpointSettings | None, context: BackendContext) -> FolderCheckpointer:
    """The ``gdrive`` / ``fs`` factory: ``checkpoint.root`` or else ``swarm.root`` is the shared folder."""
    root = ((settings.root if settings else "") or context.config.swarm.root).strip()
    if not root:
        raise ConfigError(
            "checkpoint backend 'gdrive' needs the swarm's shared folder: pass --root PATH (a mounted Google "
            "Drive folder, any shared path, or an fsspec URL such as s3://bucket/swarms) or set GDRIVE_PATH"
        )
    keep, optimizer_state = context.config.checkpoint.keep, context.config.checkpoint.optimizer_state
    try:
        return FolderCheckpointer(root, context.experiment, context.node, keep=keep, optimizer_state=optimizer_state)
    except codec.PayloadError as exc:
        raise ConfigError(f"run.experiment / run.node_id: {exc}") from exc


@sapo_core.hookimpl
def register_checkpointers(register: Register) -> None:
    description = "Checkpoints in the shared folder (<root>/<experiment>/checkpoints/<node>), so --resume works on another machine"
    register("gdrive", build_folder_checkpointer, settings=FolderCheckpointSettings, description=description)
    register(
        "fs",
        build_folder_checkpointer,
        settings=FolderCheckpointSettings,
        description="Alias of gdrive: checkpoints in any folder or fsspec URL (file://, memory://, s3://...)",
    )
