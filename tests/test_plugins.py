"""The plugin kernel: discovery, broken plugins, name clashes, misspelt hooks, env switches."""

from __future__ import annotations

import logging

import pytest

from sapo_core.errors import PluginError
from sapo_core.plugins import Plugins, describe

pytest_plugins = ["pytester"]  # test_fixture_registration_is_gone_in_the_next_test runs a session

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
    assert any(
        "broken_plugin" in r.message and "sapo-broken" in r.message and "kaboom" in r.message for r in caplog.records
    )


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
        _ = loaded().registry
    message = str(excinfo.value)
    assert "inference backend 'echo'" in message
    assert "sapo-good" in message and "sapo-other" in message


def test_unknown_name_lists_the_choices():
    with pytest.raises(PluginError, match=r"Unknown inference backend 'nope'\. Choose one of: "):
        loaded().registry.get("inference", "nope")
    with pytest.raises(PluginError, match=r"Unknown task 'nope'\. Choose one of"):
        loaded().registry.get("task", "nope")
    with pytest.raises(PluginError, match=r"Unknown task 'sortt'\. Did you mean 'sort'\?"):
        loaded().registry.get("task", "sortt")


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


FIXTURE_THEN_NONE = """
from sapo_core import hookimpl
from sapo_core.plugins import get_plugins

SEEN = []  # the manager the first test got, for the second


class Temporary:
    @hookimpl
    def register_tasks(self, register):
        register("temporary", lambda s, c: None)


def test_registers(sapo_plugins):
    sapo_plugins.register(Temporary(), name="temporary")
    SEEN.append(sapo_plugins)
    assert "temporary" in get_plugins().registry.names("task")


def test_after():
    assert get_plugins() is not SEEN[0]
    assert "temporary" not in get_plugins().registry.names("task")
"""


