"""Built-in checkpoint backend ``local``: atomic folders on this machine's disk."""

from __future__ import annotations

from sapo_core import hookimpl
from sapo_core.checkpoints import FolderCheckpointSettings, build_folder
from sapo_core.registry import Register


@hookimpl
def register_checkpointers(register: Register) -> None:
    register(
        "local",
        build_folder,
        settings=FolderCheckpointSettings,
        description="One folder per saved round on local disk; keeps the newest checkpoint.keep",
    )
