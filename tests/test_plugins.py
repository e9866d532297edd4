"""The plugin kernel: discovery, broken plugins, name clashes, misspelt hooks, env switches."""

from __future__ import annotations

import logging

import pytest

from sapo_core.errors import PluginError
from sapo_core.plugins import Plugins, describe

GOOD = """
from sapo_core import hookimpl

class Echo:
    def generate(self, problems, n, params):
        return [[] for _ in problems]

@hookimpl
def register_inference(register):
    register("echo", lambda settings, context: Echo(), description="test backend")
"""


def loaded() -> Plugins:
    plugins = Plugins()
    plugins.load()
    return plugins


def test_builtins_are_ordinary_plugins_registered_after_entry_points(install_dist):
    install_dist("sapo-good", "good_plugin", GOOD)
    plugins = loaded()
    names = list(plugins.infos)
    assert names.index("good_plugin") < names.index("sapo-core:tasks")
    assert plugins.infos["sapo-core:tasks"].builtin
    assert plugins.infos["good_plugin"].distribution == "sapo-good"
    assert plugins.infos["good_plugin"].version == "1.0"
    registry = plugins.registry
    assert registry.get("inference", "echo").distribution == "sapo-good"
    assert {"arithmetic", "sort", "sat", "countdown"} <= set(registry.names("task"))
    assert {"none", "memory"} <= set(registry.names("transport"))
    assert "local" in registry.names("checkpointer")


def test_the_repo_plugins_are_discovered_through_entry_points(monkeypatch):
    monkeypatch.delenv("SAPO_DISABLE_PLUGINS")
    plugins = loaded()
    assert plugins.registry.get("learner", "grpo").distribution == "sapo-local"
    dists = {info.distribution for info in plugins.infos.values()}
    assert {"sapo-local", "sapo-openai", "sapo-vllm", "sapo-gdrive"} <= dists


def test_plugin_that_raises_on_import_is_reported_and_skipped(install_dist, caplog):
    install_dist("sapo-broken", "broken_plugin", "raise RuntimeError('kaboom at import')")
    install_dist("sapo-good", "good_plugin", GOOD)
    with caplog.at_level(logging.WARNING, logger="sapo.plugins"):
        plugins = loaded()
        registry = plugins.registry
    assert "echo" in registry.names("inference")
    assert plugins.infos["broken_plugin"].error.startswith("failed to import (RuntimeError: kaboom at import)")
    assert any("broken_plugin" in r.message and "sapo-broken" in r.message and "kaboom" in r.message for r in caplog.records)


def test_strict_mode_makes_a_broken_plugin_fatal(install_dist, monkeypatch):
    install_dist("sapo-broken", "broken_plugin", "raise RuntimeError('kaboom')")
    monkeypatch.setenv("SAPO_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken_plugin.*sapo-broken.*kaboom"):
        loaded()


def test_plugin_whose_hook_raises_loses_only_that_hooks_names(install_dist, caplog):
    install_dist(
        "sapo-half",
        "half_plugin",
        """
        from sapo_core import hookimpl

        @hookimpl
        def register_tasks(register):
            register("half-task", lambda s, c: None)

        @hookimpl
        def register_inference(register):
            register("half", lambda s, c: None)
            raise ValueError("second registration exploded")
        """,
    )
    install_dist("sapo-good", "good_plugin", GOOD)
    with caplog.at_level(logging.WARNING, logger="sapo.plugins"):
        plugins = loaded()
        registry = plugins.registry
        plugins.register(object(), name="anything")  # forces a rebuild of the registry
        rebuilt = plugins.registry
    for reg in (registry, rebuilt):
        assert "half" not in reg.names("inference"), "registrations of a failing hook are all-or-nothing"
        assert "half-task" in reg.names("task"), "the plugin's other hooks still count"
        assert "echo" in reg.names("inference")
    assert caplog.text.count("second registration exploded") == 1, "warned once, not at every rebuild"
    assert plugins.infos["half_plugin"].error is None


def test_misspelt_hook_is_caught_with_a_suggestion(install_dist, caplog):
    install_dist(
        "sapo-typo",
        "typo_plugin",
        """
        from sapo_core import hookimpl

        @hookimpl
        def register_inferense(register):
            register("typo", lambda s, c: None)
        """,
    )
    with caplog.at_level(logging.WARNING, logger="sapo.plugins"):
        plugins = loaded()
    assert "typo" not in plugins.registry.names("inference")
    assert "did you mean 'register_inference'" in plugins.infos["typo_plugin"].error
    assert "register_inferense" in caplog.text


