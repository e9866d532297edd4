"""The `sapo` command line, in-process through click and once as the installed executable."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sapo_core import hookimpl
from sapo_core.testing import ORACLE_INFERENCE


def test_plugins_json_lists_distributions_hooks_and_names(sapo_cli):
    result = sapo_cli("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["sapo-core:tasks"]["registers"]["task"] == ["arithmetic", "countdown", "sat", "sort"]
    assert rows["sapo-core:tasks"]["hooks"] == ["register_tasks"]
    assert rows["sapo_openai"]["distribution"] == "sapo-openai"
    assert rows["sapo_openai"]["version"] == "0.1.0"


def test_plugins_table(sapo_cli):
    result = sapo_cli("plugins", env={"COLUMNS": "200"})  # rows whole whatever the terminal's width
    assert result.exit_code == 0
    assert "sapo-gdrive" in result.output and "memory, none" in result.output


def test_tasks_list_and_show_are_deterministic(sapo_cli):
    listing = json.loads(sapo_cli("tasks", "--json").output)
    assert [row["name"] for row in listing if row["distribution"] == "sapo-core"] == [
        "arithmetic",
        "countdown",
        "sat",
        "sort",
    ]
    first = sapo_cli("tasks", "show", "arithmetic", "--seed", "7", "--json")
    again = sapo_cli("tasks", "show", "arithmetic", "--seed", "7", "--json")
    other = sapo_cli("tasks", "show", "arithmetic", "--seed", "8", "--json")
    assert first.exit_code == 0, first.output
    assert first.output == again.output != other.output
    problem = json.loads(first.output)
    assert problem["task"] == "arithmetic" and problem["messages"][-1]["role"] == "user"
    text = sapo_cli("tasks", "show", "sort", "--seed", "1").output
    assert "[user]" in text and "[answer]" in text


def test_tasks_show_takes_task_settings(sapo_cli):
    easy = json.loads(sapo_cli("tasks", "show", "arithmetic", "--seed", "1", "--json").output)
    hard = sapo_cli("tasks", "show", "arithmetic", "--seed", "1", "--json", "--set", "tasks.arithmetic.difficulty=5")
    assert hard.exit_code == 0, hard.output
    assert json.loads(hard.output)["id"] != easy["id"]
    unknown = sapo_cli("tasks", "show", "nope")
    assert unknown.exit_code == 1 and "Unknown task 'nope'. Choose one of" in unknown.output


def test_config_shows_sources_and_redacts_secrets(sapo_cli, tmp_path):
    file = tmp_path / "sapo.toml"
    file.write_text('[inference]\ntemperature = 0.5\n[swarm]\nsecret = "file-secret"\n')
    env = {"NODE_ID": "colab-1", "SAPO_SWARM_SECRET": "env-secret", "COLUMNS": "200"}  # one row a key
    result = sapo_cli("config", "--config", str(file), "--inference", "openai", "--set", "inference.top_p=0.9", env=env)
    assert result.exit_code == 0, result.output
    assert "secret" not in result.output.replace("swarm.secret", "")
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "file" in lines["inference.temperature"] and "0.5" in lines["inference.temperature"]
    assert "NODE_ID" in lines["run.node_id"]
    assert "--inference" in lines["inference.backend"]
    assert "--set" in lines["inference.top_p"]
    data = json.loads(sapo_cli("config", "--json", "--inference", "openai", env=env).output)
    assert data["run"]["node_id"] == "colab-1"
    assert data["swarm"]["secret"] == "***"


def test_config_errors_name_the_key_and_suggest(sapo_cli):
    result = sapo_cli("config", "--set", "inference.temprature=0.3")
    assert result.exit_code == 1
    assert "inference.temprature" in result.output and "inference.temperature" in result.output


SETTINGS_PLUGIN = """
import attrs
from sapo_core import hookimpl


@attrs.frozen
class Settings:
    lr: float = 1e-5


@hookimpl
def register_learners(register):
    register("strict", lambda settings, context: None, settings=Settings)


@hookimpl
def register_inference(register):
    register("plain", lambda settings, context: None)
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--inference", "nonexistent"), "Unknown inference backend 'nonexistent'"),
        (("--set", "tasks.arithmetic.difficulty=9"), "tasks.arithmetic.difficulty"),
        (
            ("--inference", "plain", "--role", "worker", "--set", "train.backend=strict", "--set", "train.lr=abc"),
            "train.lr = 'abc'",
        ),
        (
            ("--inference", "plain", "--role", "worker", "--set", "train.backend=strict", "--set", "train.lrr=1e-5"),
            "Unknown key 'train.lrr'",
        ),
    ],
)
def test_config_refuses_what_run_would_refuse_before_loading_anything(sapo_cli, install_dist, args, message):
    install_dist("sapo-strict", "strict_plugin", SETTINGS_PLUGIN)
    from sapo_core.plugins import reset_plugins

    reset_plugins()
    for command in ("config", "run"):
        result = sapo_cli(command, *args, "--set", "run.experiment=preflight")
        assert result.exit_code == 1, (command, result.output)
        assert message in result.output, (command, result.output)


