"""A node among its peers: the settings they share, which round to work on, waiting for their
payloads, and taking in their groups (each problem regenerated here, its completions re-scored).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sapo_core import codec
from sapo_core.config import Config, SwarmSettings
from sapo_core.curriculum import task_variants
from sapo_core.errors import ConfigError
from sapo_core.interfaces import BackendContext, Collected, NodeInfo, Task, Transport
from sapo_core.logsafe import printable
from sapo_core.polling import Backoff
from sapo_core.records import SCHEMA_VERSION, Completion, Group, Problem, RoundPayload

log = logging.getLogger("sapo.node")

#: Settings every node of one experiment must agree on; stored by the first node to start.
SHARED_SETTINGS = (
    "tasks.names",
    "tasks.weights",
    "tasks.problems_per_round",
    "inference.num_completions",
    "rewards.weights",
    "advantages.scale_by_std",
    "swarm.local_groups",
    "swarm.external_groups",
    "swarm.round_seconds",
)

#: Re-scores a peer's completions of a problem with this node's rewards: (problem, completions, peer) -> Group.
Rescore = Callable[[Problem, Sequence[Completion], str], Group]


def swarm_settings(config: Config) -> dict[str, Any]:
    """The values of `SHARED_SETTINGS`, with the payload schema version."""
    data = config.to_dict(redact=True)
    settings: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    for key in SHARED_SETTINGS:
        section, name = key.split(".")
        settings[key] = data[section][name]
    return settings


def check_compatible(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> None:
    """Refuse to join a swarm whose stored settings differ from ours, naming each difference."""
    diffs = [
        f"{key}: swarm has {json.dumps(theirs.get(key))}, this node has {json.dumps(ours.get(key))}"
        for key in sorted(set(ours) | set(theirs))
        if json.dumps(ours.get(key), sort_keys=True) != json.dumps(theirs.get(key), sort_keys=True)
    ]
    if diffs:
        raise ConfigError(
            "This node's settings do not match the swarm's:\n  "
            + "\n  ".join(diffs)
            + "\nUse the swarm's values (e.g. --set KEY=VALUE) or start a new experiment."
        )


def next_round(
    transport: Transport,
    swarm: SwarmSettings,
    done: int,
    *,
    node: str,
    beat: Callable[[int], None],
    sleep: Callable[[float], None],
) -> int:
    """The round to work on after ``done``: the swarm's current one (jumping ahead if behind)."""
    if not transport.shared:
        return done + 1
    waited_since = time.monotonic()
    backoff = Backoff(swarm.poll_seconds, sleep)
    while True:
        beat(done)
        state = transport.read_state()
        if state is not None and state.round > done:
            if state.round > done + 1 and done >= 0:
                log.warning("%s: swarm is at round %d; skipping ahead from %d", node, state.round, done)
            return state.round
        # No node waits forever: without a coordinator's word, go on alone after a round's time.
        patience = swarm.round_seconds
        if state is not None and state.deadline is not None:
            patience = max(0.0, state.deadline - time.time()) + swarm.round_seconds
        if time.monotonic() - waited_since > patience:
            log.warning("%s: no new round from the coordinator; running round %d alone", node, done + 1)
            return done + 1
        backoff.pause()


def node_info(context: BackendContext, round: int = -1) -> NodeInfo:
    """This node's heartbeat: who it is and the round it is on (-1 before its first)."""
    now = time.time()
    return NodeInfo(
        node=context.node, role=context.role, model=context.model, started_at=now, last_seen=now, round=round
    )


def round_payload(context: BackendContext, round: int, local: Sequence[Group]) -> RoundPayload:
    """What this node publishes for ``round``: its own groups."""
    return RoundPayload(
        experiment=context.experiment,
        round=round,
        node=context.node,
        groups=tuple(local),
        model=context.model,
        created_at=time.time(),
    )


def wait_for_peers(
    transport: Transport,
    swarm: SwarmSettings,
    round: int,
    *,
    beat: Callable[[int], None],
    sleep: Callable[[float], None],
) -> None:
    """Until the round has closed and the payloads it closed with are here, or, with no coordinator
    in the round, every live peer has published; or a deadline passes (the round's, or
    ``round_seconds`` after it closed)."""
    state = transport.read_state()
    deadline = state.deadline if state is not None and state.round == round and state.deadline else None
    if deadline is None:
        deadline = time.time() + swarm.round_seconds
    closed_seen: float | None = None
    backoff = Backoff(swarm.poll_seconds, sleep)
    while True:
        beat(round)
        state = transport.read_state()
        published = {p.node for p in transport.collect(round).payloads}
        if state is not None and state.round > round:
            # On a synced folder the new state can arrive before the payloads that closed the round.
            closed_seen = time.time() if closed_seen is None else closed_seen
            late = set(state.closed_with) - published if state.round == round + 1 else set()
            if not late or time.time() >= closed_seen + swarm.round_seconds:
                return
        else:
            if time.time() >= deadline:
                return
            # A coordinator's word decides who is in the round: on a lagging folder this node's view
            # of who is live can miss a peer whose heartbeat has not arrived whole yet.
            if state is None or not state.coordinator:
                peers = {n.node for n in transport.live_nodes(swarm.live_seconds) if n.role != "coordinator"}
                if peers <= published:
                    return
        backoff.pause()


def take_in(
    collected: Collected,
    round: int,
    *,
    node: str,
    tasks: Mapping[str, Task],
    levels: dict[str, list[Task]],
    rescore: Rescore,
) -> tuple[list[Group], dict[str, int]]:
    """Peers' groups from what the transport collected, re-scored here, and what was refused
    (``payloads/*``, ``groups/external_*``). ``levels`` caches each task's variants (`regenerate`)."""
    for reason in collected.rejected:  # any transport's: its file names and reasons come from peers
        log.warning("%s: refused a payload for round %d: %s", node, round, printable(reason))
    peers = {p.node: p for p in collected.payloads if p.node != node}
    metrics = {"payloads/rejected": len(collected.rejected), "payloads/peers": len(peers)}
    external, unknown, forged = [], 0, 0
    for peer in peers.values():
        for group in peer.groups:
            if group.problem.task not in tasks:
                unknown += 1
                continue
            problem = regenerate(group.problem, tasks, levels)
            if problem is None:
                forged += 1
                log.warning(
                    "%s: %s sent problem %r, which its task does not generate; refused",
                    node,
                    peer.node,
                    group.problem.id,
                )
                continue
            # SAPO re-scores others' rollouts with this node's own rewards.
            external.append(rescore(problem, group.completions, peer.node))
    metrics["groups/external_unknown_task"] = unknown
    metrics["groups/external_refused"] = forged
    return external, metrics


def regenerate(problem: Problem, tasks: Mapping[str, Task], levels: dict[str, list[Task]]) -> Problem | None:
    """This node's own copy of a peer's problem (from the seed its id ends in), or None if it differs.

    A peer's curriculum may have it at another level of the task than ours: ``levels`` holds (and
    caches) each task's variants."""
    _, _, seed = problem.id.rpartition("-")
    if not seed.isdigit():
        return None
    task = tasks[problem.task]
    if problem.task not in levels:
        levels[problem.task] = list(task_variants(task).values())
    sent = codec.to_data(problem)
    for candidate in (task, *levels[problem.task]):
        try:
            ours = candidate.generate(int(seed))
        except Exception:  # a task that cannot regenerate this id did not make it
            continue
        if codec.to_data(ours) == sent:
            return ours
    return None
