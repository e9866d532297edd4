"""The ``local`` checkpoint backend: one folder per saved round, made visible atomically.

Layout under the store's folder (``<workdir>/checkpoints`` unless ``checkpoint.dir`` says)::

    round-000012/            complete checkpoints only (renamed into place when done)
      checkpoint.json        {"round": 12, "meta": {...}}: written last, read first
      ...                    whatever the learner wrote (safetensors, JSON)
    .partial-round-000013-*  a save in progress, or one a crash left behind (ignored, swept)
"""

from __future__ import annotations

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
    """Checkpoints in a local folder; keeps the newest ``keep``."""

    def __init__(self, folder: Path | str, *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.folder = Path(folder)
        self.keep = keep

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
        for info in self.list()[: -self.keep]:
            shutil.rmtree(info.location, ignore_errors=True)
        for leftover in self.folder.glob(".partial-round-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def build_folder(settings: FolderCheckpointSettings | None, context: BackendContext) -> FolderCheckpointer:
    folder = Path(settings.dir) if settings and settings.dir else context.workdir / "checkpoints"
    keep = int(context.config.get("checkpoint", {}).get("keep", 3))
    return FolderCheckpointer(folder, keep=keep)
