"""The plugins use sapo-core only through its documented surface: each module's `__all__` (docs/plugins.md)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def core_imports() -> dict[str, set[str]]:
    """Module -> the names the plugins' sources import from it (``from sapo_core.<module> import <name>``)."""
    used: dict[str, set[str]] = {}
    for path in sorted(ROOT.glob("plugins/*/src/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sapo_core."):
                used.setdefault(node.module or "", set()).update(alias.name for alias in node.names)
    return used


def test_plugins_import_only_what_core_modules_export():
    used = core_imports()
    assert "sapo_core.records" in used  # the walk found the plugins
    outside = {
        module: sorted(names - set(getattr(importlib.import_module(module), "__all__", ())))
        for module, names in used.items()
    }
    assert {module: names for module, names in outside.items() if names} == {}
