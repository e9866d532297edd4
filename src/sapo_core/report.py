"""Reward curves from runs' ``metrics.jsonl``: a picture (matplotlib) and a table.

A path is a run directory (it holds ``metrics.jsonl``) or a folder of them (an experiment,
a sweep), searched two levels down. Each run is one curve of ``reward/mean`` per round, with
its held-out ``eval/pass@1`` as markers (round -1 is the evaluation before training).

A swarm (``sapo report ROOT --experiment NAME``) is read from its shared folder instead:
``<root>/<experiment>/metrics/<node>.jsonl`` (written by the folder transport's observers), one
curve per node, plus the swarm mean: per round, the mean ``reward/mean`` of the nodes that have
that round. The folder must be local (or mounted): the core reads no URLs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from sapo_core import codec
from sapo_core.errors import SapoError
from sapo_core.rundir import METRICS_FILE, read_jsonl, read_metrics

SWARM_METRICS_DIR = "metrics"
SWARM_MEAN = "swarm mean"


@attrs.frozen
class Curve:
    """One run's rounds: its training reward and, where evaluated, its pass@1."""

    label: str
    rounds: tuple[int, ...]
    reward: tuple[float, ...]
    eval_rounds: tuple[int, ...]
    pass_at_1: tuple[float, ...]
    mean: bool = False  # the swarm mean: drawn thick and black


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
    return curve_from_lines(read_metrics(run_dir), label or run_dir.name)


def curve_from_lines(lines: Iterable[dict[str, Any]], label: str) -> Curve:
    """A curve from metrics lines; a round logged twice (a resumed run) keeps its last line."""
    reward_by: dict[int, float] = {}
    passed_by: dict[int, float] = {}
    for line in lines:
        round = line.get("round")
        if not isinstance(round, int) or isinstance(round, bool):
            continue
        for key, into in (("reward/mean", reward_by), ("eval/pass@1", passed_by)):
            value = line.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                into[round] = float(value)
    rounds, eval_rounds = sorted(reward_by), sorted(passed_by)
    return Curve(label, tuple(rounds), tuple(reward_by[r] for r in rounds), tuple(eval_rounds),
                 tuple(passed_by[r] for r in eval_rounds))



def swarm_curves(root: str | Path, experiment: str) -> list[Curve]:
    """One curve per node of ``<root>/<experiment>/metrics/*.jsonl`` (nodes without rewards, as a
    coordinator, are left out), then the swarm mean. SapoError when there is nothing to draw."""
    if "://" in str(root):
        raise SapoError(f"{root}: sapo report reads a local or mounted folder, not a URL (copy or mount it first)")
    try:
        codec.validate_experiment_name(experiment)
    except codec.PayloadError as exc:
        raise SapoError(f"--experiment: {exc}") from exc
    root = Path(root)
    if not root.is_dir():
        raise SapoError(f"{root}: no such folder")
    folder = root / experiment
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise SapoError(f"no experiment {experiment!r} under {root} (experiments found there: {', '.join(found) or 'none'})")
    files = sorted(p for p in (folder / SWARM_METRICS_DIR).glob("*.jsonl") if p.is_file() and not p.name.startswith("."))
    curves = [curve_from_lines(read_jsonl(path), path.name[: -len(".jsonl")]) for path in files]
    curves = [curve for curve in curves if curve.rounds or curve.eval_rounds]
    if not curves:
        raise SapoError(f"{folder / SWARM_METRICS_DIR}: no node's metrics with rewards yet (<node>.jsonl)")
    return [*curves, swarm_mean(curves)]


def swarm_mean(curves: Sequence[Curve]) -> Curve:
    """Per round, the mean reward (and pass@1) over the curves that have that round."""
    def mean_of(pairs: Iterable[tuple[int, float]]) -> tuple[tuple[int, ...], tuple[float, ...]]:
        by_round: dict[int, list[float]] = {}
        for round, value in pairs:
            by_round.setdefault(round, []).append(value)
        rounds = sorted(by_round)
        return tuple(rounds), tuple(sum(by_round[r]) / len(by_round[r]) for r in rounds)

    rounds, reward = mean_of((r, v) for c in curves for r, v in zip(c.rounds, c.reward))
    eval_rounds, passed = mean_of((r, v) for c in curves for r, v in zip(c.eval_rounds, c.pass_at_1))
    return Curve(SWARM_MEAN, rounds, reward, eval_rounds, passed, mean=True)


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
    index = 0
    for curve in curves:
        if curve.mean:
            color, width, z = "black", 3.0, 3
        else:
            color, width, z = f"C{index % 10}", 1.5, 2
            index += 1
        if curve.rounds:
            axis.plot(curve.rounds, curve.reward, color=color, marker=".", linewidth=width, zorder=z,
                      label=f"{curve.label} reward")
        if curve.eval_rounds:
            axis.plot(curve.eval_rounds, curve.pass_at_1, color=color, linestyle="--", marker="o", linewidth=width,
                      zorder=z, label=f"{curve.label} held-out pass@1")
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
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
