"""The rules for names: node ids and experiment names (files on shared storage) and backend names.

One module so that configuration, the payload codec and the registry agree: a node id that the
config accepts is one the codec publishes under, on every OS.
"""

from __future__ import annotations

import re

#: Node ids and experiment names are at most this long.
MAX_ID_CHARS = 64

_ID_CHARS = re.compile(r"[A-Za-z0-9._-]+", re.ASCII)
# Control characters (C0, DEL, C1) and lone surrogates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# File names Windows refuses whatever the extension (nodes/<node>.json lands on synced folders).
WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(10)] + [f"LPT{i}" for i in range(10)]
)

# An optional "<namespace>:" groups a plugin's many names (sapo-reasoning-gym's "rg:arc_1d").
_BACKEND_NAME = re.compile(r"^(?:[a-z0-9][a-z0-9_-]{0,15}:)?[a-z0-9][a-z0-9_.-]{0,63}$")
BACKEND_NAME_RULE = "1-64 lowercase letters, digits, '-', '_' or '.', after an optional namespace such as 'rg:'"


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a node id or experiment name, or None if it can.

    1 to 64 ASCII letters, digits, ``.``, ``_`` and ``-``; not starting with ``.`` or ``-``, no
    ``..``, not ending with ``.``, not a Windows device name (``CON``, ``nul.x``...). So no path
    separators, control characters or look-alikes, and ``<experiment>/nodes/<node>.json`` stays
    inside its folder on every OS.
    """
    if not value:
        return "it is empty"
    if len(value) > MAX_ID_CHARS:
        return f"it is {len(value)} characters long (at most {MAX_ID_CHARS})"
    for sep in ("/", "\\"):
        if sep in value:
            return f"it contains a path separator {sep!r}"
    if _CONTROL.search(value):
        return "it contains a control character"
    if not _ID_CHARS.fullmatch(value):
        return "use only ASCII letters, digits, '.', '_' and '-'"
    if value[0] in ".-":
        return f"it starts with {value[0]!r}"
    if ".." in value:
        return "it contains '..'"
    if value.endswith("."):
        return "it ends with '.' (Windows drops trailing dots from file names)"
    if value.split(".", 1)[0].upper() in WINDOWS_RESERVED:
        return "it is a reserved file name on Windows"
    return None


def is_backend_name(name: str) -> bool:
    """Whether ``name`` is a valid registered backend or task name (`BACKEND_NAME_RULE`)."""
    return bool(_BACKEND_NAME.match(name))
