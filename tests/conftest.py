"""Shared fixtures: installing throw-away plugin distributions the way pip does."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sapo_core import plugins as plugins_module


@pytest.fixture
def install_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Install a one-module distribution with a ``sapo`` entry point into a folder on sys.path.

    ``install_dist("sapo-broken", "broken", "raise ImportError('nope')")`` writes
    ``broken.py`` and ``sapo_broken-1.0.dist-info/{METADATA,entry_points.txt}``, exactly what
    pip leaves in site-packages, so `importlib.metadata` finds it like any installed plugin.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def install(dist: str, module: str, code: str, *, version: str = "1.0", entry_point: str | None = None) -> None:
        (site / f"{module}.py").write_text(textwrap.dedent(code), encoding="utf-8")
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[sapo]\n{entry_point or module} = {module}\n", encoding="utf-8")
        modules.append(module)

    yield install
    for module in modules:
        sys.modules.pop(module, None)


@pytest.fixture(autouse=True)
def _fresh_plugin_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts without a loaded plugin manager and without plugin env settings.

    The kernel's tests run without sapo-local (torch, a real model): the learner and the
    local generation are tested in plugins/sapo_local/tests. A test that wants it removes
    the variable.
    """
    for name in ("SAPO_LOAD_PLUGINS", "SAPO_STRICT_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAPO_DISABLE_PLUGINS", "sapo-local")
    plugins_module.reset_plugins()
    yield
    plugins_module.reset_plugins()