def test_hook_with_wrong_arguments_is_refused(install_dist):
    install_dist(
        "sapo-args",
        "args_plugin",
        """
        from sapo_core import hookimpl

        @hookimpl
        def register_inference(register, extra):
            pass
        """,
    )
    plugins = loaded()
    assert "refused" in plugins.infos["args_plugin"].error


def test_same_name_from_two_distributions_is_an_error_naming_both(install_dist):
    install_dist("sapo-good", "good_plugin", GOOD)
    install_dist("sapo-other", "other_plugin", GOOD)
    with pytest.raises(PluginError) as excinfo:
        loaded().registry
    message = str(excinfo.value)
    assert "inference backend 'echo'" in message
    assert "sapo-good" in message and "sapo-other" in message


def test_unknown_name_lists_the_choices():
    with pytest.raises(PluginError, match=r"Unknown inference backend 'nope'\. Choose one of: "):
        loaded().registry.get("inference", "nope")
    with pytest.raises(PluginError, match=r"Unknown task 'nope'\. Choose one of: arithmetic, countdown, sat, sort"):
        loaded().registry.get("task", "nope")


def test_invalid_backend_name_is_refused(install_dist):
    install_dist(
        "sapo-bad-name",
        "bad_name_plugin",
        """
        from sapo_core import hookimpl

        @hookimpl
        def register_rewards(register):
            register("Bad Name/..", lambda s, c: None)
        """,
    )
    plugins = loaded()
    assert "Bad Name/.." not in plugins.registry.names("reward")
    assert "names are" in plugins.infos["bad_name_plugin"].hook_errors["register_rewards"]


@pytest.mark.parametrize("selector", ["good_plugin", "sapo-good"])
def test_load_only_selected_plugins(install_dist, monkeypatch, selector):
    install_dist("sapo-good", "good_plugin", GOOD)
    install_dist("sapo-broken", "broken_plugin", "raise RuntimeError('never imported')")
    monkeypatch.setenv("SAPO_LOAD_PLUGINS", selector)
    plugins = loaded()
    assert "broken_plugin" not in plugins.infos
    assert "sapo_openai" not in plugins.infos
    assert "echo" in plugins.registry.names("inference")
    assert "arithmetic" in plugins.registry.names("task"), "built-ins always load"


def test_empty_load_list_loads_no_entry_points(install_dist, monkeypatch):
    install_dist("sapo-good", "good_plugin", GOOD)
    monkeypatch.setenv("SAPO_LOAD_PLUGINS", "")
    plugins = loaded()
    assert all(info.builtin for info in plugins.infos.values())


def test_disable_a_plugin_by_name(install_dist, monkeypatch):
    install_dist("sapo-good", "good_plugin", GOOD)
    install_dist("sapo-other", "other_plugin", GOOD)
    monkeypatch.setenv("SAPO_DISABLE_PLUGINS", "sapo-other")
    plugins = loaded()
    assert "other_plugin" not in plugins.infos
    assert plugins.registry.get("inference", "echo").distribution == "sapo-good"


def test_describe_lists_hooks_and_names(install_dist):
    install_dist("sapo-good", "good_plugin", GOOD)
    rows = {row["name"]: row for row in describe(loaded())}
    good = rows["good_plugin"]
    assert good["distribution"] == "sapo-good" and good["hooks"] == ["register_inference"]
    assert good["registers"] == {"inference": ["echo"]}
    assert rows["sapo-core:transports"]["registers"]["transport"] == ["memory", "none"]


def test_observer_that_raises_is_reported_not_fatal(caplog):
    class Noisy:
        from sapo_core import hookimpl

        @hookimpl
        def round_finished(self, context, round, metrics):
            raise RuntimeError("observer bug")

    plugins = loaded()
    plugins.register(Noisy(), name="noisy")
    with caplog.at_level(logging.WARNING, logger="sapo.plugins"):
        plugins.notify("round_finished", context=None, round=0, metrics={})
    assert "observer bug" in caplog.text


def test_registering_the_same_plugin_twice_is_harmless():
    import sapo_core.builtin.tasks as module

    plugins = loaded()
    info = plugins.register(module, name="again")
    assert info is plugins.infos["sapo-core:tasks"] and "again" not in plugins.infos


def test_sapo_plugins_fixture_registers_for_one_test(sapo_plugins):
    from sapo_core import hookimpl
    from sapo_core.plugins import get_plugins

    class Temporary:
        @hookimpl
        def register_tasks(self, register):
            register("temporary", lambda s, c: None)

    sapo_plugins.register(Temporary(), name="temporary")
    assert get_plugins() is sapo_plugins
    assert "temporary" in get_plugins().registry.names("task")


def test_fixture_registration_is_gone_in_the_next_test():
    assert "temporary" not in loaded().registry.names("task")
