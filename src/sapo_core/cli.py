"""The `sapo` command line. Plugins add subcommands through the ``register_commands`` hook."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from sapo_core import __version__, codec
from sapo_core.config import Config, load_config
from sapo_core.errors import PluginError, SapoError
from sapo_core.interfaces import BackendContext
from sapo_core.plugins import describe, get_plugins

log = logging.getLogger("sapo")

#: Flags shared by `sapo run` and `sapo config`: option name -> config key.
RUN_FLAGS = {
    "inference": "inference.backend",
    "model": "model.name",
    "transport": "swarm.transport",
    "root": "swarm.root",
    "experiment": "run.experiment",
    "role": "run.role",
    "node_id": "run.node_id",
    "task": "tasks.names",
    "rounds": "run.rounds",
    "resume": "run.resume",
}


def setup_logging(level: str = "info") -> None:
    from rich.logging import RichHandler

    root = logging.getLogger("sapo")
    root.handlers[:] = [RichHandler(console=_stderr(), show_path=False, show_time=False, markup=False)]
    root.setLevel(level.upper())
    root.propagate = False


@functools.cache
def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def fail(exc: BaseException) -> None:
    raise click.ClickException(str(exc)) from exc


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The configuration flags, in precedence between the environment and --set."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file."),
        click.option("--inference", help="Inference backend name (see `sapo plugins`)."),
        click.option("--model", help="Model: a Hugging Face id, a folder, a .gguf file or an alias."),
        click.option("--transport", help="How nodes share rollouts: none (offline), gdrive, memory, ..."),
        click.option("--root", help="Swarm folder or fsspec URL (GDRIVE_PATH)."),
        click.option("--experiment", help="Experiment name (EXPERIMENT_NAME)."),
        click.option("--role", type=click.Choice(["coordinator", "worker", "contributor"]), help="This node's role."),
        click.option("--node-id", help="This node's id (NODE_ID)."),
        click.option("--task", help="Task names, comma-separated (see `sapo tasks`)."),
        click.option("--rounds", type=int, help="Run until this many rounds are done."),
        click.option("--resume", is_flag=True, default=None, help="Continue from the newest complete checkpoint."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config key, e.g. inference.temperature=0.7."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def resolve(config_file: str | None, sets: Sequence[str], **flags: Any) -> Config:
    given = {}
    for name, value in flags.items():
        if value is None:
            continue
        if name == "task":
            value = [item.strip() for item in value.split(",") if item.strip()]
        given[RUN_FLAGS[name]] = (value, f"--{name.replace('_', '-')}")
    return load_config(file=config_file, flags=given, sets=sets)


class SapoGroup(click.Group):
    """The `sapo` group: plugins may add commands but not replace one that already exists."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name in self.commands:
            raise PluginError(f"the command 'sapo {name}' already exists; choose another name")
        super().add_command(cmd, name)


@click.command()
@run_options
def run(config_file: str | None, sets: tuple[str, ...], **flags: Any) -> None:
    """Run a node: the offline GRPO loop (--transport none) or one node of a swarm."""
    from sapo_core.node import Node

    try:
        config = resolve(config_file, sets, **flags)
        setup_logging(config.run.log_level)
        node = Node.from_config(config, get_plugins())
        metrics = node.run()
    except SapoError as exc:
        fail(exc)
    click.echo(json.dumps(metrics, sort_keys=True, default=str))


@click.command(name="config")
@run_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (values only).")
def config_command(config_file: str | None, sets: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Show the resolved configuration with the source of each key (secrets redacted)."""
    try:
        config = resolve(config_file, sets, **flags)
    except SapoError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(config.to_dict(redact=True), indent=2, sort_keys=True))
        return
    from rich.table import Table

    table = Table("key", "value", "source", box=None)
    for key, value, source in config.items(redact=True):
        table.add_row(key, json.dumps(value), source)
    _stdout().print(table)


@functools.cache
def _stdout() -> Any:
    from rich.console import Console

    return Console()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List plugins: distribution, version, hooks and the backend names each registers."""
    try:
        rows = describe(get_plugins())
    except SapoError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table("plugin", "distribution", "version", "registers", "hooks", box=None)
    for row in rows:
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in row["registers"].items())
        if row["error"]:
            registers = f"[red]{row['error']}[/red]"
        table.add_row(row["name"], row["distribution"], row["version"], registers or "-", ", ".join(row["hooks"]))
    _stdout().print(table)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def tasks(ctx: click.Context, as_json: bool) -> None:
    """List the tasks; `sapo tasks show NAME` shows a sample problem and its answer."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        registry = get_plugins().registry
        rows = [
            {"name": name, "description": registry.get("task", name).description, "distribution": registry.get("task", name).distribution}
            for name in registry.names("task")
        ]
    except SapoError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']:<12} {row['description']}  [{row['distribution']}]")


@tasks.command(name="show")
@click.argument("name")
@click.option("--seed", type=int, default=0, show_default=True, help="Which problem: the same seed gives the same one everywhere.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Task settings, e.g. tasks.arithmetic.difficulty=4.")
@click.option("--json", "as_json", is_flag=True, help="Print the problem as JSON.")
def tasks_show(name: str, seed: int, sets: tuple[str, ...], as_json: bool) -> None:
    """Show the problem a task generates for a seed, and its answer."""
    from sapo_core.config import structure

    try:
        plugins = get_plugins()
        registration = plugins.registry.get("task", name)
        config = load_config(sets=sets)
        settings = structure(registration.settings, config.extras("tasks", name), where=f"tasks.{name}") if registration.settings else None
        task = registration.factory(settings, BackendContext())
        problem = task.generate(seed)
    except SapoError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(codec.to_data(problem), indent=2, ensure_ascii=False))
        return
    click.echo(f"# {problem.id}")
    for message in problem.messages:
        click.echo(f"\n[{message.role}]\n{message.content}")
    click.echo(f"\n[answer]\n{json.dumps(problem.answer, ensure_ascii=False)}")


BUILTIN_COMMANDS = (run, config_command, plugins, tasks)


def build_cli() -> click.Group:
    """A new `sapo` group: the built-in commands, then the plugins' (a plugin that fails is reported)."""

    @click.group(cls=SapoGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="sapo")
    def cli() -> None:
        """sapo: swarm reinforcement learning of language models (GRPO / SAPO)."""

    for command in BUILTIN_COMMANDS:
        cli.add_command(command)
    get_plugins().notify("register_commands", cli=cli)
    return cli


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        group = build_cli()
    except SapoError as exc:  # e.g. SAPO_STRICT_PLUGINS=1 and a broken plugin
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    group.main(args=argv, prog_name="sapo")
