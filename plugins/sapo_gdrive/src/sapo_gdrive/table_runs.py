"""Running the swarms of `sapo swarm table`, several at once, with one progress display.

Each swarm is a `sapo swarm run` process (``python -m sapo_core swarm run``) in its own launch
folder: that launcher already starts, watches and stops its nodes, so this module only decides how
many run at once (`Machine.jobs`), which GPU each gets, and shows their progress, read from their
workers' ``metrics.jsonl``. A swarm that fails is named with the end of its output and the others
go on (they are independent; a re-run of the table retries it). SIGINT/SIGTERM stop every swarm
(each launcher stops its nodes); a finished swarm's ``done.json`` is kept.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Self

import attrs

from sapo_core.errors import SapoError
from sapo_core.rundir import METRICS_FILE
from sapo_gdrive.processes import (
    STOP_GRACE_SECONDS,
    Interrupted,
    JsonlTail,
    cpu_count,
    exit_reason,
    in_child,
    signals_interrupt,
    stop,
    tail_lines,
)
from sapo_gdrive.status import duration
from sapo_gdrive.swarm_run import OUTPUT_FILE, RUNS_DIR, plan_swarm
from sapo_gdrive.table import PLOT_FILE, TABLE_MD, SwarmJob, Table, finished, mark_done, save_table
from sapo_gdrive.table_render import plural
from sapo_gdrive.table_stats import read_swarm

#: Rough memory one worker holds: on a CPU about 3 GB (configs/swarm.toml), on a GPU a small model,
#: its optimizer, activations and generation cache (SmolLM2-135M at 8 x 8 x 96 tokens fits well).
CPU_GIB_PER_WORKER = 3.0
GPU_GIB_PER_WORKER = 6.0
#: Seconds a swarm's launcher has to stop its nodes (it gives each STOP_GRACE_SECONDS) before it is killed.
SWARM_STOP_GRACE_SECONDS = STOP_GRACE_SECONDS + 15.0
#: Lines of a failed swarm's output shown.
FAILURE_LINES = 15


@attrs.frozen
class Machine:
    """What limits how many swarms run at once: cores, memory, GPUs (GiB each)."""

    cores: int
    memory_gib: float
    gpus: tuple[float, ...] = ()

    @classmethod
    def here(cls) -> Machine:
        return cls(cpu_count(), _memory_gib(), _gpu_memory_gib())

    def jobs(self, workers: int) -> int:
        """Swarms at once: a core per worker process (the host's cores are the limit, even on a
        GPU box), the memory their workers take, and on GPUs their memory."""
        limits = [self.cores // workers, int(self.memory_gib // (workers * CPU_GIB_PER_WORKER))]
        if self.gpus:
            limits.append(sum(int(gib // (workers * GPU_GIB_PER_WORKER)) for gib in self.gpus))
        return max(1, min(limits))

    @property
    def pins_gpus(self) -> bool:
        """Whether swarms are spread over GPUs (CUDA_VISIBLE_DEVICES); not when the user chose already."""
        return len(self.gpus) > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("inf")  # unknown: the cores decide


def _gpu_memory_gib() -> tuple[float, ...]:
    """Each NVIDIA GPU's memory, from nvidia-smi (no torch in this process); () without one."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return tuple(float(line) / 1024 for line in out.split() if line.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return ()


@attrs.define
class SwarmRun:
    """A running swarm: its launcher process and what its workers have written so far."""

    job: SwarmJob
    command: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    started: float
    gpu: int | None
    tails: dict[str, JsonlTail]
    rewards: dict[str, dict[int, float]] = attrs.field(factory=dict)  # node -> round -> reward/mean

    def signal(self, signum: int) -> None:
        """Signal the launcher's session (it stops its nodes, each in their own session)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signum)
            except ProcessLookupError:
                pass

    def read(self) -> list[int]:
        """Read the workers' new metrics; the rounds every worker has now finished, newly."""
        before = self.rounds_done
        for node, tail in self.tails.items():
            for line in tail.read():
                value = line.get("reward/mean")
                if line["round"] >= 0 and isinstance(value, (int, float)):
                    self.rewards.setdefault(node, {})[line["round"]] = float(value)
        return list(range(before, self.rounds_done))

    @property
    def rounds_done(self) -> int:
        return min((len(self.rewards.get(node, {})) for node in self.tails), default=0)

    def round_mean(self, round: int) -> float | None:
        values = [by_round[round] for by_round in self.rewards.values() if round in by_round]
        return sum(values) / len(values) if values else None


