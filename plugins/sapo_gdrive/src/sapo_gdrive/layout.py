"""The names in a swarm folder: its files and folders (``swarm.json``, ``state.json``, ``nodes/``,
``rounds/``, ``lease/``: the layout drawn in the `sapo_gdrive.folder` docstring), and how a name
read from it is parsed.
"""

from __future__ import annotations

import re

import attrs

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
LEASE_NAME = re.compile(r"(?P<epoch>[0-9]{1,18})\.json")


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
