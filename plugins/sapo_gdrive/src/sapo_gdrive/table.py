"""`sapo swarm table`: the SAPO paper's local/external splits, over seeds, as one command.

A *split* I/J is how many groups a node trains on each round: I of its own (``swarm.local_groups``)
and J of its peers' (``swarm.external_groups``); 8/0 is training alone, 4/4 the paper's best.
The table runs one swarm (`sapo swarm run`, N workers and a coordinator) per split and seed, and
every swarm generates the same: the same ``tasks.problems_per_round``, completions and tokens a
round, so compute per node is equal across splits and only what is trained on differs. Seeds
(``run.seed``) are shared across splits, so seed s of 4/4 and of 8/0 draw the same problems.

The output folder (``--out``)::

    settings.json                  what the table is (workers, splits, seeds, rounds, resolved config)
    command.txt                    the command that made it (re-run it to resume)
    table.json  table.md           per split: cumulative reward, final pass@1, ratio to the isolated split
    cumulative_reward.png          cumulative reward per round, one curve per split, band = seed spread
    swarms/<I>-<J>/seed-<s>/       one `sapo swarm run` launch folder (its swarm folder, runs/<node>/,
                                   output.log: the launcher's output, reward.png)
    swarms/<I>-<J>/seed-<s>/done.json   written once that swarm finished every round

A re-run of the same command on the same folder skips the swarms that have ``done.json`` (and
whose workers' metrics hold every round) and starts the others afresh; a folder made with other
settings is refused. Numbers come from the run folders only (`sapo_gdrive.table_stats`), so a
table is recomputed identically from the same folders: after each finished swarm (a partial table,
for a copy taken mid-run), at the end, and by ``--report`` from a folder alone (its settings.json).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import click

from sapo_core import rundir
from sapo_core.errors import SapoError
from sapo_gdrive.swarm_run import LAUNCHER_KEYS, RUNS_DIR
from sapo_gdrive.table_stats import SwarmResult, read_swarm, table_data

if TYPE_CHECKING:
    from sapo_gdrive.table_runs import Outcome

DEFAULT_SPLITS = ("8/0", "6/2", "4/4", "2/6")
DEFAULT_SEEDS = "0,1,2"
SETTINGS_FILE = "settings.json"
COMMAND_FILE = "command.txt"
TABLE_JSON = "table.json"
TABLE_MD = "table.md"
PLOT_FILE = "cumulative_reward.png"
SWARMS_DIR = "swarms"
DONE_FILE = "done.json"
#: Bumped when settings.json or table.json change shape.
SCHEMA = 1
#: Keys the table sets for each swarm, and the option that sets them.
TABLE_KEYS: Mapping[str, str] = {
    "swarm.local_groups": "--split",
    "swarm.external_groups": "--split",
    "run.seed": "--seeds",
}
#: What a node generates a round: equal across splits (the table header says so).
EQUAL_COMPUTE = (
    "tasks.problems_per_round",
    "inference.num_completions",
    "inference.max_new_tokens",
    "tasks.resample",
    "tasks.curriculum",
)
#: The table's own defaults, given to every swarm as ``--set`` items where neither the config file nor
#: a ``--set`` names the key, as in the paper's setting:
#: - dynamic sampling off (``tasks.resample``): it draws more batches until a node's own groups carry a
#:   learning signal, which is what peers' groups bring in SAPO, so an isolated node would get from extra
#:   generation what a sharing one gets from its peers, and nodes would generate different amounts;
#: - the curriculum off (``tasks.curriculum``): cumulative reward adds up the reward of a node's own
#:   rollouts, comparable across splits only at one difficulty; a node that learns faster would climb to
#:   harder problems and score less for it.
TABLE_DEFAULTS: Mapping[str, str] = {"tasks.resample": "0", "tasks.curriculum": "false"}
#: Settings that do not change a table's numbers: a resume may change them.
UNCOUNTED = ("run.log_level",)


@attrs.frozen(order=True)
class Split:
    """I/J: I own groups and J peers' groups trained on per round."""

    own: int
    peers: int

    @property
    def label(self) -> str:
        return f"{self.own}/{self.peers}"

    @property
    def folder(self) -> str:
        return f"{self.own}-{self.peers}"  # "/" cannot be in a folder name


