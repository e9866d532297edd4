"""The swarm test doubles (swarm_doubles.py) as an importable module, and the ``swarm_plugins`` fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from sapo_core.testing import import_by_path

# Tests run with --import-mode=importlib, so the helper module is loaded by path, once.
import_by_path("sapo_gdrive_swarm_doubles", Path(__file__).with_name("swarm_doubles.py"))

from sapo_gdrive_swarm_doubles import Backends  # noqa: E402


@pytest.fixture
def _torch_free(monkeypatch):
    monkeypatch.setenv("SAPO_DISABLE_PLUGINS", "sapo-local")


@pytest.fixture
def swarm_plugins(_torch_free, sapo_plugins):
    """The process's plugins without sapo-local (no torch), plus the oracle/recorder test backends."""
    backends = Backends()
    sapo_plugins.register(backends, name="test-backends")
    return sapo_plugins, backends
