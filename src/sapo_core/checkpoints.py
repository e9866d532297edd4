"""The ``local`` checkpoint backend: one folder per saved round, made visible atomically; and
what it shares with sapo-gdrive's store (the marker, durability, the checks on restore).

Layout under the store's folder (``<workdir>/checkpoints`` unless ``checkpoint.dir`` says)::

    round-000012/            complete checkpoints only (renamed into place when done)
      checkpoint.json        {"round": 12, "meta": {...}, "files": {path: size}}: written last, read first
      ...                    whatever the learner wrote (safetensors, JSON)
    .partial-round-000013-*  a save in progress, or one a crash left behind (ignored, swept)

Before the marker is written, every file the learner wrote is fsynced (`seal`): a marker that a
power cut leaves on disk never vouches for weights still in the page cache. `restore` checks each
file the marker lists against its size and, when one is missing or short, warns naming it and
falls back to the next older checkpoint; with none whole, it raises `IncompleteCheckpoint` saying
what to do. A marker without ``files`` (written before they were recorded) is taken as it is.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from sapo_core.errors import SapoError
from sapo_core.interfaces import BackendContext, CheckpointInfo
from sapo_core.logsafe import printable, quoted

__all__ = [
    "FolderCheckpointSettings",
    "FolderCheckpointer",
    "IncompleteCheckpoint",
    "MARKER",
    "MAX_MARKER_BYTES",
    "OPTIMIZER_DIR",
    "build_folder",
    "check_sizes",
    "drop_optimizer_state",
    "file_sizes",
    "fsync_dir",
    "fsync_tree",
    "keeps_optimizer_state",
    "marker_bytes",
    "parse_marker",
    "replace_durably",
    "restore_newest",
    "seal",
    "without_optimizer_state",
    "write_durably",
    "write_learner_state",
]

log = logging.getLogger("sapo.checkpoint")

MARKER = "checkpoint.json"
#: The subfolder of a checkpoint holding what only an exact continuation needs: the optimizer's state.
OPTIMIZER_DIR = "optimizer"
#: A marker longer than this is not one (damaged, or put there by someone else).
MAX_MARKER_BYTES = 1 << 20


class IncompleteCheckpoint(SapoError):
    """A checkpoint whose files are missing or of another size than its marker says (not synced
    yet, or damaged)."""


def keeps_optimizer_state(policy: str, *, last_round: bool) -> bool:
    """Whether a checkpoint saved under ``checkpoint.optimizer_state = policy`` holds the optimizer state.

    ``newest``: not after the run's last round (the run is done; a ``--resume`` with more rounds
    continues the weights, the schedule and the RNG with a fresh optimizer); ``all``: always; ``none``: never.
    """
    return policy == "all" or (policy == "newest" and not last_round)


def write_learner_state(learner: Any, folder: Path, *, optimizer: bool) -> None:
    """``learner.save(folder)``, without the optimizer state when ``optimizer`` is False.

    A learner whose ``save`` takes an ``optimizer`` keyword is told; one whose ``save`` does not
    writes what it writes, and an `OPTIMIZER_DIR` it made is removed.
    """
    if optimizer:
        learner.save(folder)
        return
    try:
        parameters = inspect.signature(learner.save).parameters
    except (TypeError, ValueError):
        parameters = inspect.Signature().parameters  # a callable with no readable signature: none known
    if "optimizer" in parameters:
        learner.save(folder, optimizer=False)
    else:
        learner.save(folder)
        shutil.rmtree(folder / OPTIMIZER_DIR, ignore_errors=True)


@attrs.frozen
class FolderCheckpointSettings:
    dir: str | None = None  # where checkpoints go; default: <workdir>/checkpoints


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename into ``path`` durable (best effort: not every platform lets a folder be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------ shared with sapo-gdrive's store


def file_sizes(folder: Path) -> dict[str, int]:
    """Relative POSIX path -> size of every file under ``folder``, the marker left out."""
    sizes = {
        path.relative_to(folder).as_posix(): path.stat().st_size for path in sorted(folder.rglob("*")) if path.is_file()
    }
    sizes.pop(MARKER, None)
    return sizes


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and every folder's entries, ``folder``'s own included."""
    flags = os.O_RDWR if os.name == "nt" else os.O_RDONLY  # Windows flushes only what it may write
    for path in sorted(folder.rglob("*"), reverse=True):  # a folder's files before the folder
        if path.is_dir():
            fsync_dir(path)
        elif path.is_file():
            fd = os.open(path, flags)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(folder)