def parse_split(text: str) -> Split:
    """``"4/4"`` -> Split(4, 4); ValueError saying what to write instead."""
    example = "write I/J, e.g. 4/4: I own groups and J peers' groups trained on per round"
    match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not a split: {example}")
    own, peers = int(match.group(1)), int(match.group(2))
    if own < 0 or peers < 0:
        raise ValueError(f"{text!r}: I and J count groups, so they are 0 or more ({example})")
    if own + peers == 0:
        raise ValueError(f"{text!r} trains on no group at all: give I + J >= 1, e.g. 8/0 for training alone")
    return Split(own, peers)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); ValueError for anything else."""
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch(r"\d+", part) for part in parts):
        raise ValueError(f"{text!r}: give whole numbers >= 0 separated by commas, e.g. 0,1,2")
    seeds = tuple(int(part) for part in parts)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{text!r}: a seed is given twice")
    return seeds


@attrs.frozen
class SwarmJob:
    """One swarm of the table: a split and a seed, in its own launch folder."""

    split: Split
    seed: int
    root: Path

    @property
    def name(self) -> str:
        return f"{self.split.label} seed {self.seed}"

    @property
    def sets(self) -> tuple[str, ...]:
        """The ``--set`` items that make this swarm this split and seed."""
        return (
            f"swarm.local_groups={self.split.own}",
            f"swarm.external_groups={self.split.peers}",
            f"run.seed={self.seed}",
        )

    @property
    def done_file(self) -> Path:
        return self.root / DONE_FILE


@attrs.frozen
class Table:
    """A table's experiment, resolved and checked before any swarm starts."""

    out: Path
    workers: int
    splits: tuple[Split, ...]
    seeds: tuple[int, ...]
    rounds: int
    config_file: str | None
    sets: tuple[str, ...]
    config: dict[str, Any]  # the resolved settings every swarm shares (flat, redacted)
    synced: bool = False  # --drive-sync: each swarm over two copies of its folder, a simulated Drive between

    @property
    def swarms(self) -> tuple[SwarmJob, ...]:
        # Seed by seed: a table stopped half-way has every split of its first seeds, comparable rows.
        return tuple(
            SwarmJob(split, seed, self.out / SWARMS_DIR / split.folder / f"seed-{seed}")
            for seed in self.seeds
            for split in self.splits
        )

    @property
    def equal_compute(self) -> dict[str, Any]:
        return {key: self.config[key] for key in EQUAL_COMPUTE}

    def settings(self) -> dict[str, Any]:
        """What settings.json holds: what a resume must agree on."""
        return {
            "schema": SCHEMA,
            "workers": self.workers,
            "splits": [s.label for s in self.splits],
            "seeds": list(self.seeds),
            "rounds": self.rounds,
            "config": self.config,
            **({"drive_sync": True} if self.synced else {}),
        }


