"""Reward curves from runs' ``metrics.jsonl``: a picture (matplotlib) and a table.

A path is a run directory (it holds ``metrics.jsonl``) or a folder of them (an experiment,
a sweep), searched two levels down. Each run is one curve of ``reward/mean`` per round, with
its held-out ``eval/pass@1`` as markers at the rounds that evaluated.

Rounds are shown as every display shows them (`sapo_core.progress.round_name`): counted from
1, the evaluation before training (metrics.jsonl's round -1) at 0, "before training". The
``--json`` rows keep metrics.jsonl's numbers.

A swarm (``sapo report ROOT --experiment NAME``) is read from its shared folder instead:
``<root>/<experiment>/metrics/<node>.jsonl`` (written by the folder transport's observers), one
curve per node, plus the swarm mean: per round, the mean ``reward/mean`` of the nodes that have
that round. The folder must be local (or mounted): the core reads no URLs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from sapo_core import codec
from sapo_core.errors import SapoError
from sapo_core.progress import BEFORE_TRAINING
from sapo_core.rundir import METRICS_FILE, read_jsonl, read_metrics

__all__ = [
    "Curve",
    "LINESTYLES",
    "MARKERS",
    "PLOT_EXTRA",
    "PlotUnavailable",
    "SWARM_MEAN",
    "SWARM_METRICS_DIR",
    "curve_from_lines",
    "dodge",
    "figure_of",
    "find_runs",
    "labels_for",
    "load_curve",
    "plot",
    "round_label",
    "swarm_curves",
    "swarm_mean",
    "table_rows",
    "x_of",
]

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
        below = sorted(
            {p.parent for pattern in (f"*/{METRICS_FILE}", f"*/*/{METRICS_FILE}") for p in path.glob(pattern)}
        )
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
    return Curve(
        label,
        tuple(rounds),
        tuple(reward_by[r] for r in rounds),
        tuple(eval_rounds),
        tuple(passed_by[r] for r in eval_rounds),
    )


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
        raise SapoError(
            f"no experiment {experiment!r} under {root} (experiments found there: {', '.join(found) or 'none'})"
        )
    files = sorted(
        p for p in (folder / SWARM_METRICS_DIR).glob("*.jsonl") if p.is_file() and not p.name.startswith(".")
    )
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


#: One marker shape per curve: curves with equal values at a round differ by shape, not only colour.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
#: One line style per curve, for the same reason where reward lines run on top of each other.
LINESTYLES: tuple[Literal["-", "--", "-.", ":"], ...] = ("-", "--", "-.", ":")


def x_of(round: int) -> int:
    """Where a round sits on the picture's axis: rounds counted from 1, the evaluation before training at 0."""
    return round + 1


def dodge(index: int, count: int, span: int) -> float:
    """Curve ``index``'s sideways shift, in rounds: the ``count`` curves' points at one round sit
    side by side instead of on top of each other (a small share of the axis, under half a round)."""
    step = min(0.5 / count, 0.02 * max(span, 1))
    return (index - (count - 1) / 2) * step


class PlotUnavailable(SapoError):
    """matplotlib, which draws the curves, is not installed (the ``plot`` extra)."""


#: How to get what `plot` needs.
PLOT_EXTRA = "pip install 'sapo-core[plot]'"


def plot(curves: Sequence[Curve], output: Path, *, title: str = "sapo: reward per round") -> Path:
    """Draw the curves into a PNG (see `figure_of`); `PlotUnavailable` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(f"sapo report draws with matplotlib: {PLOT_EXTRA}") from exc
    figure = figure_of(curves, title)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    plt.close(figure)
    return output


def figure_of(curves: Sequence[Curve], title: str) -> Any:
    """A matplotlib figure of the curves: training reward per round as lines above, held-out
    pass@1 below as markers only where it was measured (nothing drawn between evaluations).

    Each curve has its own colour, marker and line style, and its points are shifted slightly
    sideways, so no curve hides another; the swarm mean is a wide grey band under the nodes'
    reward lines and a black bar across each evaluation's markers."""
    figure, rewards, passes = _figure_and_axes(evaluated=any(curve.eval_rounds for curve in curves))
    nodes = [curve for curve in curves if not curve.mean]
    xs = [x_of(r) for c in curves for r in (*c.rounds, *c.eval_rounds)] or [1]
    first, span = min(xs), max(xs)
    handles = [
        _draw_node(rewards, passes, curve, index, dodge(index, len(nodes), span)) for index, curve in enumerate(nodes)
    ]
    handles += [_draw_mean(rewards, passes, curve) for curve in curves if curve.mean]
    rewards.set_title(title)
    rewards.set_ylabel("reward\n(each round's rollouts)")
    if passes is not None:
        passes.set_ylabel("held-out pass@1\n(evaluations only)")
    _from_zero(rewards, [v for c in curves for v in c.reward])
    if passes is not None:
        _from_zero(passes, [v for c in curves for v in c.pass_at_1])
    axes = (rewards,) if passes is None else (rewards, passes)
    for axis in axes:
        axis.grid(alpha=0.3)
    _round_axis(figure, axes[-1], first, span)
    rewards.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.tight_layout()
    return figure


