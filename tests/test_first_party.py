"""`sapo_core.first_party`: the table of sapo's own backends against what the distributions register."""

from __future__ import annotations

import pytest

from sapo_core.errors import PluginError
from sapo_core.first_party import FIRST_PARTY
from sapo_core.plugins import Plugins


def loaded() -> Plugins:
    plugins = Plugins()
    plugins.load()
    return plugins


def test_the_table_is_what_the_installed_distributions_register(monkeypatch):
    monkeypatch.delenv("SAPO_DISABLE_PLUGINS")
    plugins = loaded()
    installed = {info.distribution for info in plugins.infos.values()}
    registered = {
        (r.kind, r.name): r.distribution
        for r in plugins.registry
        if r.distribution
        and r.distribution.startswith("sapo-")
        and r.distribution != "sapo-core"
        and r.kind != "task"  # tasks of a plugin carry their own prefix (rg:)
    }
    assert {"sapo-local", "sapo-openai", "sapo-vllm", "sapo-gdrive"} <= installed
    expected = {key: dist for key, dist in FIRST_PARTY.items() if dist in installed}
    assert registered == expected


def test_a_default_backend_that_is_not_installed_names_its_distribution():
    # The kernel's tests run with sapo-local disabled (tests/conftest.py): as on an API-only install.
    with pytest.raises(PluginError, match=r"Unknown learner 'grpo'\. It comes with sapo-local: pip install sapo-local"):
        loaded().registry.get("learner", "grpo")
    with pytest.raises(PluginError, match=r"Unknown inference backend 'local'\. It comes with sapo-local"):
        loaded().registry.get("inference", "local")


def test_an_unknown_name_that_is_not_ours_still_lists_the_choices():
    with pytest.raises(PluginError, match=r"Unknown learner 'ppo'\. Choose one of: "):
        loaded().registry.get("learner", "ppo")