def swarm_command(table: Table, job: SwarmJob, threads: int) -> list[str]:
    """The `sapo swarm run` of one swarm: the table's settings plus its split and seed."""
    command = [
        sys.executable,
        "-m",
        "sapo_core",
        "swarm",
        "run",
        "--nodes",
        str(table.workers),
        "--root",
        str(job.root),
        "--rounds",
        str(table.rounds),
        "--threads",
        str(threads),
    ]
    if table.config_file:
        command += ["--config", table.config_file]
    if table.synced:
        command.append("--drive-sync")
    return command + [part for item in (*table.sets, *job.sets) for part in ("--set", item)]


def start_swarm(table: Table, job: SwarmJob, threads: int, gpu: int | None) -> SwarmRun:
    """Start a swarm afresh (an unfinished one's folder is removed: its rounds would not resume)."""
    if job.root.exists():
        shutil.rmtree(job.root)
    plan = plan_swarm(
        workers=table.workers,
        root=job.root,
        config_file=table.config_file,
        sets=[*table.sets, *job.sets],
        experiment=None,
        rounds=table.rounds,
        threads=threads,
        synced=table.synced,
    )
    command = swarm_command(table, job, threads)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TTY_COMPATIBLE": "0", "COLUMNS": "160"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    job.root.mkdir(parents=True)
    with open(job.root / OUTPUT_FILE, "ab") as output:
        # preexec_fn is unsafe with threads; this process has none (as `sapo swarm run`, which does the same).
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=in_child,
        )  # noqa: PLW1509
    tails = {spec.node: JsonlTail(spec.run_dir / METRICS_FILE) for spec in plan.workers}
    return SwarmRun(job, tuple(command), popen, time.monotonic(), gpu, tails)


def free_gpu(machine: Machine, running: Sequence[SwarmRun]) -> int | None:
    """The GPU running the fewest swarms, when swarms are spread over GPUs."""
    if not machine.pins_gpus:
        return None
    load = [sum(1 for run in running if run.gpu == index) for index in range(len(machine.gpus))]
    return load.index(min(load))


# ---------------------------------------------------------------------------------- display


class Display:
    """Swarms done of all, a bar per running swarm's rounds (a terminal), or lines (a log, a pipe)."""

    def __init__(self, console: Any, total: int, done: int, rounds: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console, self.rounds = console, rounds
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            disable=not console.is_terminal,
        )
        self.overall = self.progress.add_task("swarms done", total=total, completed=done, detail="")
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def started(self, run: SwarmRun) -> None:
        self.bars[run.job.name] = self.progress.add_task(f"  {run.job.name}", total=self.rounds, detail="starting")
        gpu = "" if run.gpu is None else f" on GPU {run.gpu}"
        self.say(f"{run.job.name}: started{gpu} ({run.job.root / OUTPUT_FILE})")

    def rounds_done(self, run: SwarmRun, rounds: Sequence[int]) -> None:
        for round in rounds:
            value = run.round_mean(round)
            reward = "" if value is None else f"reward {value:.3f} (workers' mean)"
            # After the last round its nodes still exit and its launcher summarises and draws.
            last = ", finishing" if round + 1 == self.rounds else ""
            self.progress.update(self.bars[run.job.name], completed=round + 1, detail=reward + last)
            if not self.console.is_terminal:  # the bar says it on a terminal
                self.say(f"{run.job.name}: round {round + 1}/{self.rounds}  {reward}")

    def ended(self, run: SwarmRun, text: str, *, done: bool) -> None:
        self.progress.remove_task(self.bars.pop(run.job.name))
        if done:
            self.progress.advance(self.overall)
        self.say(f"{run.job.name}: {text}")


# ---------------------------------------------------------------------------------- running


@attrs.frozen
class Outcome:
    failed: tuple[str, ...] = ()  # the swarms' names
    signum: int | None = None