def plan_table(
    *,
    out: Path,
    workers: int,
    splits: Sequence[Split],
    seeds: Sequence[int],
    rounds: int | None,
    config_file: str | None,
    sets: Sequence[str],
    synced: bool = False,
) -> Table:
    """Resolve the settings the swarms share and check them against the splits. SapoError for
    what the user must change (`SplitError` for a split that cannot run)."""
    from sapo_core.cli import resolve

    first = SwarmJob(splits[0], seeds[0], out)
    extra = {
        key: (value, TABLE_KEYS[key])
        for key, value in zip(TABLE_KEYS, (first.split.own, first.split.peers, first.seed))
    }
    config = resolve(config_file, sets, extra=extra, rounds=rounds)
    defaults = [f"{key}={value}" for key, value in TABLE_DEFAULTS.items() if config.source(key) == "default"]
    if defaults:  # as --set items, so that the command and every swarm's spell them out
        sets = [*sets, *defaults]
        config = resolve(config_file, sets, extra=extra, rounds=rounds)
    for key, option in TABLE_KEYS.items():
        if config.source(key) == "--set":
            raise SapoError(f"--set {key}: sapo swarm table sets it for each swarm from {option}; drop the --set")
    # checkpoint.dir (an extra of the local store): every worker of every swarm would write into that one folder.
    given = [key for key in LAUNCHER_KEYS if key != "run.experiment" and config.source(key) != "default"]
    given += ["checkpoint.dir"] if "dir" in config.extras("checkpoint") else []
    if given:
        raise SapoError(
            f"{given[0]} (from {config.source(given[0])}): sapo swarm table gives each swarm and node "
            "its own folders under --out; drop it"
        )
    if config.run.experiment == RUNS_DIR:
        raise SapoError(
            f"run.experiment {RUNS_DIR!r} is the name of each swarm's folder of run directories; choose another"
        )
    # The experiment only names each swarm's folder: the numbers are read from runs/<node>/, whatever it is.
    flat = rundir.flatten(config.to_dict(redact=True))
    shared = {
        key: value
        for key, value in flat.items()
        if key not in TABLE_KEYS and key not in LAUNCHER_KEYS and key not in UNCOUNTED
    }
    for split in splits:
        check_split(split, workers=workers, problems=config.tasks.problems_per_round)
    return Table(
        out=out,
        workers=workers,
        splits=tuple(splits),
        seeds=tuple(seeds),
        rounds=config.run.rounds,
        config_file=config_file,
        sets=tuple(sets),
        config=shared,
        synced=synced,
    )


class SplitError(SapoError):
    """A split that this swarm size or round size cannot give (a bad ``--split``)."""


def check_split(split: Split, *, workers: int, problems: int) -> None:
    """A split the swarm can give: I own groups of the B a node draws, J of its peers' (N - 1) x B."""
    if split.peers and workers == 1:
        raise SplitError(
            f"{split.label} trains on {split.peers} peers' groups, but a swarm of 1 worker has "
            "no peers: use --workers 2 or more, or J = 0"
        )
    if split.own > problems:
        raise SplitError(
            f"{split.label} trains on {split.own} own groups, but a node draws only "
            f"tasks.problems_per_round = {problems} problems (one group each) a round: "
            f"--set tasks.problems_per_round={split.own} or more (the same for every split)"
        )
    offered = (workers - 1) * problems
    if split.peers > offered:
        raise SplitError(
            f"{split.label} trains on {split.peers} peers' groups, but {workers - 1} peers "
            f"publish only {offered} a round ({problems} each): more --workers or a larger "
            "tasks.problems_per_round"
        )


# ---------------------------------------------------------------------------------- the folder


