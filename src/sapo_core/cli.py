"""The `sapo` command line. Plugins add subcommands through the ``register_commands`` hook.

`__all__` is what a plugin's command may use (docs/plugins.md, "Adding a command"): the
configuration flags and their resolution, the log setup and the error exit of ``sapo run``.
The rest of this module may change without notice.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from sapo_core import __version__, codec, preflight, redaction
from sapo_core.config import Config, load_config
from sapo_core.errors import PluginError, SapoError
from sapo_core.interfaces import BackendContext
from sapo_core.keys import keys_command
from sapo_core.plugins import describe, get_plugins

if TYPE_CHECKING:  # imported when a sweep runs: the other commands start without it
    from sapo_core.sweep import Combination, Grid

__all__ = ["build_cli", "fail", "main", "resolve", "run_options", "setup_logging"]

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
    "run_dir": "run.dir",
}


def setup_logging(level: str = "info") -> None:
    """Send the ``sapo`` loggers to stderr at ``level`` (config ``run.log_level``), above any progress bar."""
    from rich.logging import RichHandler

    from sapo_core.progress import stderr_console  # one console for logs and progress

    root = logging.getLogger("sapo")
    root.handlers[:] = [RichHandler(console=stderr_console(), show_path=False, show_time=False, markup=False)]
    root.setLevel(level.upper())
    root.propagate = False


def fail(exc: BaseException) -> NoReturn:
    """Exit the command with status 1 and ``exc``'s message (secrets redacted), without a traceback."""
    raise click.ClickException(redaction.redact(str(exc))) from exc


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add `sapo run`'s configuration flags (--config, --inference, ..., --set) to ``command``, for `resolve`."""
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
        click.option(
            "--resume",
            is_flag=True,
            default=None,
            help="Continue from the newest complete checkpoint (offline: of the newest run that has one).",
        ),
        click.option(
            "--run-dir",
            type=click.Path(file_okay=False),
            help="This run's folder (default: runs/<experiment>/<UTC timestamp> offline, runs/<experiment>/<node> in a swarm).",
        ),
        click.option(
            "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config key, e.g. inference.temperature=0.7."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def resolve(
    config_file: str | None, sets: Sequence[str], extra: Mapping[str, tuple[Any, str]] | None = None, **flags: Any
) -> Config:
    """The `Config` of `run_options`' flags, ``extra`` ones (dotted key -> (value, label)) and ``--set`` items.

    In increasing precedence: the defaults, the config file, the environment, the flags, ``--set``."""
    given = dict(extra or {})
    for name, value in flags.items():
        if value is None:
            continue
        if name == "task":
            value = [item.strip() for item in value.split(",") if item.strip()]
        given[RUN_FLAGS[name]] = (value, f"--{name.replace('_', '-')}")
    return load_config(file=config_file, flags=given, sets=sets)


def fit_device(
    config: Config,
    config_file: str | None,
    sets: Sequence[str],
    extra: Mapping[str, tuple[Any, str]] | None = None,
    **flags: Any,
) -> Config:
    """``config``, which `resolve` made of these arguments, with round sizes that fit the device
    where the user left the GPU-sized defaults (`sapo_core.sizing`: smaller on a CPU offline, a
    warning in a swarm): resolved again with them, so that their source says so."""
    from sapo_core.node import process_rank
    from sapo_core.sizing import device_sizes

    sized = device_sizes(config, get_plugins(), show=process_rank() == 0)
    return resolve(config_file, sets, {**(extra or {}), **sized}, **flags) if sized else config


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
    """Run a node: the offline GRPO loop (--transport none) or one node of a swarm.

    Offline, each run gets its own folder, runs/<experiment>/<UTC timestamp>/ (or --run-dir):
    config.json, metrics.jsonl, metrics/train_iter_NNN.json, metrics/eval_iter_NNN.json
    (every eval.every rounds and after the last) and checkpoints/. Prints the last round's
    metrics as JSON on stdout.
    """
    from sapo_core.node import Node

    try:
        config = resolve(config_file, sets, **flags)
        setup_logging(config.run.log_level)
        config = fit_device(config, config_file, sets, **flags)
        node = Node.from_config(config, get_plugins())
        metrics = node.run()
    except SapoError as exc:
        fail(exc)
    if node.is_main_process:  # under accelerate launch the other processes would print the same line again
        click.echo(json.dumps(metrics, sort_keys=True, default=str))


@click.command(name="config")
@run_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (values only).")
def config_command(config_file: str | None, sets: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Show the resolved configuration with the source of each key (secrets redacted)."""
    try:
        config = resolve(config_file, sets, **flags)
        preflight.check(config, get_plugins())
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


def _stdout() -> Any:
    """A console on stdout, new each call: rich fixes its width from ``COLUMNS`` when it is made,
    so a cached one would keep the first command's width for every later in-process command."""
    from rich.console import Console

    return Console()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: an array of one object per plugin.")
@click.option(
    "--check",
    is_flag=True,
    help="Print only what is wrong, with what to do; exit 1 if a plugin is skipped or broken or names clash.",
)
def plugins(as_json: bool, check: bool) -> None:
    """List plugins: distribution, version, hooks and the backend names each registers.

    Every plugin is listed, broken ones and clashing names included: this is the command to
    diagnose them with, so it exits 0 unless --check finds a problem.
    """
    try:
        loaded = get_plugins()
        rows, problems = describe(loaded), loaded.problems()
    except SapoError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif check:
        for problem in problems:
            click.echo(f"- {redaction.redact(problem)}")
        click.echo(
            f"{len(problems)} problem(s) in {len(rows)} plugins."
            if problems
            else f"All {len(rows)} plugins load without problems."
        )
    else:
        _plugins_table(rows, problems)
    if check and problems:
        sys.exit(1)


def _plugins_table(rows: Sequence[Mapping[str, Any]], problems: Sequence[str]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table("plugin", "distribution", "version", "registers", "hooks", box=None)
    for row in rows:
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in row["registers"].items())
        if row["error"]:
            registers = f"[red]skipped: {escape(row['error'])}[/red]"
        table.add_row(row["name"], row["distribution"], row["version"], registers or "-", ", ".join(row["hooks"]))
    _stdout().print(table)
    if problems:  # one per line, in full: a clash names both plugins, and each says what to do
        _stdout().print("\n[bold red]Problems[/bold red] (sapo plugins --check exits 1 on them):")
        for problem in problems:
            _stdout().print(f"- {escape(redaction.redact(problem))}", soft_wrap=True)


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
            {
                "name": name,
                "description": registry.get("task", name).description,
                "distribution": registry.get("task", name).distribution,
            }
            for name in registry.names("task")
        ]
    except SapoError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max((len(row["name"]) for row in rows), default=0)
    for row in rows:
        click.echo(f"{row['name']:<{width}}  {row['description']}  [{row['distribution']}]")


@tasks.command(name="show")
@click.argument("name")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Which problem: the same seed gives the same one everywhere."
)
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Task settings, e.g. tasks.arithmetic.difficulty=4."
)
@click.option("--json", "as_json", is_flag=True, help="Print the problem as JSON.")
def tasks_show(name: str, seed: int, sets: tuple[str, ...], as_json: bool) -> None:
    """Show the problem a task generates for a seed, and its answer."""
    from sapo_core.config import backend_settings

    try:
        plugins = get_plugins()
        registration = plugins.registry.get("task", name)
        config = load_config(sets=sets)
        settings = backend_settings(registration, config.extras("tasks", name), f"tasks.{name}")
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
    reference = getattr(task, "reference_answer", None)
    if callable(reference):  # optional on a task: the answer text its verifier scores
        answer = reference(problem)
        click.echo(f"\n[score of the reference answer {answer!r}]\n{task.verify(problem, answer)}")


