"""Does the recipe learn? Offline GRPO runs over tasks x seeds (x recipe variants), held-out pass@1.

Each (variant, task, seed) is one ``sapo run`` process with ``tasks.names=["<task>"]`` and
``run.seed=<seed>``, into ``<out>/<variant>/<task>/seed<seed>/``; ``--jobs`` of them run at once
(one GPU holds many small-model processes: the host's cores are the limit). A run that already
finished is read, not run again, so a cut-off benchmark continues where it stopped.

Printed and written to ``<out>/learning.md`` / ``learning.json``, per variant and task, over seeds
(mean +- sample std): held-out pass@1 before training, after the last round and at its best;
the rise; the largest drop of a seed below its own best; rounds without a learner step; the
longest run of rounds in which every group had no learning signal; and whether the targets of
issue 12 hold (rise >= 0.2, no seed more than 0.1 below its best, no 5-round no-signal streak).
``<out>/learning.png`` draws pass@1 per round, the mean over seeds and its range.

    python bench/learning.py --tasks arithmetic,sort --seeds 0,1,2 --rounds 60 --jobs 12 \\
        --set model.name=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --set eval.every=10
    python bench/learning.py --variant 'ungated:rewards.gate=;tasks.curriculum=false' ...
    python bench/learning.py --tasks preset:sapo-paper --set eval.problems=144 ...

A task ``preset:<name>`` is one run on the mix (``tasks.preset``, `sapo_core.tasks.presets`),
reported as a row for the mix and one per task in it, from the evaluation's per-task pass@1.

Small settings run on the CPU (``--preset cpu``); ``--preset gpu`` is 8 problems x 8
completions x 128 tokens with the static cache.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from sapo_core import rundir
from sapo_core.tasks.presets import PRESETS as TASK_MIXES

#: Panels a line of the plot holds; more tasks wrap onto further lines.
PLOT_COLUMNS = 4

PRESETS = {
    "cpu": [
        "tasks.problems_per_round=4",
        "inference.num_completions=8",
        "inference.max_new_tokens=48",
        "eval.problems=16",
        "eval.every=4",
        "train.micro_batch_tokens=2048",
    ],
    "gpu": [
        "tasks.problems_per_round=8",
        "inference.num_completions=8",
        "inference.max_new_tokens=128",
        "inference.cache_implementation=static",
        "eval.problems=64",
        "eval.every=10",
    ],
}
TARGET_RISE, TARGET_DROP, STUCK_ROUNDS = 0.2, 0.1, 5


@attrs.frozen
class Job:
    variant: str
    task: str
    seed: int
    sets: tuple[str, ...]
    folder: Path

    @property
    def preset(self) -> str | None:
        """The mix's name for a task ``preset:<name>``, else None."""
        kind, _, name = self.task.partition(":")
        return name if kind == "preset" else None

    def command(self, rounds: int) -> list[str]:
        tasks = f"tasks.preset={self.preset}" if self.preset else f'tasks.names=["{self.task}"]'
        command = [
            sys.executable,
            "-m",
            "sapo_core",
            "run",
            "--rounds",
            str(rounds),
            "--run-dir",
            str(self.folder),
            "--set",
            tasks,
            "--set",
            f"run.seed={self.seed}",
            "--set",
            "eval.at_start=true",
            "--set",
            "run.experiment=learning",
        ]
        for item in self.sets:
            command += ["--set", item]
        return command


@attrs.frozen
class Outcome:
    """What one run's metrics.jsonl says."""

    evals: tuple[tuple[int, float], ...]  # (round, held-out pass@1); round -1 is before training
    rounds: int
    no_step: int  # rounds without a learner step
    stuck: int  # longest run of rounds in which no group had a learning signal
    seconds: float

    @classmethod
    def read(cls, folder: Path, task: str | None = None) -> Outcome:
        """The run's outcome; with ``task``, its held-out pass@1 on that task of a mix."""
        lines = rundir.read_metrics(folder)
        key = f"eval/pass@1/{task}" if task else "eval/pass@1"
        evals = tuple((int(line["round"]), float(line[key])) for line in lines if key in line)
        rounds = [line for line in lines if line.get("round", -1) >= 0]
        streak = longest = 0
        for line in rounds:
            streak = streak + 1 if line.get("groups/no_signal", 0) >= line.get("groups/local", 1) else 0
            longest = max(longest, streak)
        return cls(
            evals=evals,
            rounds=len(rounds),
            no_step=sum("train/loss" not in line for line in rounds),
            stuck=longest,
            seconds=sum(float(line.get("time/round", 0.0)) for line in rounds),
        )

    @property
    def start(self) -> float:
        return self.evals[0][1]

    @property
    def final(self) -> float:
        return self.evals[-1][1]

    @property
    def best(self) -> float:
        return max(value for _, value in self.evals)