def check_folder(table: Table) -> None:
    """Refuse a folder that holds something other than this table (SapoError saying what to do)."""
    stored_path = table.out / SETTINGS_FILE
    if not stored_path.is_file():
        if table.out.is_dir() and any(table.out.iterdir()):
            raise SapoError(f"{table.out} holds files but no table ({SETTINGS_FILE}): choose a new or empty --out")
        return
    stored = _read_json(stored_path)
    changes = rundir.config_changes(stored, table.settings())
    if changes:
        raise SapoError(
            f"{table.out} holds a table made with other settings (stored -> this command):\n  "
            + "\n  ".join(changes)
            + f"\nTo resume that table, re-run its command ({table.out / COMMAND_FILE}); "
            "for these settings, choose another --out."
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SapoError(f"{path} is not JSON ({exc}): choose another --out, or remove the folder") from exc


def command_line(table: Table, *, jobs: int | None, threads: int | None, keep_checkpoints: bool) -> str:
    """The command, every setting spelled out, that makes (or resumes) this table."""
    parts = ["sapo", "swarm", "table", "--workers", str(table.workers)]
    parts += [part for split in table.splits for part in ("--split", split.label)]
    parts += ["--seeds", ",".join(map(str, table.seeds)), "--rounds", str(table.rounds)]
    if table.config_file:
        parts += ["--config", table.config_file]
    parts += [part for item in table.sets for part in ("--set", item)]
    parts += ["--out", str(table.out)] + (["--drive-sync"] if table.synced else [])
    for option, value in (("--jobs", jobs), ("--threads", threads)):
        if value is not None:
            parts += [option, str(value)]
    if keep_checkpoints:
        parts.append("--keep-checkpoints")
    return shlex.join(parts)


def write_start(table: Table, command: str) -> None:
    """settings.json (once: it is what a resume is checked against) and command.txt (each run)."""
    table.out.mkdir(parents=True, exist_ok=True)
    if not (table.out / SETTINGS_FILE).is_file():
        rundir.write_json(table.out / SETTINGS_FILE, table.settings())
    text = f"# sapo swarm table, run in {Path.cwd()}; the same command resumes it\n{command}\n"
    (table.out / COMMAND_FILE).write_text(text, encoding="utf-8")


def result_of(table: Table, job: SwarmJob) -> SwarmResult | None:
    """A finished swarm's result: its marker is there and its workers' metrics hold every round."""
    if not job.done_file.is_file():
        return None
    try:
        return read_swarm(job, workers=table.workers, rounds=table.rounds)
    except SapoError:
        return None  # a marker without its metrics (files removed by hand): run it again


def finished(table: Table, job: SwarmJob) -> bool:
    return result_of(table, job) is not None


def mark_done(job: SwarmJob, *, command: Sequence[str], table_command: str, seconds: float) -> None:
    rundir.write_json(
        job.done_file,
        {
            "split": job.split.label,
            "seed": job.seed,
            "seconds": round(seconds, 1),
            "finished": rundir.timestamp(),
            "command": list(command),
            "table_command": table_command,
        },
    )


def save_table(table: Table, *, command: str) -> tuple[dict[str, Any], Path | None] | None:
    """table.json, table.md and cumulative_reward.png from the finished swarms' run folders (a
    partial table says what is missing): the numbers and the PNG's path, None without matplotlib
    (the numbers are written, so a missing picture is no failure); None when no swarm has finished.
    Each file is renamed over the last one, so a copy taken while the table runs gets a whole one."""
    from sapo_core import report
    from sapo_gdrive import table_render

    results = [result for job in table.swarms if (result := result_of(table, job)) is not None]
    if not results:
        return None
    data = table_data(table, results, command=command)
    rundir.write_json(table.out / TABLE_JSON, data)
    _replace(table.out / TABLE_MD, lambda path: path.write_text(table_render.markdown(data), encoding="utf-8"))
    try:
        png: Path | None = _replace(table.out / PLOT_FILE, lambda path: table_render.plot(data, path))
    except report.PlotUnavailable:
        png = None
    return data, png


def _replace(path: Path, write: Callable[[Path], object]) -> Path:
    # The same suffix: matplotlib chooses the format by it.
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_table(table: Table, console: Any, *, command: str) -> None:
    """`save_table`, then the summary and where the files are (or that there is no table yet)."""
    from rich.markup import escape

    from sapo_core import report
    from sapo_gdrive import table_render

    saved = save_table(table, command=command)
    if saved is None:
        console.print(
            f"no swarm has finished yet: no table written; the command in {COMMAND_FILE} resumes ({table.out})",
            markup=False,
            soft_wrap=True,
        )
        return
    data, png = saved
    if png is None:
        console.print(
            f"[yellow]warning[/]: {PLOT_FILE} was not drawn: matplotlib is not installed "
            f"({escape(report.PLOT_EXTRA)}, then the same command redraws it)",
            soft_wrap=True,
        )
    console.print(table_render.summary(data))
    for label, path in (
        ("table:", table.out / TABLE_MD),
        ("data:", table.out / TABLE_JSON),
        ("plot:", png or "not drawn (no matplotlib)"),
        ("command:", table.out / COMMAND_FILE),
    ):
        console.print(f"{label:<10}{path}", markup=False, highlight=False, soft_wrap=True)


def read_table(out: Path) -> tuple[Table, str]:
    """The table a folder holds and the command that made it, from its settings.json and command.txt
    (not from a config: the model it names need not be on this machine); SapoError saying what to give."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        what = "does not exist" if not out.exists() else f"holds no table ({SETTINGS_FILE})"
        raise SapoError(
            f"{out} {what}: give --out the folder that `sapo swarm table` wrote (it holds {SETTINGS_FILE} "
            f"and {SWARMS_DIR}/), e.g. a copy of one from another machine"
        )
    stored = _read_json(path)
    try:
        if stored["schema"] != SCHEMA:
            raise ValueError(f"schema {stored['schema']}, this sapo reads {SCHEMA}")
        table = Table(
            out=out,
            workers=int(stored["workers"]),
            splits=tuple(parse_split(label) for label in stored["splits"]),
            seeds=tuple(int(seed) for seed in stored["seeds"]),
            rounds=int(stored["rounds"]),
            config_file=None,
            sets=(),
            config=dict(stored["config"]),
            synced=bool(stored.get("drive_sync", False)),
        )
        missing = [key for key in EQUAL_COMPUTE if key not in table.config]  # the header names them
        if missing:
            raise KeyError(missing[0])
    except (KeyError, TypeError, ValueError) as exc:
        raise SapoError(f"{path} is not the settings of a table this sapo reads ({exc!r})") from exc
    commands = [line for line in _text(out / COMMAND_FILE).splitlines() if line.strip() and not line.startswith("#")]
    return table, commands[-1] if commands else f"(not known: no {COMMAND_FILE} in {out})"


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


# ---------------------------------------------------------------------------------- the command


def _positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"{value}: give at least 1")
    return value


def _splits(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[Split, ...]:
    try:
        splits = tuple(parse_split(text) for text in values or DEFAULT_SPLITS)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if len(set(splits)) != len(splits):
        raise click.BadParameter("a split is given twice")
    return splits


def _seeds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        return parse_seeds(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _checked_plan(**plan: Any) -> Table:
    """`plan_table` (of ``plan``, its arguments) and `check_folder`, what the user must change as click's errors."""
    try:
        table = plan_table(**plan)
        check_folder(table)
    except SplitError as exc:
        raise click.BadParameter(str(exc), param_hint="--split") from exc
    except SapoError as exc:
        raise click.ClickException(str(exc)) from exc
    return table


@click.command(name="table")
@click.option(
    "--workers",
    type=int,
    default=8,
    show_default=True,
    callback=_positive,
    help="Workers per swarm (plus one coordinator each).",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    metavar="I/J",
    callback=_splits,
    help="I own and J peers' groups trained on per round; repeat it (default: 8/0 6/2 4/4 2/6).",
)
@click.option(
    "--seeds",
    default=DEFAULT_SEEDS,
    show_default=True,
    callback=_seeds,
    help="run.seed of the swarms, comma-separated: one swarm per split and seed.",
)
@click.option("--rounds", type=int, callback=_positive, help="Rounds per swarm (run.rounds).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    help="TOML config for every node of every swarm.",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config key for every node.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="The table's folder; the same command on it resumes (default: runs/table/<UTC timestamp>).",
)
@click.option(
    "--jobs",
    type=int,
    callback=_positive,
    help="Swarms at once (default: as many as this machine's cores, memory and GPUs hold).",
)
@click.option(
    "--threads",
    type=int,
    callback=_positive,
    help="torch threads per worker (default: cores // (workers x jobs), at least 1).",
)
@click.option(
    "--keep-checkpoints",
    is_flag=True,
    help="Keep each finished swarm's checkpoints (default: removed; the table needs only the metrics).",
)
@click.option(
    "--drive-sync",
    "synced",
    is_flag=True,
    help="Run each swarm as `sapo swarm run --drive-sync` does: every second worker on a second copy of "
    "the folder, a simulated Drive client between the copies.",
)
@click.option(
    "--report",
    is_flag=True,
    help="Run no swarm: write the table from what --out holds (its settings.json), e.g. a folder copied "
    "back from another machine; needs only --out.",
)
@click.pass_context
def table_command(
    ctx: click.Context,
    workers: int,
    splits: tuple[Split, ...],
    seeds: tuple[int, ...],
    rounds: int | None,
    config_file: str | None,
    sets: tuple[str, ...],
    out: Path | None,
    jobs: int | None,
    threads: int | None,
    keep_checkpoints: bool,
    synced: bool,
    report: bool,
) -> None:
    """Run one swarm per split and seed and write the table: cumulative reward and final held-out
    pass@1 per split, and its ratio to the isolated split (J = 0), with their spread over seeds.

    \b
    sapo swarm table --rounds 40 --set tasks.problems_per_round=8 --set inference.max_new_tokens=96
    sapo swarm table --workers 2 --split 2/0 --split 1/1 --seeds 0 --rounds 4 --config configs/swarm.toml
    sapo swarm table --report --out runs/table/h200
    """
    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=200)
    if report:
        _report(ctx, out, console)
        return
    out = (out or Path("runs") / "table" / rundir.timestamp()).absolute()
    config_file = str(Path(config_file).absolute()) if config_file else None
    table = _checked_plan(
        out=out,
        workers=workers,
        splits=splits,
        seeds=seeds,
        rounds=rounds,
        config_file=config_file,
        sets=sets,
        synced=synced,
    )
    command = command_line(table, jobs=jobs, threads=threads, keep_checkpoints=keep_checkpoints)
    write_start(table, command)
    outcome = _run(table, console, jobs=jobs, threads=threads, command=command, keep_checkpoints=keep_checkpoints)
    write_table(table, console, command=command)
    _exit_unless_complete(console, outcome.signum, outcome.failed)


