"""Reward curves from runs' ``metrics.jsonl``: a picture (matplotlib) and a table.

A path is a run directory (it holds ``metrics.jsonl``) or a folder of them (an experiment,
a sweep), searched two levels down. Each run is one curve of ``reward/mean`` per round, with
its held-out ``eval/pass@1`` as markers (round -1 is the evaluation before training).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from sapo_core.errors import SapoError
from sapo_core.rundir import METRICS_FILE, read_metrics


@attrs.frozen
class Curve:
    """One run's rounds: its training reward and, where evaluated, its pass@1."""

    label: str
    rounds: tuple[int, ...]
    reward: tuple[float, ...]
    eval_rounds: tuple[int, ...]
    pass_at_1: tuple[float, ...]


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Run directories at or up to two levels below each path, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if (path / METRICS_FILE).is_file():
            found.append(path)
            continue
        below = sorted({p.parent for pattern in (f"*/{METRICS_FILE}", f"*/*/{METRICS_FILE}") for p in path.glob(pattern)})
        if not below:
            raise SapoError(f"{path}: no {METRICS_FILE} here or in the folders below (is it a run directory?)")
        found.extend(below)
    return found


def load_curve(run_dir: Path, label: str | None = None) -> Curve:
    rounds, reward, eval_rounds, passed = [], [], [], []
    for line in read_metrics(run_dir):
        round = line.get("round")
        if not isinstance(round, int):
            continue
        if "reward/mean" in line:
            rounds.append(round)
            reward.append(float(line["reward/mean"]))
        if "eval/pass@1" in line:
            eval_rounds.append(round)
            passed.append(float(line["eval/pass@1"]))
    return Curve(label or run_dir.name, tuple(rounds), tuple(reward), tuple(eval_rounds), tuple(passed))


def labels_for(runs: Sequence[Path]) -> list[str]:
    """The shortest trailing path parts that tell the runs apart."""
    for depth in range(1, 4):
        labels = ["/".join(run.parts[-depth:]) for run in runs]
        if len(set(labels)) == len(labels):
            return labels
    return [str(run) for run in runs]


def plot(curves: Sequence[Curve], output: Path, *, title: str = "sapo: reward per round") -> Path:
    """Draw the curves into a PNG: training reward (lines), held-out pass@1 (markers)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SapoError("sapo report draws with matplotlib: pip install 'sapo-core[plot]'") from exc
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=120)
    for index, curve in enumerate(curves):
        color = f"C{index % 10}"
        if curve.rounds:
            axis.plot(curve.rounds, curve.reward, color=color, marker=".", label=f"{curve.label} reward")
        if curve.eval_rounds:
            axis.plot(curve.eval_rounds, curve.pass_at_1, color=color, linestyle="--", marker="o",
                      label=f"{curve.label} held-out pass@1")
    axis.set_xlabel("round (-1: before training)")
    axis.set_ylabel("reward / pass@1")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="best")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    plt.close(figure)
    return output


def table_rows(curve: Curve) -> list[dict[str, Any]]:
    """One row per round with the training reward and, where evaluated, pass@1."""
    passed = dict(zip(curve.eval_rounds, curve.pass_at_1))
    reward = dict(zip(curve.rounds, curve.reward))
    return [{"round": r, "reward": reward.get(r), "pass@1": passed.get(r)} for r in sorted(set(reward) | set(passed))]