@click.command()
@run_options
@click.option("--dry-run", is_flag=True, help="List the combinations and their folders; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or, with --dry-run, the grid) as JSON.")
@click.pass_context
def sweep(
    ctx: click.Context, config_file: str | None, sets: tuple[str, ...], dry_run: bool, as_json: bool, **flags: Any
) -> None:
    """Run a grid of offline runs: every --set KEY=V1,V2,... is an axis of the grid.

    \b
    sapo sweep --rounds 20 --set train.lr=5e-6,1e-5 --set train.beta=0,0.05
    runs 4 combinations, each in <workdir>/<experiment>/sweep-<timestamp>/<lr=..,beta=..>/
    (--run-dir names the sweep folder), then prints a table (summary.json in the sweep folder):
    final reward, best eval pass@1, final train loss, wall time, errors. Commas inside brackets,
    braces or quotes do not split: tasks.names=["arithmetic","sort"] is one value. A failing
    combination is reported and the sweep goes on (exit status 1 at the end). --resume with
    --run-dir SWEEP_FOLDER continues each combination from its checkpoint.
    """
    from sapo_core import rundir
    from sapo_core.sweep import parse_grid, run_sweep

    folder_flag = flags.pop("run_dir")
    try:
        grid = parse_grid(sets)
        configs = _combination_configs(grid, config_file, flags)
        base = configs[0]
        folder_flag = _sweep_folder_flag(configs, folder_flag)
    except SapoError as exc:
        fail(exc)
    folder = Path(folder_flag) if folder_flag else base.experiment_dir / f"sweep-{rundir.timestamp()}"
    if dry_run:
        _print_grid(grid, folder, as_json)
        return

    setup_logging(base.run.log_level)
    if not folder_flag:
        folder = rundir.new_dir(base.experiment_dir, folder.name)
    log.info("sweep: %d combination(s) in %s", len(grid.combinations), folder)
    results = run_sweep(grid, folder, functools.partial(_run_combination, config_file, flags))
    summary_path = folder / "summary.json"
    if as_json:
        click.echo(summary_path.read_text(encoding="utf-8").rstrip())
    else:
        _print_summary(grid, results)
        click.echo(f"summary: {summary_path}")
    if any(r.status == "interrupted" for r in results):
        ctx.exit(130)
    failed = [r for r in results if r.status != "ok"]
    if failed:
        click.echo(f"{len(failed)} of {len(results)} combinations failed", err=True)
        ctx.exit(1)


