"""The numbers of `sapo swarm table`, from its swarms' run folders and nothing else.

Per node (``<swarm>/runs/<node>/metrics.jsonl``): its *cumulative reward*, the sum over rounds of
``reward/mean`` (the mean total reward of the rollouts it generated that round, as SAPO's paper
counts it), and its *final pass@1*, ``eval/pass@1`` of its newest held-out evaluation. Per swarm:
the mean over its nodes. Per split: the mean over seeds, and two spreads (sample standard
deviations): over seeds (of the swarms' means) and over nodes (every node of every seed).

The *ratio* of a split is its mean cumulative reward over the isolated split's (J = 0; of several,
the one with the largest I), over the seeds both have. Its spread is over seeds, pairing the two
splits' swarms of one seed, which drew the same problems.

Why a split wins or loses shows in what its nodes trained on: the groups with a learning signal a
node took a round, its own and its peers' (``groups/trained_local`` / ``groups/trained_external``),
and the share of rounds in which it had none at all and took no learner step.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from sapo_core.errors import SapoError
from sapo_core.report import curve_from_lines
from sapo_core.rundir import METRICS_FILE, read_metrics
from sapo_gdrive.swarm_run import RUNS_DIR

if TYPE_CHECKING:
    from sapo_gdrive.table import Split, SwarmJob, Table

#: Bumped when table.json changes shape.
SCHEMA = 1
REWARD = "reward/mean"
PASS_AT_1 = "eval/pass@1"
TRAINED_OWN = "groups/trained_local"
TRAINED_PEERS = "groups/trained_external"


@attrs.frozen
class NodeResult:
    """One worker's rounds: its reward per round (0 .. rounds - 1) and its held-out pass@1."""

    node: str
    rewards: tuple[float, ...]
    final_pass: float | None  # the newest evaluation after training began
    pass_before: float | None  # the evaluation before training (eval.at_start), if any
    trained: tuple[tuple[int, int], ...] = ()  # per round logged: (own, peers') groups trained on

    @property
    def cumulative(self) -> float:
        return sum(self.rewards)


@attrs.frozen
class SwarmResult:
    """One swarm of the table: a split, a seed, its workers."""

    split: Split
    seed: int
    nodes: tuple[NodeResult, ...]

    @property
    def cumulative(self) -> float:
        return mean([node.cumulative for node in self.nodes])

    @property
    def curve(self) -> list[float]:
        """The nodes' mean cumulative reward after each round."""
        per_round = [mean(rewards) for rewards in zip(*(node.rewards for node in self.nodes))]
        return [sum(per_round[: index + 1]) for index in range(len(per_round))]

    @property
    def final_pass(self) -> float | None:
        values = [node.final_pass for node in self.nodes if node.final_pass is not None]
        return mean(values) if values else None

    @property
    def pass_before(self) -> float | None:
        values = [node.pass_before for node in self.nodes if node.pass_before is not None]
        return mean(values) if values else None


def training_summary(nodes: Sequence[NodeResult]) -> dict[str, float] | None:
    """Per round, averaged over rounds then nodes: own and peers' groups trained on, and the share
    of rounds without a learner step (no group at all). None when no node logged them."""
    logged = [node.trained for node in nodes if node.trained]
    if not logged:
        return None
    return {
        "own": mean([mean([own for own, _ in rounds]) for rounds in logged]),
        "peers": mean([mean([peers for _, peers in rounds]) for rounds in logged]),
        "rounds_without_step": mean([mean([float(own + peers == 0) for own, peers in rounds]) for rounds in logged]),
    }


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def stdev(values: Sequence[float]) -> float | None:
    """The sample standard deviation; None for fewer than two values (no spread to see)."""
    return statistics.stdev(values) if len(values) >= 2 else None


def read_node(run_dir: Path, node: str, rounds: int) -> NodeResult:
    """A worker's result from its metrics.jsonl; SapoError when a round is missing."""
    lines = read_metrics(run_dir)
    curve = curve_from_lines(lines, node)  # a round logged twice keeps its last line
    by_round = dict(zip(curve.rounds, curve.reward))
    missing = [r for r in range(rounds) if r not in by_round]
    if missing:
        raise SapoError(
            f"{run_dir / METRICS_FILE}: no {REWARD} for round(s) "
            f"{', '.join(str(r) for r in missing[:5])}{' ...' if len(missing) > 5 else ''} of {rounds}"
        )
    evaluated = dict(zip(curve.eval_rounds, curve.pass_at_1))
    after = [r for r in evaluated if 0 <= r < rounds]
    return NodeResult(
        node,
        tuple(by_round[r] for r in range(rounds)),
        evaluated[max(after)] if after else None,
        evaluated.get(-1),
        trained_per_round(lines, rounds),
    )


