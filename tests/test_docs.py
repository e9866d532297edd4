"""docs/plugins.md documents every hook and Protocol exactly, and its plugin examples work.

* Every hook spec of `sapo_core.hookspecs` (the functions pluggy marked with ``sapo_spec``) has a
  heading naming it and its signature line, ``def name(...) -> ...:``, in a code block, exactly as
  `inspect.signature` renders it (postponed annotations shown as written, without quotes).
* Every Protocol of `sapo_core.interfaces` has a ``### `Name` `` section whose code block lists
  each of its attributes and method signature lines.
* Every ``python`` code block with an ``import`` compiles; every one with ``@sapo_core.hookimpl``
  is a plugin: it is registered (strictly), each backend it registers is built with its default
  settings and passed through its kind's contract check, and all of them together run a node.
* The ``sapo plugins --json`` example is the real output with sapo-hello installed, and the
  commands of docs/examples/sapo-hello/README.md print and write what it says.
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import click
import pytest
from click.testing import CliRunner

from sapo_core import hookspecs, interfaces, testing
from sapo_core import plugins as plugins_module
from sapo_core.config import load_config
from sapo_core.interfaces import BackendContext
from sapo_core.node import Node
from sapo_core.plugins import Plugins
from sapo_core.records import Completion, Group
from sapo_core.testing import check_inference, check_reward, check_transport, sample_problems

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HELLO = DOC.parent / "examples" / "sapo-hello"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PROTOCOLS = {"Task", "InferenceBackend", "RewardFunction", "Transport", "Checkpointer", "Learner"}
OBSERVERS = ("run_started", "round_finished", "run_finished")


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def code_blocks(text: str, lang: str | None = None) -> list[str]:
    return [body for tag, body in FENCE.findall(text) if lang is None or tag == lang]


def code_lines(text: str) -> list[str]:
    return [line.strip() for body in code_blocks(text) for line in body.splitlines()]


def headings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


def section(text: str, title: str) -> str:
    """The text under the heading ``### `title` `` up to the next heading."""
    match = re.search(rf"^### `{re.escape(title)}`\n(.*?)(?=^#)", text + "\n#", re.MULTILINE | re.DOTALL)
    assert match, f"docs/plugins.md has no section '### `{title}`'"
    return match.group(1)


class _Written(str):
    """A string annotation that `inspect` renders as written (``Register``, not ``'Register'``)."""

    def __repr__(self) -> str:
        return str(self)


def signature_line(func: Callable[..., Any], name: str | None = None) -> str:
    """``def name(args) -> ret:`` as `inspect.signature` renders ``func``."""

    def written(annotation: Any) -> Any:
        return _Written(annotation) if isinstance(annotation, str) else annotation

    sig = inspect.signature(func)
    sig = sig.replace(
        parameters=[p.replace(annotation=written(p.annotation)) for p in sig.parameters.values()],
        return_annotation=written(sig.return_annotation),
    )
    return f"def {name or func.__name__}{sig}:"


HOOKS = sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "sapo_spec"))


def protocols() -> dict[str, type]:
    return {
        name: value
        for name, value in vars(interfaces).items()
        if inspect.isclass(value) and value.__module__ == interfaces.__name__ and getattr(value, "_is_protocol", False)
    }


# --------------------------------------------------------------------------- hooks


def test_hook_list_is_the_plugin_managers() -> None:
    assert HOOKS and HOOKS == Plugins(builtins=()).hook_names()


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook: str) -> None:
    text = doc_text()
    assert any(f"`{hook}`" in heading for heading in headings(text)), f"no heading names the hook {hook!r}"
    expected = signature_line(getattr(hookspecs, hook))
    assert any(line.startswith(expected) for line in code_lines(text)), (
        f"docs/plugins.md lacks the signature of {hook!r} in a code block; expected the line:\n{expected}"
    )


def test_signature_rendering() -> None:
    assert signature_line(hookspecs.round_finished) == (
        "def round_finished(context: BackendContext, round: int, metrics: Mapping[str, Any]) -> None:"
    )


