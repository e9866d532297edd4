"""The entry point of sapo-gdrive (group `sapo`): the folder transport, as ``gdrive`` and ``fs``."""

from __future__ import annotations

import sapo_core
from sapo_core.registry import Register
from sapo_gdrive import (
    launcher,  # noqa: F401  (adds `sapo swarm run` to the swarm group)
    table,  # noqa: F401  (adds `sapo swarm table`)
)

# The module pluggy registers is this one: the other modules' hook implementations join it here.
from sapo_gdrive.checkpoints import register_checkpointers  # noqa: F401
from sapo_gdrive.folder import build_folder_transport
from sapo_gdrive.observers import round_finished, run_finished, run_started  # noqa: F401
from sapo_gdrive.status import register_commands  # noqa: F401


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
