"""What a person reads of `sapo swarm table`: table.md, cumulative_reward.png, the terminal summary.

All of it is drawn from table.json's data (`sapo_gdrive.table_stats.table_data`), so the three
always say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sapo_core import report

#: The SAPO paper's cumulative rewards (8 x Qwen2.5-0.5B, 2000 rounds, ReasoningGYM), for comparison.
PAPER = {"8/0": 561.79, "6/2": 854.43, "4/4": 1093.31, "2/6": 945.87}
COLUMNS = (
    "split I/J",
    "seeds",
    "cumulative reward",
    "± seeds",
    "± nodes",
    "pass@1 before",
    "final pass@1",
    "± seeds",
    "ratio to {ref}",
    "± seeds",
    "groups trained a round: own + peers'",
    "rounds without a step",
)


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _resample_note(resample: int) -> str:
    if not resample:
        return " No dynamic sampling (tasks.resample = 0)."
    return (
        f" But dynamic sampling is on (tasks.resample = {resample}), so compute is not equal: a node whose own groups lack a "
        "learning signal draws up to that many more batches, getting from extra generation what peers' groups "
        "would bring."
    )


def _curriculum_note(curriculum: bool) -> str:
    if not curriculum:
        return " Every node trains at the configured difficulty (tasks.curriculum = false)."
    return (
        " The curriculum is on (tasks.curriculum = true): each node's training difficulty follows its own "
        "success, so its cumulative reward is summed over different difficulties."
    )


def header(data: Mapping[str, Any]) -> list[str]:
    """The lines above the table: what was run, what is equal across splits, what the numbers are."""
    compute = data["equal_compute"]
    seeds = ", ".join(str(seed) for seed in data["seeds"])
    lines = [
        (
            f"SAPO splits: {plural(data['workers'], 'worker')} per swarm, {plural(data['rounds'], 'round')}, "
            f"{'seed' if len(data['seeds']) == 1 else 'seeds'} {seeds}."
        ),
        (
            f"Equal compute per node across splits: every node draws tasks.problems_per_round = "
            f"{compute['tasks.problems_per_round']} problems a round and samples inference.num_completions = "
            f"{compute['inference.num_completions']} completions of at most inference.max_new_tokens = "
            f"{compute['inference.max_new_tokens']} tokens each; only what it trains on differs: I of its own groups "
            "and J of its peers' (swarm.local_groups / swarm.external_groups)."
            + _resample_note(compute.get("tasks.resample", 0))
            + _curriculum_note(compute.get("tasks.curriculum", False))
        ),
        (
            f"Cumulative reward: a node's {data['metric']} (its own rollouts' mean reward) summed over rounds, "
            f"averaged over the swarm's nodes, then over seeds. Final pass@1: held-out {data['pass_at_1']} after the "
            "last round (before: before training, with eval.at_start). ±: sample standard deviation over seeds, or "
            "over every node of every seed."
        ),
    ]
    if data.get("drive_sync"):
        lines.append(
            "Over a synced folder (--drive-sync): in each swarm every second worker ran on a second copy of the "
            "swarm folder, a simulated Drive client between the copies (changes 0.5-5 s late, rewritten in place "
            "in pieces, conflict copies)."
        )
    trained = sorted({row["own_groups"] + row["peer_groups"] for row in data["rows"]})
    if len(trained) > 1:
        lines.append(
            f"Note: these splits train on different numbers of groups a round (I + J: "
            f"{', '.join(map(str, trained))}); the paper's all train on 8."
        )
    if data["reference"] is None:
        lines.append("No isolated split (J = 0) in the table: no ratios.")
    if not data["complete"]:
        left = ", ".join(f"{m['split']} seed {m['seed']}" for m in data["missing"])
        lines.append(f"Incomplete: not run yet: {left}. The same command resumes the table.")
    return lines


def cells(row: Mapping[str, Any]) -> list[str]:
    cumulative, passed, ratio = row["cumulative_reward"], row["final_pass_at_1"], row["ratio_to_reference"] or {}
    trained = row.get("trained_groups")  # absent from a table.json of schema 1
    return [
        row["split"],
        str(len(row["seeds"])),
        number(cumulative["mean"], 2),
        number(cumulative["std_seeds"], 2),
        number(cumulative["std_nodes"], 2),
        number(row["pass_at_1_before"]),
        number(passed["mean"]),
        number(passed["std_seeds"]),
        number(ratio.get("mean")),
        number(ratio.get("std_seeds")),
        "-" if trained is None else f"{trained['own']:.1f} + {trained['peers']:.1f}",
        "-" if trained is None else f"{trained['rounds_without_step']:.0%}",
    ]


def columns(data: Mapping[str, Any]) -> list[str]:
    return [name.format(ref=data["reference"] or "-") for name in COLUMNS]


def markdown(data: Mapping[str, Any]) -> str:
    """table.md: the header, the table, the paper's numbers and the command."""
    names = columns(data)
    lines = [
        "# sapo swarm table",
        "",
        *(f"{line}\n" for line in header(data)),
        "| " + " | ".join(names) + " |",
        "|" + "---|" * len(names),
    ]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in data["rows"]]
    paper = ", ".join(f"{split} {value}" for split, value in PAPER.items())
    lines += [
        "",
        f"The paper (8 x Qwen2.5-0.5B, 2000 rounds, ReasoningGYM), cumulative reward: {paper}.",
        "",
        "Command:",
        "",
        "```bash",
        data["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def plot(data: Mapping[str, Any], output: Path) -> Path:
    """cumulative_reward.png: per split, the seeds' mean cumulative reward by round, a band of
    ± one standard deviation over seeds; `report.PlotUnavailable` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise report.PlotUnavailable(f"sapo swarm table draws with matplotlib: {report.PLOT_EXTRA}") from exc
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=120)
    for index, row in enumerate(data["rows"]):
        draw_curve(axis, row, f"C{index % 10}", report.LINESTYLES[index % len(report.LINESTYLES)])
    seeds = len(data["seeds"])
    axis.set_title(
        f"sapo swarm table: {plural(data['workers'], 'worker')} per swarm, {plural(seeds, 'seed')}, "
        "band: ± 1 std over seeds"
    )
    axis.set_xlabel("round")
    axis.set_ylabel(f"cumulative reward\n(sum of {data['metric']}, nodes' mean)")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlim(left=0)
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(title="split I/J", fontsize="small", loc="upper left")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    plt.close(figure)
    return output


def draw_curve(axis: Any, row: Mapping[str, Any], color: str, style: str) -> None:
    """A split's curve from 0 before the first round; its band where there are seeds to spread."""
    curve = row["curve"]
    rounds = [0, *(report.x_of(r) for r in range(len(curve["mean"])))]  # counted from 1, as every display does
    means = [0.0, *curve["mean"]]
    seeds = len(row["seeds"])
    axis.plot(
        rounds,
        means,
        color=color,
        linestyle=style,
        marker="o",
        markersize=3,
        label=f"{row['split']} ({plural(seeds, 'seed')})",
    )
    if all(std is not None for std in curve["std_seeds"]):  # one seed has no spread to draw
        spreads = [0.0, *curve["std_seeds"]]
        axis.fill_between(
            rounds,
            [m - s for m, s in zip(means, spreads)],
            [m + s for m, s in zip(means, spreads)],
            color=color,
            alpha=0.2,
            linewidth=0,
        )


def summary(data: Mapping[str, Any]) -> Any:
    """The table for the terminal."""
    from rich.table import Table

    grid = Table(*columns(data), title=header(data)[0], title_justify="left", box=None)
    for row in data["rows"]:
        grid.add_row(*cells(row))
    return grid