# ------------------------------------------------------------------------ protocols


def test_protocols_are_found() -> None:
    assert PROTOCOLS <= set(protocols())


@pytest.mark.parametrize("name", sorted(protocols()))
def test_every_protocol_is_documented(name: str) -> None:
    cls = protocols()[name]
    lines = [line.strip() for body in code_blocks(section(doc_text(), name)) for line in body.splitlines()]
    for attr, annotation in vars(cls).get("__annotations__", {}).items():
        assert f"{attr}: {annotation}" in lines, f"{name}.{attr} is not documented"
    methods = {k: v for k, v in vars(cls).items() if inspect.isfunction(v) and not k.startswith("_")}
    assert methods, f"{name} has no methods?"
    for method_name, method in methods.items():
        expected = signature_line(method)
        assert any(line.startswith(expected) for line in lines), f"{name}.{method_name}: expected the line\n{expected}"


def test_optional_methods_and_testing_helpers_are_documented() -> None:
    text = doc_text()
    for needle in (
        "close()",
        "round_metrics()",
        "sapo_plugins",
        "sapo_cli",
        "check_inference",
        "check_reward",
        "check_transport",
        "SAPO_LOAD_PLUGINS",
        "SAPO_DISABLE_PLUGINS",
        "SAPO_STRICT_PLUGINS",
        "[project.entry-points.sapo]",
        "factory(settings, context)",
        "sapo plugins --check",
        "StopRun",
        "round` **-1**",
    ):
        assert needle in text, f"docs/plugins.md does not mention {needle}"


# ------------------------------------------------------------------------- examples


def example_sources() -> list[str]:
    return [body for body in code_blocks(doc_text(), "python") if "import " in body]


def plugin_sources() -> list[str]:
    return [body for body in example_sources() if "@sapo_core.hookimpl" in body]


def test_examples_compile() -> None:
    assert len(plugin_sources()) >= 8  # one per registry hook, commands, observers, the quick start
    for index, source in enumerate(example_sources()):
        compile(source, f"docs/plugins.md example {index}", "exec")


@pytest.fixture
def doc_plugins(monkeypatch: pytest.MonkeyPatch) -> tuple[Plugins, list[types.ModuleType]]:
    """The plugin examples as modules, on a plugin manager with nothing else (strict)."""
    monkeypatch.setenv("SAPO_LOAD_PLUGINS", "")
    monkeypatch.setenv("SAPO_STRICT_PLUGINS", "1")
    plugins = Plugins(builtins=())
    plugins.load()
    modules = []
    for index, source in enumerate(plugin_sources()):
        module = types.ModuleType(f"sapo_docs_example_{index}")
        monkeypatch.setitem(sys.modules, module.__name__, module)
        exec(compile(source, f"docs/plugins.md example {index}", "exec"), module.__dict__)  # noqa: S102 (our own docs)
        assert plugins.register(module, name=f"example-{index}") is not None
        modules.append(module)
    monkeypatch.setattr(plugins_module, "_plugins", plugins)
    return plugins, modules


def group_of(completions: list[Completion], rewards: list[float]) -> Group:
    mean = sum(rewards) / len(rewards)
    return Group(
        problem=sample_problems()[0],
        completions=completions,
        rewards=rewards,
        advantages=[r - mean for r in rewards],
        node="node-a",
    )