def _figure_and_axes(*, evaluated: bool) -> tuple[Any, Any, Any]:
    """The figure, its reward axis and, when anything was evaluated, the pass@1 axis below it (else None)."""
    import matplotlib.pyplot as plt

    if not evaluated:
        figure, rewards = plt.subplots(figsize=(10, 4.5), dpi=120)
        return figure, rewards, None
    figure, (rewards, passes) = plt.subplots(
        2, 1, sharex=True, figsize=(10, 6.5), dpi=120, gridspec_kw={"height_ratios": (3, 2)}
    )
    return figure, rewards, passes


def _draw_node(rewards: Any, passes: Any, curve: Curve, index: int, shift: float) -> Any:
    """Node curve number ``index``, shifted sideways by ``shift`` rounds; its legend handle."""
    from matplotlib.lines import Line2D

    color, marker = f"C{index % 10}", MARKERS[index % len(MARKERS)]
    style = LINESTYLES[index % len(LINESTYLES)]
    if curve.rounds:
        rewards.plot(
            [x_of(r) + shift for r in curve.rounds],
            curve.reward,
            color=color,
            marker=marker,
            markersize=4,
            linewidth=1.5,
            linestyle=style,
            alpha=0.85,
            zorder=3,
        )
    if curve.eval_rounds:
        passes.scatter(
            [x_of(r) + shift for r in curve.eval_rounds],
            curve.pass_at_1,
            marker=marker,
            s=60,
            facecolors="none",
            edgecolors=color,
            linewidths=1.8,
            zorder=4,
        )
    return Line2D([], [], color=color, marker=marker, linestyle=style, label=curve.label)


def _draw_mean(rewards: Any, passes: Any, curve: Curve) -> Any:
    """The swarm mean: a wide grey band and a black bar at each evaluation; its legend handle."""
    from matplotlib.lines import Line2D

    if curve.rounds:  # under the nodes' lines, so it hides none of them
        rewards.plot(
            [x_of(r) for r in curve.rounds],
            curve.reward,
            color="black",
            linewidth=6,
            alpha=0.25,
            solid_capstyle="round",
            zorder=2,
        )
    if curve.eval_rounds:
        passes.scatter(
            [x_of(r) for r in curve.eval_rounds],
            curve.pass_at_1,
            marker="_",
            s=900,
            color="black",
            linewidths=2.5,
            zorder=5,
        )
    return Line2D(
        [],
        [],
        color="black",
        linewidth=6,
        alpha=0.25,
        marker="_",
        markersize=14,
        markeredgecolor="black",
        markeredgewidth=2.5,
        label=f"{curve.label} (band, bar)",
    )


def _from_zero(axis: Any, values: Sequence[float]) -> None:
    """Values that are none below 0 (pass@1, most rewards) on an axis from just under 0: matplotlib
    would centre all-zero values on an empty negative half."""
    if values and min(values) >= 0:
        top = max(0.1, *values)
        axis.set_ylim(-0.06 * top, 1.1 * top)


def _round_axis(figure: Any, axis: Any, first: int, span: int) -> None:
    """Whole rounds from ``first`` to ``span`` on ``axis``, 0 named "before training"."""
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlim(first - 0.5, span + 0.5)
    figure.canvas.draw()  # the ticks exist only once drawn
    ticks = [t for t in axis.get_xticks() if first <= t <= span]
    axis.set_xticks(ticks, [BEFORE_TRAINING.replace(" ", "\n") if t == 0 else f"{t:g}" for t in ticks])
    axis.set_xlabel("round")


def round_label(round: int) -> str:
    """A round in `sapo report`'s table: counted from 1, round -1 as "before training"."""
    return BEFORE_TRAINING if round < 0 else str(x_of(round))


def table_rows(curve: Curve) -> list[dict[str, Any]]:
    """One row per round with the training reward and, where evaluated, pass@1."""
    passed = dict(zip(curve.eval_rounds, curve.pass_at_1))
    reward = dict(zip(curve.rounds, curve.reward))
    return [{"round": r, "reward": reward.get(r), "pass@1": passed.get(r)} for r in sorted(set(reward) | set(passed))]