def conclude(table: Table, run: SwarmRun, *, table_command: str, keep_checkpoints: bool) -> str | None:
    """A swarm's launcher has exited: mark it done (None), or say why it failed."""
    code = run.popen.returncode
    if code != 0:
        return exit_reason(code)
    try:
        read_swarm(run.job, workers=table.workers, rounds=table.rounds)
    except SapoError as exc:
        return f"it exited 0 but {exc}"
    if not keep_checkpoints:
        # 8 workers x 12 swarms of 0.5 GB checkpoints fill a disk; the table needs only the metrics.
        for folder in [*(run.job.root / RUNS_DIR).glob("*/checkpoints"), *run.job.root.glob("*/checkpoints")]:
            shutil.rmtree(folder, ignore_errors=True)
    mark_done(run.job, command=run.command, table_command=table_command, seconds=time.monotonic() - run.started)
    return None


def write_partial(table: Table, display: Display, *, command: str) -> None:
    """The table so far, after each finished swarm: a copy taken mid-run (bench/gpu_table.sh collect)
    has every finished swarm in it. Quiet: the summary is for the end."""
    try:
        saved = save_table(table, command=command)
    except Interrupted:
        raise
    except Exception as exc:  # the swarms matter more: the end writes the table again, or fails saying why
        display.say(f"warning: the partial table was not written ({type(exc).__name__}: {exc}); the swarms go on")
        return
    if saved is not None:
        drawn = "" if saved[1] else f" ({PLOT_FILE} not drawn: no matplotlib)"
        display.say(f"partial table: {table.out / TABLE_MD}{drawn}")


def report_failure(display: Display, run: SwarmRun, why: str) -> None:
    output = run.job.root / OUTPUT_FILE
    display.ended(run, f"failed ({why}); the end of its output, {output}:", done=False)
    for text in tail_lines(output, FAILURE_LINES):
        display.say(f"  {text}")


def run_table(
    table: Table,
    console: Any,
    *,
    jobs: int,
    threads: int,
    command: str,
    keep_checkpoints: bool,
    machine: Machine,
    poll_seconds: float = 1.0,
) -> Outcome:
    """Run the table's unfinished swarms, ``jobs`` at once, until all have ended or a signal comes."""
    swarms = table.swarms
    pending = [job for job in swarms if not finished(table, job)]
    console.print(
        f"sapo swarm table: {plural(len(table.splits), 'split')} x {plural(len(table.seeds), 'seed')} = "
        f"{plural(len(swarms), 'swarm')} of {plural(table.workers, 'worker')}, "
        f"{plural(table.rounds, 'round')}; {len(swarms) - len(pending)} finished already, "
        f"{len(pending)} to run, {jobs} at once, {threads} torch thread(s) per worker "
        f"({machine.cores} cores); in {table.out}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    running: list[SwarmRun] = []
    failed: list[str] = []
    signum: int | None = None
    with Display(console, len(swarms), len(swarms) - len(pending), table.rounds) as display, signals_interrupt():
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    launch(table, pending.pop(0), threads, machine, running, display)
                time.sleep(poll_seconds)
                for run in list(running):
                    display.rounds_done(run, run.read())
                    if run.popen.poll() is None:
                        continue
                    running.remove(run)
                    why = conclude(table, run, table_command=command, keep_checkpoints=keep_checkpoints)
                    if why is None:
                        display.ended(run, f"done in {duration(time.monotonic() - run.started)}", done=True)
                        write_partial(table, display, command=command)
                    else:
                        failed.append(run.job.name)
                        report_failure(display, run, why)
        except Interrupted as exc:
            signum = exc.signum
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):  # the swarms are stopped anyway: let nothing cut it short
                signal.signal(sig, signal.SIG_IGN)
            stop(running, grace=SWARM_STOP_GRACE_SECONDS)
        if signum is not None:
            display.say(
                f"{signal.Signals(signum).name}: stopped {len(running)} running swarm(s); "
                "the same command resumes the table"
            )
    return Outcome(tuple(failed), signum)


def launch(
    table: Table, job: SwarmJob, threads: int, machine: Machine, running: list[SwarmRun], display: Display
) -> None:
    # A signal between the Popen and the append would leave that swarm unknown, so never stopped.
    blocked = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        running.append(start_swarm(table, job, threads, free_gpu(machine, running)))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    display.started(running[-1])