def test_fixture_registration_is_gone_in_the_next_test(pytester, monkeypatch):
    # A pytest session of its own: this suite's autouse reset of the manager (conftest.py)
    # would hide a fixture that leaves its manager behind.
    from sapo_core import plugins as plugins_module

    outer = loaded()
    monkeypatch.setattr(plugins_module, "_plugins", outer)
    pytester.makepyfile(FIXTURE_THEN_NONE)
    result = pytester.inline_run("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assertoutcome(passed=2)  # both ran, in file order, and the second saw no leak
    assert plugins_module._plugins is outer  # the process's manager was put back, not dropped


# ------------------------------------------------------------- hooks without the marker

UNDECORATED = """
from sapo_core import hookimpl

def register_inference(register):  # the decorator is missing: pluggy would skip it silently
    register("forgotten", lambda s, c: None)

@hookimpl
def register_rewards(register):
    register("kept", lambda s, c: None)
"""


def test_undecorated_hook_function_is_warned_about_naming_the_plugin(install_dist, caplog):
    install_dist("sapo-lazy", "lazy_plugin", UNDECORATED)
    with caplog.at_level(logging.WARNING, logger="sapo.plugins"):
        plugins = loaded()
    message = next(r.message for r in caplog.records if "register_inference" in r.message)
    assert "'lazy_plugin' from sapo-lazy" in message and "decorate it with @sapo_core.hookimpl" in message
    info = plugins.infos["lazy_plugin"]
    assert info.error is None and info.hooks == ["register_rewards"], "the decorated hook still counts"
    assert "kept" in plugins.registry.names("reward") and "forgotten" not in plugins.registry.names("inference")
    assert any("register_inference()" in problem for problem in plugins.problems())


def test_strict_mode_makes_an_undecorated_hook_an_error(install_dist, monkeypatch):
    install_dist("sapo-lazy", "lazy_plugin", UNDECORATED)
    monkeypatch.setenv("SAPO_STRICT_PLUGINS", "1")
    with pytest.raises(
        PluginError,
        match=r"'lazy_plugin' from sapo-lazy defines register_inference\(\) without "
        r"@sapo_core\.hookimpl.*decorate it",
    ):
        loaded()


def test_undecorated_method_of_a_plugin_object_is_warned_about(caplog):
    class Observer:
        def run_finished(self, context, metrics):
            raise AssertionError("never called")

    plugins = loaded()
    with caplog.at_level(logging.WARNING, logger="sapo.plugins"):
        plugins.register(Observer(), name="observer")
    assert plugins.infos["observer"].warnings == [
        "defines run_finished() without @sapo_core.hookimpl, so sapo never calls it; decorate it with @sapo_core.hookimpl"
    ]
    assert "'observer'" in caplog.text


# ------------------------------------------------------------------- settings classes


def settings_plugin(hook: str, decorator: str, field: str) -> str:
    return f"""
import attrs, dataclasses
from sapo_core import hookimpl

{decorator}
class ShadowSettings:
    {field}: int = 1

@hookimpl
def {hook}(register):
    register("shadowed", lambda settings, context: None, settings=ShadowSettings)
"""


@pytest.mark.parametrize(
    ("hook", "field", "key"),
    [
        ("register_inference", "temperature", "inference.temperature"),
        ("register_inference", "seed", "eval.seed"),  # eval.inference=shadowed reads its settings from eval.*
        ("register_transports", "root", "swarm.root"),
        ("register_checkpointers", "keep", "checkpoint.keep"),
        ("register_learners", "backend", "train.backend"),
    ],
)
@pytest.mark.parametrize("decorator", ["@attrs.frozen", "@dataclasses.dataclass(frozen=True)"])
def test_settings_field_named_like_a_core_key_is_refused_at_registration(install_dist, hook, field, key, decorator):
    install_dist("sapo-shadow", "shadow_plugin", settings_plugin(hook, decorator, field))
    plugins = loaded()
    assert not any(reg.name == "shadowed" for reg in plugins.registry)
    why = plugins.infos["shadow_plugin"].hook_errors[hook]
    assert "Plugin 'shadow_plugin'" in why and "shadow_plugin.ShadowSettings" in why
    assert f"field {field!r} is named like sapo's own key {key}" in why and "Rename the field" in why


def test_strict_mode_refuses_a_shadowed_settings_field(install_dist, monkeypatch):
    install_dist("sapo-shadow", "shadow_plugin", settings_plugin("register_inference", "@attrs.frozen", "top_p"))
    monkeypatch.setenv("SAPO_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"shadow_plugin.*sapo-shadow.*ShadowSettings.*'top_p'.*inference\.top_p"):
        loaded().registry.names("inference")


def test_task_and_reward_settings_may_use_core_key_names(install_dist, monkeypatch):
    """Their settings have a table of their own (tasks.<name>.*): nothing shadows them."""
    install_dist("sapo-task", "task_plugin", settings_plugin("register_tasks", "@attrs.frozen", "names"))
    monkeypatch.setenv("SAPO_STRICT_PLUGINS", "1")
    assert loaded().registry.get("task", "shadowed").settings.__name__ == "ShadowSettings"


@pytest.mark.parametrize("settings", ["Plain", "Plain()", "dict"])
def test_settings_that_are_no_attrs_class_or_dataclass_are_refused_at_registration(install_dist, settings):
    install_dist(
        "sapo-plain",
        "plain_plugin",
        f"""
        from sapo_core import hookimpl

        class Plain:
            answer: str = "42"

        @hookimpl
        def register_inference(register):
            register("plain", lambda settings, context: None, settings={settings})
        """,
    )
    plugins = loaded()
    assert "plain" not in plugins.registry.names("inference")
    why = plugins.infos["plain_plugin"].hook_errors["register_inference"]
    assert "Plugin 'plain_plugin'" in why and "@attrs.frozen" in why


def _observer(name: str, calls: list[str], **marks: bool) -> object:
    from sapo_core import hookimpl

    class Observer:
        @hookimpl(**marks)
        def round_finished(self, context, round, metrics):
            calls.append(name)

    return Observer()


@pytest.fixture
def no_installed_plugins(monkeypatch):
    """Only sapo-core's built-ins: installed observers (sapo-gdrive's) stay out of the call order."""
    monkeypatch.setenv("SAPO_LOAD_PLUGINS", "none-of-the-installed")


def test_observers_are_called_in_pluggys_order_tryfirst_first_trylast_last(no_installed_plugins):
    calls: list[str] = []
    plugins = loaded()
    plugins.register(_observer("last", calls, trylast=True), name="last")
    plugins.register(_observer("plain-1", calls), name="plain-1")
    plugins.register(_observer("first", calls, tryfirst=True), name="first")
    plugins.register(_observer("plain-2", calls), name="plain-2")
    plugins.notify("round_finished", context=None, round=0, metrics={})
    assert calls == ["first", "plain-2", "plain-1", "last"]
    calls.clear()
    plugins.pm.hook.round_finished(context=None, round=0, metrics={})  # pluggy's own call, for reference
    assert calls == ["first", "plain-2", "plain-1", "last"]


def test_hook_call_monitoring_sees_every_plugin_call(no_installed_plugins):
    seen: list[tuple[str, list[str]]] = []
    plugins = loaded()
    plugins.register(_observer("a", []), name="a")
    plugins.register(_observer("b", []), name="b")
    undo = plugins.pm.add_hookcall_monitoring(
        lambda hook, impls, kwargs: seen.append((hook, [impl.plugin_name for impl in impls])),
        lambda outcome, hook, impls, kwargs: None,
    )
    try:
        plugins.notify("round_finished", context=None, round=3, metrics={})
    finally:
        undo()
    assert seen == [("round_finished", ["b"]), ("round_finished", ["a"])]


def test_sapo_trace_plugins_writes_each_hook_call_to_stderr(no_installed_plugins, monkeypatch, capsys):
    monkeypatch.setenv("SAPO_TRACE_PLUGINS", "1")
    plugins = loaded()
    plugins.register(_observer("a", []), name="a")
    plugins.notify("round_finished", context=None, round=7, metrics={"reward/mean": 0.5})
    trace = capsys.readouterr().err
    assert "round_finished [hook]" in trace and "round: 7" in trace and "'reward/mean': 0.5" in trace
    assert trace.startswith("[sapo plugins]")
    monkeypatch.delenv("SAPO_TRACE_PLUGINS")
    loaded().notify("round_finished", context=None, round=7, metrics={})
    assert "[sapo plugins]" not in capsys.readouterr().err