def trained_per_round(lines: Iterable[Mapping[str, Any]], rounds: int) -> tuple[tuple[int, int], ...]:
    """(own, peers') groups trained on in each round that logged both; a round logged twice keeps its last."""
    by_round: dict[int, tuple[int, int]] = {}
    for line in lines:
        round, own, peers = line.get("round"), line.get(TRAINED_OWN), line.get(TRAINED_PEERS)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (round, own, peers)) and 0 <= round < rounds:
            by_round[round] = (own, peers)
    return tuple(by_round[r] for r in sorted(by_round))


def read_swarm(job: SwarmJob, *, workers: int, rounds: int) -> SwarmResult:
    """Every worker of a swarm (``worker-1`` .. ``worker-N``, as `sapo swarm run` names them)."""
    nodes = tuple(read_node(job.root / RUNS_DIR / f"worker-{i}", f"worker-{i}", rounds) for i in range(1, workers + 1))
    return SwarmResult(job.split, job.seed, nodes)


def reference_split(splits: Iterable[Split]) -> Split | None:
    """The isolated split the ratios are to: J = 0, the largest I (8/0 in the paper's table)."""
    isolated = [split for split in splits if split.peers == 0]
    return max(isolated, key=lambda split: split.own) if isolated else None


def spread(values: Mapping[int, float]) -> dict[str, Any]:
    """Per-seed values, their mean and their spread over seeds."""
    listed = [values[seed] for seed in sorted(values)]
    return {
        "mean": mean(listed) if listed else None,
        "std_seeds": stdev(listed),
        "per_seed": {str(seed): values[seed] for seed in sorted(values)},
    }


def ratios(swarms: Sequence[SwarmResult], reference: Sequence[SwarmResult]) -> dict[str, Any]:
    """Over the seeds both splits have (a partial table compares like with like): the ratio of the
    mean cumulative rewards, and the per-seed ratios with their spread."""
    ours = {swarm.seed: swarm.cumulative for swarm in swarms}
    theirs = {swarm.seed: swarm.cumulative for swarm in reference}
    seeds = sorted(set(ours) & set(theirs))
    base = mean([theirs[seed] for seed in seeds]) if seeds else 0.0
    if not base:  # no seed in common, or an isolated split that earned nothing: no ratio to give
        return {"mean": None, "std_seeds": None, "per_seed": {}}
    paired = {seed: ours[seed] / theirs[seed] for seed in seeds if theirs[seed]}
    return {
        "mean": mean([ours[seed] for seed in seeds]) / base,
        "std_seeds": stdev(list(paired.values())),
        "per_seed": {str(seed): value for seed, value in paired.items()},
    }


def split_row(split: Split, swarms: Sequence[SwarmResult], reference: Sequence[SwarmResult] | None) -> dict[str, Any]:
    """One row of table.json: a split's numbers over the seeds that finished."""
    cumulative = spread({swarm.seed: swarm.cumulative for swarm in swarms})
    cumulative["std_nodes"] = stdev([node.cumulative for swarm in swarms for node in swarm.nodes])
    cumulative["per_node"] = {str(swarm.seed): {node.node: node.cumulative for node in swarm.nodes} for swarm in swarms}
    passed = spread({swarm.seed: value for swarm in swarms if (value := swarm.final_pass) is not None})
    before = [value for swarm in swarms if (value := swarm.pass_before) is not None]
    curves = [swarm.curve for swarm in swarms]
    return {
        "split": split.label,
        "own_groups": split.own,
        "peer_groups": split.peers,
        "seeds": [swarm.seed for swarm in swarms],
        "cumulative_reward": cumulative,
        "final_pass_at_1": passed,
        "pass_at_1_before": mean(before) if before else None,
        "ratio_to_reference": None if reference is None else ratios(swarms, reference),
        "trained_groups": training_summary([node for swarm in swarms for node in swarm.nodes]),
        # Index r: after metrics round r (round r + 1 as every display counts).
        "curve": {"mean": [mean(col) for col in zip(*curves)], "std_seeds": [stdev(col) for col in zip(*curves)]}
        if curves
        else None,
    }


def table_data(table: Table, results: Sequence[SwarmResult], *, command: str) -> dict[str, Any]:
    """All of table.json: the settings, what is missing yet, one row per split with a finished swarm."""
    by_split = {split: sorted((r for r in results if r.split == split), key=lambda r: r.seed) for split in table.splits}
    reference = reference_split(table.splits)
    reference_results = by_split.get(reference) if reference is not None else None
    done = {(r.split, r.seed) for r in results}
    missing = [
        {"split": job.split.label, "seed": job.seed} for job in table.swarms if (job.split, job.seed) not in done
    ]
    return {
        "schema": SCHEMA,
        "command": command,
        "workers": table.workers,
        "rounds": table.rounds,
        "seeds": list(table.seeds),
        "splits": [split.label for split in table.splits],
        "drive_sync": table.synced,
        "metric": REWARD,
        "pass_at_1": PASS_AT_1,
        "equal_compute": table.equal_compute,
        "reference": None if reference is None else reference.label,
        "complete": not missing,
        "missing": missing,
        "rows": [split_row(split, rows, reference_results) for split, rows in by_split.items() if rows],
    }