def finished(folder: Path, rounds: int) -> bool:
    try:
        return any(line.get("round") == rounds - 1 and "eval/pass@1" in line for line in rundir.read_metrics(folder))
    except OSError:
        return False


def has_evaluations(folder: Path) -> bool:
    try:
        return any("eval/pass@1" in line for line in rundir.read_metrics(folder))
    except OSError:
        return False


def run_jobs(jobs: Sequence[Job], rounds: int, parallel: int, threads: int) -> list[str]:
    """Run the unfinished jobs, ``parallel`` at a time; return the failures' descriptions."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    todo = [job for job in jobs if not finished(job.folder, rounds)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    running: dict[Job, subprocess.Popen[bytes]] = {}
    failures: list[str] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        bar = progress.add_task(f"runs ({len(jobs) - len(todo)} already done)", total=len(todo))
        while todo or running:
            while todo and len(running) < parallel:
                job = todo.pop(0)
                if job.folder.exists():  # a half-finished run: start it again from scratch
                    for path in sorted(job.folder.rglob("*"), reverse=True):
                        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
                job.folder.mkdir(parents=True, exist_ok=True)
                log = open(job.folder.parent / f"{job.folder.name}.log", "wb")
                running[job] = subprocess.Popen(job.command(rounds), stdout=log, stderr=subprocess.STDOUT, env=env)
            for job, process in list(running.items()):
                if process.poll() is None:
                    continue
                del running[job]
                progress.advance(bar)
                if process.returncode != 0:
                    log = job.folder.parent / f"{job.folder.name}.log"
                    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                    failures.append(
                        f"{job.variant}/{job.task}/seed{job.seed}: exit {process.returncode}: " + " | ".join(tail)
                    )
            done = [
                f"{len(rundir.read_metrics(j.folder)) if (j.folder / rundir.METRICS_FILE).exists() else 0}"
                for j in running
            ]
            progress.update(bar, description=f"runs (rounds logged by the running ones: {' '.join(done) or '-'})")
            time.sleep(2)
    return failures


def spread(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def summarise(outcomes: dict[tuple[str, str], list[Outcome]]) -> list[dict[str, Any]]:
    rows = []
    for (variant, task), runs in outcomes.items():
        rise = [o.final - o.start for o in runs]
        drop = max(o.best - o.final for o in runs)
        stuck = max(o.stuck for o in runs)
        rows.append(
            {
                "variant": variant,
                "task": task,
                "seeds": len(runs),
                "start": [o.start for o in runs],
                "final": [o.final for o in runs],
                "best": [o.best for o in runs],
                "rise_mean": statistics.fmean(rise),
                "max_drop_from_best": drop,
                "no_step_rounds": [o.no_step for o in runs],
                "longest_no_signal_streak": stuck,
                "minutes": statistics.fmean(o.seconds for o in runs) / 60,
                "targets_met": statistics.fmean(rise) >= TARGET_RISE and drop <= TARGET_DROP and stuck < STUCK_ROUNDS,
                "curves": [list(map(list, o.evals)) for o in runs],
            }
        )
    return rows


def markdown(rows: Sequence[dict[str, Any]], command: str) -> str:
    header = (
        "| variant | task | seeds | pass@1 before | after | best | rise | worst drop below own best "
        "| rounds without a step | longest no-signal streak | min/run | targets |"
    )
    lines = [f"`{command}`", "", header, "|" + "---|" * 12]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['task']} | {row['seeds']} | {spread(row['start'])} | {spread(row['final'])} "
            f"| {spread(row['best'])} | {row['rise_mean']:+.3f} | {row['max_drop_from_best']:.3f} "
            f"| {statistics.fmean(row['no_step_rounds']):.1f} | {row['longest_no_signal_streak']} "
            f"| {row['minutes']:.1f} | {'met' if row['targets_met'] else 'missed'} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows))
    colours = {v: f"C{i}" for i, v in enumerate(dict.fromkeys(row["variant"] for row in rows))}
    columns = min(len(tasks), PLOT_COLUMNS)
    lines = -(-len(tasks) // columns)
    fig, grid = plt.subplots(lines, columns, figsize=(4.5 * columns, 3.6 * lines), squeeze=False, sharey=True)
    axes = grid.flatten()
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    for ax, task in zip(axes, tasks):
        for row in (r for r in rows if r["task"] == task):
            rounds = sorted({int(r) for curve in row["curves"] for r, _ in curve})
            per_round = [[v for curve in row["curves"] for r, v in curve if int(r) == x] for x in rounds]
            x = [r + 1 for r in rounds]  # evaluations after round r; 0 = before training
            mean = [statistics.fmean(v) for v in per_round]
            colour = colours[row["variant"]]
            ax.plot(x, mean, marker="o", color=colour, label=f"{row['variant']} (n={row['seeds']})")
            ax.fill_between(
                x,
                [min(v) for v in per_round],
                [max(v) for v in per_round],
                color=colour,
                alpha=0.15,
                linewidth=0,
            )
        ax.set_title(task)
        ax.set_xlabel("rounds trained")
        ax.grid(alpha=0.3)
    for line in grid:
        line[0].set_ylabel("held-out pass@1 (mean, seed range)")
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    axes[0].legend(handles.values(), handles.keys(), fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)


def parse_variants(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``name:key=value;key=value`` -> {name: (sets)}; none given: one variant, "recipe"."""
    variants: dict[str, tuple[str, ...]] = {}
    for item in items:
        name, _, sets = item.partition(":")
        if not name or not all(part.count("=") >= 1 for part in sets.split(";") if part):
            raise SystemExit(f"--variant {item!r}: expected NAME:KEY=VALUE;KEY=VALUE")
        variants[name] = tuple(part for part in sets.split(";") if part)
    return variants or {"recipe": ()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="arithmetic,countdown,sat,sort", help="comma-separated task names")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run.seed values")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key for every run (after the preset)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:K=V;K=V",
        help="a recipe variant to compare (its keys after --set); repeatable",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default runs/learning/<time>)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="VARIANT/TASK",
        help="run only these variant/task pairs (shell patterns, e.g. 'recipe/*'); repeatable",
    )
    parser.add_argument("--report-only", action="store_true", help="summarise the runs in --out, run nothing")
    parser.add_argument(
        "--partial", action="store_true", help="summarise unfinished runs too (their evaluations so far)"
    )
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / "learning" / rundir.timestamp()
    variants = parse_variants(args.variant)
    common = (*PRESETS[args.preset], *args.sets)
    for task in args.tasks.split(","):
        if task.startswith("preset:") and task.removeprefix("preset:") not in TASK_MIXES:
            raise SystemExit(f"--tasks {task}: no such preset; choose one of {', '.join(TASK_MIXES)}")
    jobs = [
        Job(variant, task, int(seed), (*common, *sets), out / variant / task.replace(":", "-") / f"seed{seed}")
        for variant, sets in variants.items()
        for task in args.tasks.split(",")
        for seed in args.seeds.split(",")
        if not args.only or any(fnmatch.fnmatchcase(f"{variant}/{task}", pattern) for pattern in args.only)
    ]
    command = " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    failures = [] if args.report_only else run_jobs(jobs, args.rounds, args.jobs, args.threads)
    outcomes: dict[tuple[str, str], list[Outcome]] = {}
    for job in jobs:
        if finished(job.folder, args.rounds) or (args.partial and has_evaluations(job.folder)):
            outcomes.setdefault((job.variant, job.task), []).append(Outcome.read(job.folder))
            for task in TASK_MIXES.get(job.preset or "", ()):
                outcomes.setdefault((job.variant, f"{task} ({job.preset})"), []).append(Outcome.read(job.folder, task))
    rows = summarise(outcomes)
    text = markdown(rows, f"python {command}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.md").write_text(text)
    rundir.write_json(out / "learning.json", {"command": f"python {command}", "rows": rows, "failures": failures})
    if rows:
        plot(rows, out / "learning.png")
    print(text)
    for failure in failures:
        print("FAILED", failure, file=sys.stderr)
    print(f"results: {out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