def marker_bytes(round: int, meta: Mapping[str, Any], files: Mapping[str, int]) -> bytes:
    return json.dumps({"round": round, "meta": dict(meta), "files": dict(files)}, sort_keys=True, indent=1).encode(
        "utf-8"
    )


def write_durably(path: str | os.PathLike[str], data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def replace_durably(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` over the file ``path`` atomically (a fsynced same-folder temp, renamed over it)."""
    folder, name = os.path.split(os.fspath(path))
    temporary = os.path.join(folder, f".{name}-{uuid.uuid4().hex[:8]}")
    try:
        write_durably(temporary, data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    fsync_dir(folder)


def seal(folder: Path, round: int, meta: Mapping[str, Any]) -> None:
    """Make the learner's files in ``folder`` durable, then write the marker listing their sizes."""
    files = file_sizes(folder)
    fsync_tree(folder)
    write_durably(folder / MARKER, marker_bytes(round, meta, files))


def _safe_relative(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts) and "\\" not in name


def parse_marker(blob: bytes) -> dict[str, Any]:
    """A marker's contents; ValueError saying what is wrong when ``blob`` is not one."""
    if len(blob) > MAX_MARKER_BYTES:
        raise ValueError(f"{len(blob)} bytes, over the limit")
    try:
        data = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if type(data.get("round")) is not int or data["round"] < 0:
        raise ValueError("round: expected a non-negative integer")
    meta, files = data.get("meta", {}), data.get("files", {})
    if not isinstance(meta, dict):
        raise ValueError("meta: expected an object")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and _safe_relative(k) and type(v) is int and v >= 0 for k, v in files.items()
    ):
        raise ValueError("files: expected an object of relative paths to sizes")
    return data


def check_sizes(folder: Path, files: Mapping[str, int]) -> None:
    """`IncompleteCheckpoint` naming the first of ``files`` that ``folder`` lacks or holds at another size."""
    for name, size in sorted(files.items()):
        try:
            actual = folder.joinpath(*name.split("/")).stat().st_size
        except FileNotFoundError:
            raise IncompleteCheckpoint(f"{quoted(name)} is missing") from None
        if actual != size:
            raise IncompleteCheckpoint(f"{quoted(name)} has {actual} bytes, the marker says {size}")


def without_optimizer_state(data: Mapping[str, Any]) -> bytes | None:
    """The marker ``data`` (parsed) without the optimizer's files; None when it lists none."""
    prefix = OPTIMIZER_DIR + "/"
    files = data.get("files", {})
    if not any(name.startswith(prefix) for name in files):
        return None
    kept = {name: size for name, size in files.items() if not name.startswith(prefix)}
    return marker_bytes(int(data["round"]), data.get("meta", {}), kept)


def drop_optimizer_state(folder: Path) -> None:
    """Remove the optimizer state from the local checkpoint ``folder``: from its marker first, so the
    checkpoint stays complete at every moment, then the files."""
    try:
        marker = without_optimizer_state(parse_marker((folder / MARKER).read_bytes()))
    except (OSError, ValueError):
        return  # not a checkpoint (any more): nothing to keep consistent
    if marker is not None:
        replace_durably(folder / MARKER, marker)
    shutil.rmtree(folder / OPTIMIZER_DIR, ignore_errors=True)


def restore_newest(
    saved: Sequence[CheckpointInfo],
    fetch: Callable[[CheckpointInfo, Path], None],
    into: Path,
    *,
    where: str,
    logger: logging.Logger = log,
) -> CheckpointInfo | None:
    """``fetch(info, into)`` the newest of ``saved`` (oldest first) that is whole, and return its info.

    One that cannot be fetched (`IncompleteCheckpoint`, OSError, ValueError) is named in a warning
    and ``into`` emptied for the next older one. None when ``saved`` is empty; `IncompleteCheckpoint`
    naming every problem when none is whole (a resume from round 0 would silently lose the run).
    """
    into = Path(into)
    problems = []
    for info in reversed(saved):
        try:
            fetch(info, into)
            return info
        except (IncompleteCheckpoint, OSError, ValueError) as exc:
            problems.append(f"{info.location}: {printable(exc)}")
            logger.warning("checkpoint %s cannot be restored (%s); trying an older one", info.location, printable(exc))
            _empty(into)
    if not problems:
        return None
    raise IncompleteCheckpoint(
        f"no checkpoint in {where} can be restored: {'; '.join(problems)}. If a sync is still bringing its files, "
        "wait and resume again; otherwise remove these round-* folders (a resume then starts from round 0) or put "
        "back a good copy of one"
    )


def _empty(folder: Path) -> None:
    for child in list(folder.iterdir()) if folder.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ the local store


class FolderCheckpointer:
    """Checkpoints in a local folder; keeps the newest ``keep``, the optimizer state in the newest only
    (in every one with ``optimizer_state="all"``)."""

    def __init__(self, folder: Path | str, *, keep: int = 3, optimizer_state: str = "newest") -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.folder = Path(folder)
        self.keep = keep
        self.optimizer_state = optimizer_state

    def save(self, round: int, write: Callable[[Path], None], meta: Mapping[str, Any]) -> CheckpointInfo:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"round-{round:06d}"
        partial = self.folder / f".partial-round-{round:06d}-{uuid.uuid4().hex[:8]}"
        partial.mkdir()
        try:
            write(partial)
            seal(partial, round, meta)
            if final.exists():  # saving the same round again (a resumed run) replaces it
                shutil.rmtree(final)
            os.replace(partial, final)
            fsync_dir(self.folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        self._prune()
        return CheckpointInfo(round=round, location=str(final), meta=meta)

    def list(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first. Folders without a readable marker are skipped."""
        found: list[CheckpointInfo] = []
        if not self.folder.is_dir():
            return found
        for path in self.folder.glob("round-*"):
            try:
                data = parse_marker((path / MARKER).read_bytes())
            except (OSError, ValueError):
                continue
            found.append(CheckpointInfo(round=data["round"], location=str(path), meta=data.get("meta", {})))
        return sorted(found, key=lambda info: info.round)

    def restore(self, into: Path) -> CheckpointInfo | None:
        """Copy the newest whole checkpoint into ``into`` (see the module docstring); its info, or None."""
        return restore_newest(self.list(), self._fetch, into, where=str(self.folder))

    @staticmethod
    def _fetch(info: CheckpointInfo, into: Path) -> None:
        folder = Path(info.location)
        check_sizes(folder, parse_marker((folder / MARKER).read_bytes()).get("files", {}))  # before copying it
        shutil.copytree(folder, into, dirs_exist_ok=True)

    def _prune(self) -> None:
        complete = self.list()
        for info in complete[: -self.keep]:
            shutil.rmtree(info.location, ignore_errors=True)
        if self.optimizer_state != "all":
            for info in complete[-self.keep : -1]:
                drop_optimizer_state(Path(info.location))
        for leftover in self.folder.glob(".partial-round-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def build_folder(settings: FolderCheckpointSettings | None, context: BackendContext) -> FolderCheckpointer:
    folder = Path(settings.dir) if settings and settings.dir else context.workdir / "checkpoints"
    checkpoint = context.config.checkpoint
    return FolderCheckpointer(folder, keep=checkpoint.keep, optimizer_state=checkpoint.optimizer_state)