def _combination_configs(grid: Grid, config_file: str | None, flags: Mapping[str, Any]) -> list[Config]:
    """Each combination's config, resolved before anything runs; a bad one names its combination."""
    configs = []
    for combination in grid.combinations:
        try:
            configs.append(resolve(config_file, combination.sets, **flags))
        except SapoError as exc:
            what = f" (combination {combination.describe()})" if combination.values else ""
            raise SapoError(f"{exc}{what}") from exc
    return configs


def _sweep_folder_flag(configs: Sequence[Config], folder_flag: str | None) -> str | None:
    """The sweep's folder as the user gave it (--run-dir, else run.dir), checked against --resume;
    None: a new one. SapoError for a combination that is not offline."""
    base = configs[0]
    for config in configs:
        if config.swarm.transport != "none":
            raise SapoError(
                f"sapo sweep runs offline, but swarm.transport is {config.swarm.transport!r} "
                f"(from {config.source('swarm.transport')}); use --transport none"
            )
    if base.source("run.dir") == "--set":
        raise SapoError("sapo sweep: give the sweep's folder with --run-dir, not --set run.dir")
    folder_flag = folder_flag or base.run.dir or None  # run.dir from a config file or SAPO_RUN_DIR
    if base.run.resume and not folder_flag:
        raise SapoError(
            "sapo sweep --resume needs the sweep's folder: --run-dir <workdir>/<experiment>/sweep-<timestamp>"
        )
    if folder_flag and not base.run.resume and (Path(folder_flag) / "sweep.json").exists():
        raise SapoError(f"{folder_flag} already holds a sweep: continue it with --resume, or give another --run-dir")
    return folder_flag


def _run_combination(
    config_file: str | None, flags: Mapping[str, Any], combination: Combination, run_dir: Path
) -> None:
    """Run one combination of a sweep in ``run_dir``, as `sapo run` would."""
    from sapo_core.node import Node

    extra = {"run.dir": (str(run_dir), "sapo sweep")}
    config = fit_device(
        resolve(config_file, combination.sets, extra, **flags), config_file, combination.sets, extra, **flags
    )
    node = Node.from_config(config, get_plugins())
    node.label = combination.name
    try:
        node.run()
    finally:  # let the backends' memory (a model on the GPU) go before the next combination
        del node
        gc.collect()