def check_backend(kind: str, name: str, backend: Any, tmp_path: Path) -> None:
    if kind == "task":
        assert isinstance(backend, interfaces.Task)
        problem = backend.generate(7)
        assert problem == backend.generate(7) and problem.task == name
        for hostile in ("", "x" * 100_000, "\x00\u202e", str(problem.answer) * 1000):
            assert 0.0 <= backend.verify(problem, hostile) <= 1.0
        assert backend.verify(problem, str(problem.answer)) == 1.0
    elif kind == "inference":
        assert isinstance(backend, interfaces.InferenceBackend)
        assert all(len(completions) == 3 for completions in check_inference(backend, n=3))
    elif kind == "reward":
        assert isinstance(backend, interfaces.RewardFunction)
        check_reward(backend, sample_problems()[0], ["<think>because</think>\n<answer>2</answer>"])
    elif kind == "transport":
        assert isinstance(backend, interfaces.Transport)
        check_transport(backend)
    elif kind == "checkpointer":
        assert isinstance(backend, interfaces.Checkpointer)
        for round in range(5):
            backend.save(round, lambda folder, r=round: (folder / "w.json").write_text(str(r)), {"round": round})
        saved = backend.list()
        assert [info.round for info in saved] == [2, 3, 4]  # keep: 3 by default
        into = tmp_path / "restored"
        info = backend.restore(into)
        assert info is not None and info.round == 4 and (into / "w.json").read_text() == "4"
    elif kind == "learner":
        assert isinstance(backend, interfaces.Learner)
        metrics = backend.train([group_of([Completion("a"), Completion("b")], [1.0, 0.0])], 0)
        assert all(isinstance(value, (int, float)) for value in metrics.values())
        backend.save(tmp_path)
        backend.load(tmp_path)
    else:  # pragma: no cover - a new kind needs a check here
        pytest.fail(f"no contract check for kind {kind!r}")


def test_examples_register_and_keep_their_contracts(doc_plugins, tmp_path: Path) -> None:
    plugins, _ = doc_plugins
    assert all(info.error is None for info in plugins.infos.values())
    registrations = list(plugins.registry)
    assert {reg.kind for reg in registrations} == {
        "task",
        "inference",
        "reward",
        "transport",
        "checkpointer",
        "learner",
    }
    for reg in registrations:
        settings = reg.settings() if reg.settings is not None else None
        if settings is not None:
            assert attrs.has(reg.settings), f"{reg.name}: settings must be an attrs class"
        workdir = tmp_path / reg.kind / reg.name / "default" / "node-0"
        workdir.mkdir(parents=True)
        check_backend(reg.kind, reg.name, reg.factory(settings, BackendContext(workdir=workdir)), workdir)


def test_example_observers_and_command(doc_plugins, tmp_path: Path) -> None:
    plugins, modules = doc_plugins
    context = BackendContext(workdir=tmp_path)
    plugins.notify("run_started", context=context)
    plugins.notify("round_finished", context=context, round=0, metrics={"reward/mean": 0.5})
    plugins.notify("run_finished", context=context, metrics={"reward/mean": 0.5})
    assert (tmp_path / "tracker.jsonl").read_text() == '{"round": 0, "reward": 0.5}\n'
    group = click.Group("sapo")
    for module in modules:
        if hasattr(module, "register_commands"):
            module.register_commands(cli=group)
    result = CliRunner().invoke(group, ["names", "reward"], catch_exceptions=False)
    assert result.exit_code == 0
    assert {"always_half", "keyword"} <= set(result.output.split())