def _run(
    table: Table, console: Any, *, jobs: int | None, threads: int | None, command: str, keep_checkpoints: bool
) -> Outcome:
    """The table's unfinished swarms, as many at once as this machine holds unless told."""
    from sapo_gdrive import table_runs

    machine = table_runs.Machine.here()
    jobs = jobs or machine.jobs(table.workers)
    threads = threads or max(1, machine.cores // (table.workers * jobs))
    try:
        return table_runs.run_table(
            table,
            console,
            jobs=jobs,
            threads=threads,
            command=command,
            keep_checkpoints=keep_checkpoints,
            machine=machine,
        )
    except SapoError as exc:  # a swarm that could not start (its running peers were stopped)
        raise click.ClickException(str(exc)) from exc


def _report(ctx: click.Context, out: Path | None, console: Any) -> None:
    """--report: the table from --out's folder as it is; exit 0 however much has finished (it says what is missing)."""
    from click.core import ParameterSource

    # Every other option is settings.json's to give: one given here would be silently ignored.
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name not in ("report", "out")
        and ctx.get_parameter_source(param.name or "") == ParameterSource.COMMANDLINE
    ]
    if given:
        raise click.UsageError(
            f"--report takes the table's settings from --out's {SETTINGS_FILE}: drop {', '.join(given)}"
        )
    if out is None:
        raise click.UsageError(f"--report needs --out: the table's folder (the one holding {SETTINGS_FILE})")
    try:
        table, command = read_table(out.absolute())
    except SapoError as exc:
        raise click.ClickException(str(exc)) from exc
    write_table(table, console, command=command)


def _exit_unless_complete(console: Any, signum: int | None, failed: Sequence[str]) -> None:
    """Exit 128 + the signal that stopped the table, or 1 when a swarm failed (the same command reruns it)."""
    if signum is not None:
        sys.exit(128 + signum)
    if failed:
        console.print(
            f"{len(failed)} swarm(s) failed: {', '.join(failed)}; the same command runs them again",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(1)
