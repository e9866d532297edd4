"""What the trackers' tests share: a node's context, its rounds, and the hooks driven over them.

Also a script, for the trackers whose library keeps process-wide state (trackio reads its folder
when first imported, W&B starts a service): ``python tracked.py '<json>'`` drives the hooks in a
fresh process, ``{"workdir": ..., "experiment": ..., "nodes": [...], "report_to": [...]}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sapo_core.building import backend_context
from sapo_core.config import load_config
from sapo_core.interfaces import BackendContext

#: Set in every test config: neither may reach a tracker.
SECRET = "swarm-secret-0123456789"
API_KEY = "sk-test-abcdefghijklmnop"

#: The rounds every test node reports: the evaluation before training (-1) and two rounds,
#: with sapo's own names and the line's identifiers (round, node, time) that are not metrics.
ROUNDS: list[tuple[int, dict[str, Any]]] = [
    (
        -1,
        {
            "round": -1,
            "node": "?",
            "time": 1.7e9,
            "eval/pass@1": 0.25,
            "eval/pass@1/arithmetic": 0.25,
            "eval/reward_mean": 0.3,
        },
    ),
    (0, {"round": 0, "node": "?", "time": 1.7e9, "reward/mean": 0.5, "train/loss": 0.125, "groups/local": 3}),
    (
        1,
        {
            "round": 1,
            "node": "?",
            "time": 1.7e9,
            "reward/mean": 0.75,
            "train/loss": 0.0625,
            "groups/local": 3,
            "eval/pass@1": 0.5,
            "eval/pass@1/arithmetic": 0.5,
            "eval/reward_mean": 0.55,
        },
    ),
]


def context(
    workdir: Path,
    node: str,
    report_to: Sequence[str],
    *,
    experiment: str = "exp",
    role: str = "worker",
    run_dir: Path | None = None,
) -> BackendContext:
    """A swarm node's context as `sapo run` builds it: run dir ``<workdir>/<experiment>/<node>``."""
    config = load_config(
        env={},
        sets=[
            f"run.workdir={workdir.as_posix()}",
            f"run.experiment={experiment}",
            f"run.node_id={node}",
            f"run.report_to={json.dumps(list(report_to))}",
            f"swarm.secret={SECRET}",
            f"inference.api_key={API_KEY}",
        ],
    )
    return backend_context(config, role, run_dir or workdir / experiment / node)


def drive(ctx: BackendContext, rounds: Sequence[tuple[int, dict[str, Any]]] = ROUNDS) -> None:
    from sapo_trackers import plugin

    plugin.run_started(context=ctx)
    for round, metrics in rounds:
        plugin.round_finished(context=ctx, round=round, metrics={**metrics, "node": ctx.node})
    plugin.run_finished(context=ctx, metrics=dict(rounds[-1][1]))


def main(spec: dict[str, Any]) -> None:
    for node in spec["nodes"]:
        drive(context(Path(spec["workdir"]), node, spec["report_to"], experiment=spec["experiment"]))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