def test_run_drives_a_third_party_backend_through_a_round(sapo_cli, install_dist, tmp_path):
    install_dist("sapo-oracle", "oracle_plugin", ORACLE_INFERENCE)
    install_dist("sapo-broken", "broken_plugin", "raise ImportError('missing dependency: frobnicate')")
    from sapo_core.plugins import reset_plugins

    reset_plugins()  # the fixture's manager was loaded before these were installed
    result = sapo_cli(
        "run",
        "--inference",
        "oracle",
        "--transport",
        "none",
        "--rounds",
        "1",
        "--set",
        f"run.workdir={tmp_path.as_posix()}",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["round"] == 0 and metrics["groups/local"] == 8
    assert metrics["reward/mean"] > 0.5, "always-right answers score on correctness"
    run_dirs = [p.parent for p in tmp_path.glob("default/*/metrics.jsonl")]
    assert len(run_dirs) == 1 and re.fullmatch(r"\d{8}-\d{6}", run_dirs[0].name), "runs/<experiment>/<UTC timestamp>"


def test_run_dir_flag_and_the_run_directory_layout(sapo_cli, install_dist, tmp_path):
    install_dist("sapo-oracle", "oracle_plugin", ORACLE_INFERENCE)
    from sapo_core.plugins import reset_plugins

    reset_plugins()
    folder = tmp_path / "here"
    result = sapo_cli(
        "run",
        "--inference",
        "oracle",
        "--rounds",
        "2",
        "--run-dir",
        str(folder),
        "--set",
        "eval.every=1",
        "--set",
        "eval.problems=3",
        "--set",
        "swarm.secret=psst",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["eval/pass@1"] == 1.0 and metrics["eval/problems"] == 3
    assert sorted(p.name for p in (folder / "metrics").iterdir()) == [
        "eval_iter_000.json",
        "eval_iter_001.json",
        "train_iter_000.json",
        "train_iter_001.json",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["run"]["dir"] == str(folder) and config["swarm"]["secret"] == "***"
    assert "psst" not in result.output
    assert [line.split(":")[0] for line in result.stderr.splitlines() if " round " in line] == [
        "node-0 round 1/2",
        "node-0 round 2/2",
    ]
    shown = sapo_cli("config", "--run-dir", "elsewhere", "--inference", "oracle")
    assert any(line.split()[:3] == ["run.dir", '"elsewhere"', "--run-dir"] for line in shown.output.splitlines())


def test_run_reports_bad_input_without_a_traceback(sapo_cli, tmp_path):
    result = sapo_cli(
        "run", "--inference", "nope", "--set", f"run.workdir={tmp_path.as_posix()}", "--role", "contributor"
    )
    assert result.exit_code == 1
    assert "Unknown inference backend 'nope'. Choose one of:" in result.output
    assert "Traceback" not in result.output


class HelloCommand:
    """A plugin that adds ``sapo hello``."""

    @hookimpl
    def register_commands(self, cli):
        import click

        @cli.command()
        def hello():
            click.echo("hello from a plugin")


def test_plugins_can_add_commands(sapo_plugins, sapo_cli):
    sapo_plugins.register(HelloCommand(), name="commands")
    assert sapo_cli("hello").output == "hello from a plugin\n"


def test_plugin_commands_cannot_replace_builtin_ones(sapo_plugins, sapo_cli, caplog):
    import click

    class Hijack:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="run")
            def run():
                click.echo("hijacked")

    sapo_plugins.register(Hijack(), name="hijack")
    with caplog.at_level(logging.WARNING, logger="sapo.plugins"):
        result = sapo_cli("run", "--help")
    assert "hijacked" not in result.output and "Run a node" in result.output
    assert "'sapo run' already exists" in caplog.text


def test_plugin_commands_do_not_leak_between_clis(sapo_plugins, sapo_cli):
    # Both CLIs in this one test, so it holds in any order (it used to rely on the test above
    # running first, and passed on its own whatever build_cli did).
    sapo_plugins.register(HelloCommand(), name="commands")
    assert "hello" in sapo_cli("--help").output
    sapo_plugins.unregister("commands")
    assert "hello" not in sapo_cli("--help").output, "a CLI built without the plugin has no command of it"


def test_installed_executable_survives_a_broken_plugin(install_dist, tmp_path):
    install_dist("sapo-broken", "broken_plugin", "raise RuntimeError('kaboom')")
    site = next(p for p in sys.path if p.endswith("site") and Path(p, "broken_plugin.py").exists())
    env = {**os.environ, "PYTHONPATH": site}
    sapo = Path(sys.executable).with_name("sapo")
    result = subprocess.run([str(sapo), "plugins", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert "kaboom" in rows["broken_plugin"]["error"]
    assert "broken_plugin" in result.stderr and "sapo-broken" in result.stderr


# ------------------------------------------------------------ dataclass settings

DATACLASS_PLUGIN = """
import dataclasses
from sapo_core import hookimpl
from sapo_core.records import Completion


@dataclasses.dataclass(frozen=True)
class EchoSettings:
    answer: int = 42
    words: tuple[str, ...] = ()

    def __post_init__(self):
        if self.answer < 0:
            raise ValueError("answer must be >= 0")


class Echo:
    def __init__(self, settings):
        self.settings = settings

    def generate(self, problems, n, params):
        return [[Completion(text=f"<answer>{self.settings.answer}</answer>") for _ in range(n)] for _ in problems]

    def round_metrics(self):
        return {"answer": self.settings.answer, "words": len(self.settings.words)}


@hookimpl
def register_inference(register):
    register("echo", lambda settings, context: Echo(settings), settings=EchoSettings)
"""


def test_dataclass_settings_are_filled_from_the_config_like_attrs_ones(sapo_cli, install_dist, tmp_path):
    install_dist("sapo-echo", "echo_plugin", DATACLASS_PLUGIN)
    from sapo_core.plugins import reset_plugins

    reset_plugins()
    result = sapo_cli(
        "run",
        "--inference",
        "echo",
        "--rounds",
        "1",
        "--set",
        "inference.answer=7",
        "--set",
        "inference.words=a,b",
        "--set",
        f"run.workdir={tmp_path.as_posix()}",
        env={"SAPO_STRICT_PLUGINS": "1"},
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["inference/answer"] == 7 and metrics["inference/words"] == 2


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("inference.answer=abc", "inference.answer = 'abc' (from --set): expected an integer"),
        ("inference.answer=-1", "answer must be >= 0"),
        ("inference.answr=1", "Unknown key 'inference.answr' (from --set). Did you mean 'inference.answer'?"),
    ],
)
def test_dataclass_settings_errors_are_config_errors(sapo_cli, install_dist, tmp_path, setting, message):
    install_dist("sapo-echo", "echo_plugin", DATACLASS_PLUGIN)
    from sapo_core.plugins import reset_plugins

    reset_plugins()
    for command in ("config", "run"):
        result = sapo_cli(
            command, "--inference", "echo", "--set", setting, "--set", f"run.workdir={tmp_path.as_posix()}"
        )
        assert result.exit_code == 1, (command, result.output)
        assert message in result.output and "Traceback" not in result.output, (command, result.output)


# --------------------------------------------------------- sapo plugins, --check

CLASHING = """
from sapo_core import hookimpl

@hookimpl
def register_inference(register):
    register("twin", lambda settings, context: None)
"""


def test_plugins_lists_everything_and_shows_a_name_clash(sapo_cli, install_dist):
    install_dist("sapo-twin-a", "twin_a", CLASHING)
    install_dist("sapo-twin-b", "twin_b", CLASHING)
    from sapo_core.plugins import reset_plugins

    reset_plugins()
    result = sapo_cli("plugins", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "twin_a" in result.output and "twin_b" in result.output and "sapo-core:tasks" in result.output
    clash = next(line for line in result.output.splitlines() if "Two plugins register" in line)
    assert "'twin'" in clash and "sapo-twin-a (plugin 'twin_a')" in clash and "sapo-twin-b (plugin 'twin_b')" in clash
    rows = {row["name"]: row for row in json.loads(sapo_cli("plugins", "--json").output)}
    for name in ("twin_a", "twin_b"):
        assert rows[name]["registers"] == {"inference": ["twin"]} and "Two plugins register" in rows[name]["clashes"][0]
    assert rows["sapo-core:tasks"]["clashes"] == []
    assert sapo_cli("run", "--inference", "twin").exit_code == 1, "a run still refuses to pick one"


def test_plugins_check_exits_1_saying_what_is_wrong_and_what_to_do(sapo_cli, install_dist):
    install_dist("sapo-twin-a", "twin_a", CLASHING)
    install_dist("sapo-twin-b", "twin_b", CLASHING)
    install_dist("sapo-broken", "broken_plugin", "raise ImportError('missing dependency: frobnicate')")
    from sapo_core.plugins import reset_plugins

    reset_plugins()
    result = sapo_cli("plugins", "--check")
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("- ")]
    assert len(problems) == 2 and "2 problem(s)" in result.output
    assert (
        "'broken_plugin' from sapo-broken failed to import (ImportError: missing dependency: frobnicate)" in problems[0]
    )
    assert "SAPO_DISABLE_PLUGINS=broken_plugin" in problems[0]
    assert "Two plugins register the inference backend 'twin'" in problems[1] and "Uninstall or disable" in problems[1]
    assert sapo_cli("plugins", "--check", "--json").exit_code == 1


def test_plugins_check_exits_0_when_all_is_well(sapo_cli):
    result = sapo_cli("plugins", "--check")
    assert result.exit_code == 0, result.output
    assert "plugins load without problems" in result.output