def test_examples_run_a_node_together(doc_plugins, tmp_path: Path) -> None:
    """Every documented config key works: the examples as one worker's backends, two rounds."""
    plugins, _ = doc_plugins
    config = load_config(
        env={},
        sets=[
            f"run.workdir={tmp_path / 'runs'}",
            "run.rounds=2",
            "run.role=worker",
            'tasks.names=["parity"]',
            "tasks.parity.max_value=9",
            "tasks.problems_per_round=3",
            "inference.backend=constant",
            "inference.answer=odd",
            "inference.num_completions=2",
            "rewards.weights={keyword=1.0, always_half=0.5}",
            "rewards.keyword.word=say",
            "swarm.transport=localdir",
            f"swarm.root={tmp_path / 'swarm'}",
            "swarm.round_seconds=0.2",
            "swarm.poll_seconds=0.02",
            "checkpoint.backend=keep-newest",
            "checkpoint.subdir=ckpt",
            "checkpoint.every=1",
            "checkpoint.keep=1",
            "train.backend=mean-tracker",
        ],
    )
    metrics = Node.from_config(config, plugins).run()
    assert metrics["round"] == 1
    assert metrics["reward/mean"] == pytest.approx(1.0 * 1.0 + 0.5 * 0.5)  # "say" is in the reasoning
    # One fixed answer gives groups without signal: the learner is built but has nothing to train on.
    assert metrics["groups/zero_variance"] == 3 and "train/steps" not in metrics
    node_dir = tmp_path / "runs" / "default" / "node-0"
    assert [p.name for p in (node_dir / "ckpt").iterdir()] == ["round-000001"]
    assert (tmp_path / "swarm" / "default" / "rounds" / "1" / "node-0.json.gz").exists()
    assert len((node_dir / "tracker.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "name", ["check_inference", "check_reward", "check_transport", "check_leases", "sample_problems", "install_plugin"]
)
def test_testing_helpers_are_documented_with_every_parameter(name: str) -> None:
    documented = re.search(rf"`{name}\((.*?)\)", doc_text(), re.DOTALL)
    assert documented, f"docs/plugins.md does not show the signature of {name}"
    for parameter in inspect.signature(getattr(testing, name)).parameters:
        assert re.search(rf"\b{parameter}\b", documented.group(1)), f"{name}: parameter {parameter!r} is not documented"


# ---------------------------------------------------------------------- sapo-hello


@pytest.fixture
def hello_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sapo-hello as `pip install -e .` leaves it (its dist-info, its source on sys.path), and no
    other plugin: what a user of the README has."""
    info = tmp_path / "site" / "sapo_hello-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sapo-hello\nVersion: 0.1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[sapo]\nhello = sapo_hello\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(HELLO / "src"))
    monkeypatch.syspath_prepend(str(info.parent))
    monkeypatch.setenv("SAPO_LOAD_PLUGINS", "hello")
    monkeypatch.delitem(sys.modules, "sapo_hello", raising=False)
    plugins_module.reset_plugins()


def sapo(*args: str) -> Any:
    from sapo_core.cli import build_cli

    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def test_plugins_json_example_is_the_real_output(hello_installed) -> None:
    text = doc_text()
    example = next(body for body in code_blocks(text[text.index("`sapo plugins --json` prints") :], "json"))
    shown = json.loads(example)
    result = sapo("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(shown, list) and isinstance(rows, list)
    assert rows[: len(shown)] == shown, "docs/plugins.md shows the first objects of the real array"


def console_session(text: str) -> list[tuple[list[str], list[str]]]:
    """The first ``console`` block as (command words, the output lines shown under it)."""
    session: list[tuple[list[str], list[str]]] = []
    for line in code_blocks(text, "console")[0].splitlines():
        if line.startswith("$ "):
            session.append((shlex.split(line[2:], comments=True), []))
        else:
            session[-1][1].append(line)
    return session


def test_hello_readme_commands_print_and_write_what_it_says(
    hello_installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the run's folders go under ./runs
    session = console_session((HELLO / "README.md").read_text(encoding="utf-8"))
    assert [words[:2] for words, _ in session if words[0] == "sapo"] == [
        ["sapo", "plugins"],
        ["sapo", "plugins"],
        ["sapo", "hello"],
        ["sapo", "run"],
    ]
    for words, shown in session:
        if words[0] == "pip":
            continue
        if words[0] == "cat":
            found = sorted(Path().glob(words[1]))
            assert len(found) == 1, f"{words[1]} matches {found}"
            lines = found[0].read_text(encoding="utf-8").splitlines()
            # The header and one line per round; the rewards are the example's, not asserted here.
            assert lines[0] == shown[0] and [row.split(",")[0] for row in lines] == [row.split(",")[0] for row in shown]
            continue
        result = sapo(*words[1:])
        assert result.exit_code == 0, (words, result.output)
        if shown:
            assert result.stdout.splitlines() == shown, words