def _number(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _print_grid(grid: Any, folder: Path, as_json: bool) -> None:
    from sapo_core.sweep import grid_data

    if as_json:
        click.echo(json.dumps(grid_data(grid, folder), indent=2))
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{len(grid.combinations)} combination(s) in {folder}", title_justify="left")
    table.add_column("#", justify="right")
    for axis in grid.axes:
        table.add_column(axis.key)
    table.add_column("folder")
    for combination in grid.combinations:
        table.add_row(str(combination.index + 1), *map(Text, combination.values.values()), Text(combination.name))
    _print_wide(table)


def _print_summary(grid: Any, results: Sequence[Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="sweep summary", title_justify="left")
    table.add_column("#", justify="right")
    for axis in grid.axes:
        table.add_column(axis.key)
    for name in ("status", "rounds", "final reward", "best pass@1", "final loss", "wall time"):
        table.add_column(name, justify="left" if name == "status" else "right")
    table.add_column("error", overflow="fold")
    for result in results:
        style = {"ok": "green", "failed": "red", "interrupted": "yellow"}.get(result.status, "dim")
        best = _number(result.best_eval_pass_at_1, ".3f")
        if result.best_eval_round is not None:
            best += f" (r{result.best_eval_round})"
        wall = "-" if result.wall_seconds is None else f"{result.wall_seconds:.1f}s"
        table.add_row(
            str(result.combination.index + 1),
            *map(Text, result.combination.values.values()),
            Text(result.status, style=style),
            str(result.rounds_done),
            _number(result.final_reward_mean, ".3f"),
            best,
            _number(result.final_train_loss, ".4g"),
            wall,
            Text(result.error or ""),
        )
    _print_wide(table)


def _print_wide(renderable: Any) -> None:
    """Print to stdout; when it is not a terminal (a file, CI), at a width that keeps table rows whole."""
    from rich.console import Console

    console = _stdout()
    (console if console.is_terminal else Console(width=200)).print(renderable)


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("reward.png"),
    show_default=True,
    help="PNG file to draw the curves into.",
)
@click.option(
    "--experiment",
    metavar="NAME",
    help="PATH is a swarm's shared folder (local or mounted): draw NAME's nodes and the swarm mean.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the rounds as JSON instead of a table.")
def report(paths: tuple[str, ...], output: Path, experiment: str | None, as_json: bool) -> None:
    """Draw reward per round (and held-out pass@1) for runs: run directories or folders of them.

    With --experiment NAME, the one PATH is a swarm root: one curve per node from
    PATH/NAME/metrics/<node>.jsonl, and the swarm mean (thick, black).
    """
    from sapo_core import report as reporting

    try:
        if experiment is not None:
            if len(paths) != 1:
                raise SapoError("with --experiment, give exactly one PATH: the swarm's root folder")
            curves = reporting.swarm_curves(paths[0], experiment)
            reporting.plot(curves, output, title=f"sapo swarm {experiment}: reward per round")
        else:
            folders = [Path(path) for path in paths]
            for path, folder in zip(paths, folders):
                if not folder.is_dir():
                    raise SapoError(
                        f"{path}: no such folder"
                        + (" (sapo report reads local folders, not URLs)" if "://" in path else "")
                    )
            runs = reporting.find_runs(folders)
            curves = [reporting.load_curve(run, label) for run, label in zip(runs, reporting.labels_for(runs))]
            reporting.plot(curves, output)
    except SapoError as exc:
        fail(exc)
    rows = {curve.label: reporting.table_rows(curve) for curve in curves}
    if as_json:
        data: dict[str, Any] = {"image": str(output), "runs": rows}
        if experiment is not None:
            data["experiment"] = experiment
        click.echo(json.dumps(data, indent=2))
        return
    from rich.table import Table

    for label, lines in rows.items():
        table = Table("round", "reward", "held-out pass@1", title=label, box=None)
        for row in lines:
            table.add_row(reporting.round_label(row["round"]), _fmt(row["reward"]), _fmt(row["pass@1"]))
        _stdout().print(table)
    click.echo(f"reward curve: {output}")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


BUILTIN_COMMANDS = (run, config_command, plugins, tasks, sweep, report, keys_command)


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
    """The ``sapo`` executable: run the command line ``argv`` (default: the process's arguments)."""
    redaction.install()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        group = build_cli()
    except SapoError as exc:  # e.g. SAPO_STRICT_PLUGINS=1 and a broken plugin
        click.echo(f"Error: {redaction.redact(str(exc))}", err=True)
        sys.exit(1)
    group.main(args=argv, prog_name="sapo")
