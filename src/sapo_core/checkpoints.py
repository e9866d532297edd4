"""The ``local`` checkpoint backend: one folder per saved round, made visible atomically.

Layout under the store's folder (``<workdir>/checkpoints`` unless ``checkpoint.dir`` says)::

    round-000012/            complete checkpoints only (renamed into place when done)
      checkpoint.json        {"round": 12, "meta": {...}}: written last, read first
      ...                    whatever the learner wrote (safetensors, JSON)
    .partial-round-000013-*  a save in progress, or one a crash left behind (ignored, swept)
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from sapo_core.interfaces import BackendContext, CheckpointInfo

MARKER = "checkpoint.json"
#: The subfolder of a checkpoint holding what only an exact continuation needs: the optimizer's state.
OPTIMIZER_DIR = "optimizer"


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
        parameters = {}
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
            marker = partial / MARKER
            with open(marker, "w", encoding="utf-8") as fh:
                json.dump({"round": round, "meta": dict(meta)}, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
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
        found = []
        if not self.folder.is_dir():
            return found
        for path in self.folder.glob("round-*"):
            try:
                data = json.loads((path / MARKER).read_text(encoding="utf-8"))
                found.append(CheckpointInfo(round=int(data["round"]), location=str(path), meta=data.get("meta", {})))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(found, key=lambda info: info.round)

    def restore(self, into: Path) -> CheckpointInfo | None:
        complete = self.list()
        if not complete:
            return None
        newest = complete[-1]
        shutil.copytree(newest.location, into, dirs_exist_ok=True)
        return newest

    def _prune(self) -> None:
        complete = self.list()
        for info in complete[: -self.keep]:
            shutil.rmtree(info.location, ignore_errors=True)
        if self.optimizer_state != "all":
            for info in complete[-self.keep : -1]:
                shutil.rmtree(Path(info.location) / OPTIMIZER_DIR, ignore_errors=True)
        for leftover in self.folder.glob(".partial-round-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def build_folder(settings: FolderCheckpointSettings | None, context: BackendContext) -> FolderCheckpointer:
    folder = Path(settings.dir) if settings and settings.dir else context.workdir / "checkpoints"
    checkpoint = context.config.get("checkpoint", {})
    return FolderCheckpointer(folder, keep=int(checkpoint.get("keep", 3)),
                              optimizer_state=str(checkpoint.get("optimizer_state", "newest")))
