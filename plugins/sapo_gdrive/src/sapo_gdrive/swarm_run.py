"""`sapo swarm run --nodes N`: a whole swarm on this machine, one process per node.

One coordinator and N workers, each ``python -m sapo_core run`` with its own node id, on a
shared folder (transport ``gdrive``) under one launch folder (``--root``, default
``runs/swarm/<UTC timestamp>``)::

    <root>/<experiment>/          the swarm folder: swarm.json, state.json, nodes/, rounds/,
                                  logs/<node>.log, metrics/<node>.jsonl
    <root>/runs/<node>/           each node's run directory (config.json, metrics.jsonl, checkpoints/)
    <root>/runs/<node>/output.log the node process's stdout and stderr
    <root>/reward.png             every node's reward per round and the swarm mean (-o; needs matplotlib)
    <root>/drive-copy/<experiment>/  with --drive-sync: the second copy of the swarm folder, where
                                  every second worker runs (worker-2, worker-4, ...)
    <root>/drive_sync.log         with --drive-sync: every file the simulated Drive client carried

The workers start first; the coordinator, which opens round 0, once every worker has loaded
its model and registered, so no worker misses the first rounds. While it runs, a table shows each node's reward per round from ``metrics/<node>.jsonl`` and
the swarm's round and deadline from ``state.json`` (on a terminal; elsewhere one line per node
and round). A node that exits with an error stops the swarm: the launcher names it, shows the
end of its output, stops the others and exits 1. SIGINT/SIGTERM stop every node too (exit
128 + signal number); the nodes run in their own sessions, so a terminal's Ctrl-C reaches the
launcher only and the launcher decides how they stop, and on Linux they are told SIGTERM if
the launcher itself dies.

The nodes share the CPU: each gets ``cores // workers`` torch threads (OMP_NUM_THREADS, unless
set), else N copies of torch's default (all cores each) thrash.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import click

from sapo_core import rundir
from sapo_core.errors import SapoError
from sapo_gdrive import drive_sync, processes
from sapo_gdrive.folder import FolderTransport
from sapo_gdrive.observers import METRICS_DIR
from sapo_gdrive.status import duration

COORDINATOR = "coordinator"
RUNS_DIR = "runs"
OUTPUT_FILE = "output.log"
#: Seconds the coordinator may outlive the last worker (it has nothing left to coordinate).
COORDINATOR_GRACE_SECONDS = 15.0
#: Rounds shown as columns in the live table (the newest).
SHOWN_ROUNDS = 8
#: Keys the launcher sets on each node; a --set of one of them would break the swarm it builds.
LAUNCHER_KEYS = ("swarm.transport", "swarm.root", "run.experiment", "run.role", "run.node_id", "run.dir")


@attrs.frozen
class NodeSpec:
    """One node process: its id, role, run directory and command line."""

    node: str
    role: str
    run_dir: Path
    command: tuple[str, ...]
    folder: Path | None = None  # the copy of the swarm folder it runs on, when not the plan's (--drive-sync)

    @property
    def output(self) -> Path:
        return self.run_dir / OUTPUT_FILE


@attrs.frozen
class Plan:
    """What `sapo swarm run` starts, resolved and checked before any process exists."""

    root: Path
    experiment: str
    rounds: int
    threads: int
    nodes: tuple[NodeSpec, ...]
    drive_sync_seed: int | None = None  # with --drive-sync: the simulated client's seed (run.seed)

    @property
    def folder(self) -> Path:
        return self.root / self.experiment

    @property
    def copy_folder(self) -> Path:
        """With --drive-sync, the second copy of the swarm folder, which the sync keeps in step with `folder`."""
        return self.root / drive_sync.COPY_DIR / self.experiment

    @property
    def workers(self) -> tuple[NodeSpec, ...]:
        return tuple(spec for spec in self.nodes if spec.role != COORDINATOR)


def plan_swarm(
    *,
    workers: int,
    root: Path,
    config_file: str | None,
    sets: Sequence[str],
    experiment: str | None,
    rounds: int | None,
    threads: int | None,
    synced: bool = False,
) -> Plan:
    """Resolve the nodes' configuration once (bad settings fail here, before anything starts) and
    build each node's command. SapoError for what the user must change. With ``synced``,
    every second worker's folder is the second copy (`Plan.copy_folder`)."""
    from sapo_core.cli import resolve

    label = "sapo swarm run"
    extra: dict[str, tuple[Any, str]] = {
        "swarm.transport": ("gdrive", label),
        "swarm.root": (str(root), label),
        "run.role": ("worker", label),
        "run.node_id": ("worker-1", label),
        "run.dir": (str(root / RUNS_DIR / "worker-1"), label),
    }
    config = resolve(config_file, sets, extra=extra, experiment=experiment, rounds=rounds)
    overridden = [key for key in LAUNCHER_KEYS if key != "run.experiment" and config.source(key) != label]
    if overridden:
        raise SapoError(
            f"sapo swarm run sets {', '.join(overridden)} itself (from {config.source(overridden[0])}); "
            "drop it, and use --root / --experiment for the folder and name"
        )
    name = config.run.experiment
    if name == RUNS_DIR:
        raise SapoError(
            f"--experiment {RUNS_DIR!r} is the name of the launcher's folder of run directories; choose another"
        )
    if (root / name).exists():
        raise SapoError(f"{root / name} already exists (an earlier swarm): choose another --experiment or --root")
    threads = threads or max(1, processes.cpu_count() // workers)
    launch = ["--experiment", name, *(["--config", config_file] if config_file else [])]
    launch += [
        *(["--rounds", str(rounds)] if rounds is not None else []),
        *(p for item in sets for p in ("--set", item)),
    ]
    nodes = node_specs(workers, root, name, launch, synced=synced)
    seed = config.run.seed if synced else None
    return Plan(
        root=root, experiment=name, rounds=config.run.rounds, threads=threads, nodes=nodes, drive_sync_seed=seed
    )


def node_specs(
    workers: int, root: Path, experiment: str, launch: Sequence[str], *, synced: bool
) -> tuple[NodeSpec, ...]:
    """The coordinator and each worker, as ``sapo run`` commands; ``synced`` puts every second
    worker on the second copy of the folder."""
    nodes = []
    for index, (node, role) in enumerate(
        [(COORDINATOR, "coordinator"), *((f"worker-{i}", "worker") for i in range(1, workers + 1))]
    ):
        run_dir = root / RUNS_DIR / node
        copy = synced and index > 0 and index % 2 == 0
        node_root = root / drive_sync.COPY_DIR if copy else root
        command = [sys.executable, "-m", "sapo_core", "run", "--transport", "gdrive", "--root", str(node_root)]
        command += [*launch, "--role", role, "--node-id", node, "--run-dir", str(run_dir)]
        nodes.append(NodeSpec(node, role, run_dir, tuple(command), node_root / experiment if copy else None))
    return tuple(nodes)


# ---------------------------------------------------------------------------------- output


def is_metrics_line(text: str) -> bool:
    """Whether a line of a node's output is a metrics JSON object (``sapo run`` prints the last
    round's), for a program to read rather than a person."""
    if not (text.startswith("{") and text.endswith("}")):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def last_words(path: Path, lines: int = 20) -> str:
    """The newest line of a node's output that is for a person (metrics JSON skipped); '' for none."""
    return next((text for text in reversed(processes.tail_lines(path, lines)) if not is_metrics_line(text.strip())), "")


# ---------------------------------------------------------------------------------- processes


@attrs.define
class NodeProcess:
    spec: NodeSpec
    popen: subprocess.Popen[bytes]
    started: float
    metrics: processes.JsonlTail
    lines: dict[int, dict[str, Any]] = attrs.field(factory=dict)  # round -> metrics

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def signal(self, signum: int) -> None:
        """Signal the node's whole session (it is its own process group)."""
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass


def node_env(plan: Plan, spec: NodeSpec) -> dict[str, str]:
    env = dict(os.environ)
    threads = "1" if spec.role == COORDINATOR else str(plan.threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    env["PYTHONUNBUFFERED"] = "1"  # output.log is read while the node runs
    env["TOKENIZERS_PARALLELISM"] = "false"  # its own thread pool would fight the torch threads
    env.setdefault("COLUMNS", "160")  # rich wraps a file's lines at 80 otherwise
    env["TTY_COMPATIBLE"] = "0"  # its output is a file, whatever the launcher's terminal claims
    return env


def start(plan: Plan, spec: NodeSpec) -> NodeProcess:
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    with open(spec.output, "ab") as output:
        popen = subprocess.Popen(
            spec.command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=node_env(plan, spec),
            start_new_session=True,
            preexec_fn=processes.in_child,
        )
    # Read on the node's own copy of the folder: a synced copy of the file may be half rewritten.
    metrics = (spec.folder or plan.folder) / METRICS_DIR / f"{spec.node}.jsonl"
    return NodeProcess(spec, popen, time.time(), processes.JsonlTail(metrics))


def start_all(plan: Plan, specs: Sequence[NodeSpec], into: list[NodeProcess]) -> None:
    # A signal between a Popen and its append would leave that node unknown, so never stopped.
    blocked = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        for spec in specs:
            into.append(start(plan, spec))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


def joined(transport: FolderTransport, plan: Plan) -> bool:
    """Whether every worker has registered in the swarm folder (it does so once its model is loaded)."""
    registered = {info.node for info in transport.live_nodes(math.inf)}
    return {spec.node for spec in plan.workers} <= registered


# ---------------------------------------------------------------------------------- display


def _status(process: NodeProcess) -> str:
    code = process.returncode
    if code is None:
        return "[cyan]running[/]" if process.lines else "[cyan]starting[/]"
    return "[green]done[/]" if code == 0 else f"[red]{processes.exit_reason(code, hint=False)}[/]"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reward(line: Mapping[str, Any] | None) -> str:
    value = None if line is None else line.get("reward/mean")
    return f"{value:.3f}" if _is_number(value) else ""


def round_mean(processes: Sequence[NodeProcess], round: int) -> float | None:
    values = [
        p.lines[round]["reward/mean"]
        for p in processes
        if isinstance(p.lines.get(round, {}).get("reward/mean"), (int, float))
    ]
    return sum(values) / len(values) if values else None


def pass_at_1(process: NodeProcess) -> str:
    """``0.167 -> 0.083``: held-out pass@1 before training, then at the newest evaluation."""
    evaluated = [
        (r, line["eval/pass@1"]) for r, line in sorted(process.lines.items()) if _is_number(line.get("eval/pass@1"))
    ]
    before = [f"{value:.3f}" for r, value in evaluated if r < 0]
    since = [f"{value:.3f}" for r, value in evaluated if r >= 0]
    return " -> ".join(before + since[-1:])


def table(plan: Plan, processes: Sequence[NodeProcess], state: Any, started: float) -> Any:
    """Each node's status and reward per round (the newest `SHOWN_ROUNDS`), the swarm mean, the round."""
    from rich.table import Table
    from rich.text import Text

    from sapo_core.progress import BEFORE_TRAINING, round_name

    workers = [p for p in processes if p.spec.role != COORDINATOR]
    # Training rounds only: the evaluation before training (round -1) has no reward to show;
    # its pass@1 is in the pass@1 column.
    done = sorted({r for p in workers for r in p.lines if r >= 0})
    shown = done[-SHOWN_ROUNDS:]
    if state is None:
        where = "waiting for every worker to load its model and join"
    elif state.round >= plan.rounds:
        where = f"all {plan.rounds} rounds closed"
    else:
        deadline = "" if state.deadline is None else f", deadline in {duration(state.deadline - time.time())}"
        where = f"{round_name(state.round, plan.rounds)}{deadline}"
    grid = Table(
        title=f"experiment {plan.experiment}: {where}, {duration(time.time() - started)} elapsed",
        title_justify="left",
        caption_justify="left",
        caption=f"reward/mean per round; held-out pass@1 {BEFORE_TRAINING} -> newest; folder {plan.folder}",
    )
    grid.add_column("node")
    grid.add_column("status")
    for round in shown:
        grid.add_column(f"r{round + 1}", justify="right")  # counted from 1, as `round_name` does
    grid.add_column("pass@1", justify="right")
    grid.add_column("last output", overflow="ellipsis", no_wrap=True, max_width=60)
    for process in processes:
        grid.add_row(
            process.spec.node,
            _status(process),
            *(_reward(process.lines.get(r)) for r in shown),
            pass_at_1(process),
            Text.from_ansi(last_words(process.spec.output)),
        )
    means = [round_mean(workers, r) for r in shown]
    grid.add_row("[bold]swarm mean[/]", "", *("" if m is None else f"[bold]{m:.3f}[/]" for m in means), "", "")
    return grid


def line_for(process: NodeProcess, round: int, total: int, metrics: Mapping[str, Any]) -> str:
    """One finished round of one node, for a log or a pipe (no live table there)."""
    from sapo_core.progress import round_name, summary_line

    if process.spec.role == COORDINATOR:
        return (
            f"{process.spec.node}: {round_name(round, total)} closed by {metrics.get('closed_by', '?')} "
            f"({metrics.get('published', '?')} published)"
        )
    return summary_line(process.spec.node, round, total, metrics)


# ---------------------------------------------------------------------------------- running


@attrs.frozen
class Outcome:
    failed: tuple[NodeProcess, ...] = ()
    signum: int | None = None


@attrs.define
class Supervisor:
    """The launcher's main loop over one swarm's node processes: start them, show their progress
    (a live table on a terminal, else a line per node and round), notice the end."""

    plan: Plan
    console: Any
    live: Any  # a rich Live on a terminal, else None
    transport: FolderTransport
    started: float = attrs.field(factory=time.time)
    processes: list[NodeProcess] = attrs.field(factory=list)

    def show(self) -> None:
        if self.live is not None:
            self.live.update(table(self.plan, self.processes, self.transport.read_state(), self.started), refresh=True)

    def read_metrics(self) -> None:
        """Each node's newly finished rounds; without a live table, one line each."""
        for process in self.processes:
            for line in process.metrics.read():
                process.lines[line["round"]] = line
                if self.live is None:
                    self.console.print(
                        line_for(process, line["round"], self.plan.rounds, line),
                        highlight=False,
                        markup=False,
                        soft_wrap=True,
                    )

    def watch(self, poll_seconds: float) -> Outcome:
        """Until every node exits, one fails, or only the coordinator is left past its grace."""
        start_all(self.plan, self.plan.workers, self.processes)
        coordinator = [spec for spec in self.plan.nodes if spec.role == COORDINATOR]
        if self.live is not None:
            self.live.start()
        workers_done_at: float | None = None
        while True:
            self.read_metrics()
            if coordinator and joined(self.transport, self.plan):
                # Only now: a round the coordinator opened before every worker had loaded its
                # model would close on the quorum of those already there, leaving the others behind.
                start_all(self.plan, coordinator, self.processes)
                coordinator = []
            self.show()
            failed = tuple(p for p in self.processes if p.returncode not in (None, 0))
            if failed:
                return Outcome(failed=failed)
            running = [p for p in self.processes if p.returncode is None]
            if not running:
                return Outcome()
            if all(p.spec.role == COORDINATOR for p in running):
                # Every worker is done; the coordinator would only wait out deadlines for nobody.
                workers_done_at = workers_done_at or time.monotonic()
                if time.monotonic() - workers_done_at > COORDINATOR_GRACE_SECONDS:
                    return Outcome()
            time.sleep(poll_seconds)


def supervise(plan: Plan, console: Any, *, poll_seconds: float = 1.0) -> tuple[Outcome, list[NodeProcess]]:
    """Start the nodes, show their progress until they all exit (or one fails, or a signal), stop
    whoever is left. Returns what happened and the node processes."""
    from rich.live import Live

    live = Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else None
    supervisor = Supervisor(plan, console, live, FolderTransport(str(plan.root), plan.experiment))
    outcome = Outcome()
    sync = None
    with processes.signals_interrupt():
        try:
            if plan.drive_sync_seed is not None:
                sync = drive_sync.start(
                    plan.folder, plan.copy_folder, seed=plan.drive_sync_seed, log=plan.root / drive_sync.LOG_FILE
                )
            outcome = supervisor.watch(poll_seconds)
        except processes.Interrupted as exc:
            outcome = Outcome(signum=exc.signum)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):  # the nodes are stopped anyway: let nothing cut it short
                signal.signal(sig, signal.SIG_IGN)
            try:
                processes.stop(supervisor.processes)
                if sync is not None:
                    drive_sync.stop(sync)
            finally:
                if live is not None:
                    supervisor.show()
                    live.stop()
    return outcome, supervisor.processes


def report_failure(console: Any, failed: Sequence[NodeProcess], lines: int = 25) -> None:
    for process in failed:
        console.print(
            f"[red bold]{process.spec.node} failed[/] ({processes.exit_reason(process.returncode or 0)}); "
            f"the end of its output, {process.spec.output}:"
        )
        for text in processes.tail_lines(process.spec.output, lines):
            console.print(f"  {text}", markup=False, highlight=False)


def exit_if_stopped(console: Any, outcome: Outcome, started: int, root: Path) -> None:
    """Exit (128 + the signal, or 1 after a node failed, its output shown) unless every node finished."""
    if outcome.signum is not None:
        console.print(
            f"[yellow]{signal.Signals(outcome.signum).name}[/]: stopped all {started} node processes; "
            f"what they wrote is in {root}"
        )
        sys.exit(128 + outcome.signum)
    if outcome.failed:
        report_failure(console, outcome.failed)
        console.print(f"stopped the other nodes; everything is in {root}")
        sys.exit(1)


def report_curves(plan: Plan) -> list[Any]:
    """Each worker's curve and the swarm mean.

    From the run directories' ``metrics.jsonl`` rather than the swarm folder's metrics: those
    also hold the held-out evaluation before training (round -1), the curve's starting point."""
    from sapo_core import report
    from sapo_core.rundir import METRICS_FILE

    curves = [
        report.load_curve(spec.run_dir, spec.node) for spec in plan.workers if (spec.run_dir / METRICS_FILE).is_file()
    ]
    curves = [curve for curve in curves if curve.rounds or curve.eval_rounds]
    if not curves:
        raise SapoError(f"no worker wrote metrics to {plan.root / RUNS_DIR}/<node>/{METRICS_FILE}")
    curves.append(report.swarm_mean(curves))
    return curves


def draw_report(plan: Plan, curves: Sequence[Any], output: Path, console: Any) -> Path | None:
    """The curves drawn into ``output``; None, with a warning naming the extra, without matplotlib:
    the swarm's work is done and on disk, so a missing picture is no failure."""
    from rich.markup import escape

    from sapo_core import report

    try:
        return report.plot(curves, output, title=f"sapo swarm, experiment {plan.experiment}: reward per round")
    except report.PlotUnavailable:
        advice = f"{report.PLOT_EXTRA}, then: sapo report {plan.root / RUNS_DIR} -o {output}"
        console.print(
            f"[yellow]warning[/]: the reward curves were not drawn: matplotlib is not installed ({escape(advice)})",
            soft_wrap=True,
        )  # escaped: "[plot]" is no markup
        return None


def print_summary(console: Any, plan: Plan, curves: Sequence[Any], output: Path | None, seconds: float) -> None:
    from rich.table import Table

    def number(values: Sequence[float], index: int) -> str:
        return f"{values[index]:.3f}" if values else "-"

    summary = Table(
        "node",
        "rounds",
        "first reward",
        "last reward",
        "pass@1 before",
        "pass@1 after",
        box=None,
        title=f"experiment {plan.experiment}: {len(plan.workers)} workers, {duration(seconds)}",
        title_justify="left",
    )
    for curve in curves:
        before = curve.eval_rounds[:1] == (-1,)
        after = curve.pass_at_1[1:] if before else curve.pass_at_1
        summary.add_row(
            f"[bold]{curve.label}[/]" if curve.mean else curve.label,
            str(len(curve.rounds)),
            number(curve.reward, 0),
            number(curve.reward, -1),
            number(curve.pass_at_1, 0) if before else "-",
            number(after, -1),
        )
    console.print(summary)
    for line in (
        f"reward curves: {output or 'not drawn (no matplotlib)'}",
        f"swarm folder:  {plan.folder}  (sapo swarm status --root {plan.root} --experiment {plan.experiment})",
        f"node runs:     {plan.root / RUNS_DIR}/<node>/  ({OUTPUT_FILE}: each process's output)",
    ):
        console.print(line, soft_wrap=True, markup=False)


def _positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        hint = " (the number of worker processes; a coordinator is added)" if param.name == "nodes" else ""
        raise click.BadParameter(f"{value}: give at least 1{hint}")
    return value


@click.command(name="run")
@click.option(
    "--nodes",
    type=int,
    default=3,
    show_default=True,
    callback=_positive,
    help="Worker processes to start (plus one coordinator).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    help="TOML config for every node, e.g. configs/swarm.toml (tiny settings for a CPU).",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="The launch folder: swarm folder, node run directories, report (default: runs/swarm/<UTC timestamp>).",
)
@click.option("--experiment", help="Experiment name (default: run.experiment of the config).")
@click.option("--rounds", type=int, callback=_positive, help="Rounds to run (run.rounds).")
@click.option(
    "--threads",
    type=int,
    callback=_positive,
    help="torch threads per worker (default: this machine's cores // --nodes, at least 1).",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config key for every node.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG of the reward curves (default: <root>/reward.png).",
)
@click.option(
    "--drive-sync",
    "synced",
    is_flag=True,
    help="Run every second worker on a second copy of the swarm folder, kept in step by a simulated "
    "Drive client (changes arrive 0.5-5 s late, rewritten in place in pieces, with conflict copies): "
    "a recipe tried under what a Drive user's swarm goes through.",
)
def run_swarm(
    nodes: int,
    config_file: str | None,
    root: Path | None,
    experiment: str | None,
    rounds: int | None,
    threads: int | None,
    sets: tuple[str, ...],
    output: Path | None,
    synced: bool,
) -> None:
    """Start a coordinator and --nodes workers as processes on a local folder; show each node's
    reward per round; draw the reward curves at the end (without matplotlib, the ``plot``
    extra, a warning instead: the swarm's work is done, so the exit status stays 0).

    \b
    sapo swarm run --nodes 3 --config configs/swarm.toml
    sapo swarm run --nodes 4 --config configs/swarm.toml --rounds 20 --set inference.max_new_tokens=128
    sapo swarm run --nodes 2 --config configs/swarm.toml --drive-sync
    """
    from rich.console import Console

    if root is None:
        root = Path("runs") / "swarm" / rundir.timestamp()
    root = root.absolute()
    try:
        plan = plan_swarm(
            workers=nodes,
            root=root,
            config_file=config_file,
            sets=sets,
            experiment=experiment,
            rounds=rounds,
            threads=threads,
            synced=synced,
        )
    except SapoError as exc:
        raise click.ClickException(str(exc)) from exc
    output = (output or root / "reward.png").absolute()
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(
        f"sapo swarm: 1 coordinator + {nodes} workers, {plan.rounds} rounds, {plan.threads} torch "
        f"thread(s) per worker ({processes.cpu_count()} cores), in {root}"
        + (f"; every second worker on {plan.copy_folder}, a simulated Drive sync between" if synced else "")
    )
    began = time.monotonic()
    outcome, nodes_run = supervise(plan, console)
    exit_if_stopped(console, outcome, len(nodes_run), root)
    try:
        curves = report_curves(plan)
    except SapoError as exc:
        raise click.ClickException(f"the swarm finished, but its report could not be drawn: {exc}") from exc
    print_summary(console, plan, curves, draw_report(plan, curves, output, console), time.monotonic() - began)
