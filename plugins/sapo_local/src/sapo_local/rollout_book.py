"""The remote trainer's ledger: groups handed out to clients, the rewards they post back, and expiry.

A client asks for completions of its prompts; each prompt becomes an open *group* of G rollouts,
each with an unguessable rollout id. Rewards come back per rollout id. When every rollout of a
group has its reward, the group is complete: its advantages are computed and it is queued for
training. Rules that keep the learner's state sound whatever clients do:

* a reward is final: posting it again with the same value counts once; another value is refused;
* rewards of a request are checked all before any is recorded (all or nothing);
* a group whose rewards do not all arrive within ``ttl`` seconds expires and is never trained on,
  so a client that disappears leaves nothing half-done; late rewards for it are told so;
* ids of finished and expired groups are remembered (bounded), so a retry gets the right answer.

Pure Python and thread-safe (one lock); the HTTP layer (`sapo_local.serve`) maps `BookError`
kinds to status codes.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from sapo_core.advantages import group_advantages
from sapo_core.records import Completion, Group, Problem


class BookError(Exception):
    """A request the ledger refuses; ``kind`` is one of unknown, conflict, expired, invalid."""

    def __init__(self, kind: str, message: str, ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.ids = list(ids)


@attrs.define
class OpenGroup:
    problem: Problem
    completions: tuple[Completion, ...]
    rollout_ids: tuple[str, ...]
    created: float
    rewards: dict[int, float] = attrs.field(factory=dict)


def new_group_id() -> str:
    """An unguessable group id: it names the problem too, so it also seeds the group's sampling."""
    return f"g-{secrets.token_urlsafe(12)}"


class RolloutBook:
    """Open groups by id, rollout id -> (group, index), and the queue of complete groups to train on."""

    def __init__(
        self,
        *,
        ttl: float,
        node: str,
        scale_by_std: bool = True,
        remember: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl, self.node, self.scale_by_std, self.remember, self.clock = ttl, node, scale_by_std, remember, clock
        self._lock = threading.Lock()
        self._open: dict[str, OpenGroup] = {}
        self._rollouts: dict[str, tuple[str, int]] = {}
        self._final: OrderedDict[str, float] = OrderedDict()  # rollout id -> reward, of finished groups
        self._expired: OrderedDict[str, None] = OrderedDict()  # rollout ids of expired groups
        self.queue: list[Group] = []
        self.counts = {
            "groups_opened": 0,
            "groups_completed": 0,
            "groups_expired": 0,
            "rewards_accepted": 0,
            "rewards_duplicate": 0,
        }

    def open(self, problem: Problem, completions: Sequence[Completion]) -> tuple[str, tuple[str, ...], float]:
        """Register a group under its problem's id (`new_group_id`); returns that id, its rollouts'
        ids (in order) and when it expires."""
        now = self.clock()
        group_id = problem.id
        ids = tuple(f"r-{secrets.token_urlsafe(12)}" for _ in completions)
        with self._lock:
            self._expire(now)
            self._open[group_id] = OpenGroup(
                problem=problem, completions=tuple(completions), rollout_ids=ids, created=now
            )
            for index, rollout_id in enumerate(ids):
                self._rollouts[rollout_id] = (group_id, index)
            self.counts["groups_opened"] += 1
        return group_id, ids, now + self.ttl

    def post(self, rewards: Sequence[tuple[str, float]]) -> dict[str, int]:
        """Record rewards (all or none); returns accepted/duplicate counts and groups completed by them."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            self._check(rewards)
            accepted = duplicates = completed = 0
            for rollout_id, reward in rewards:
                if rollout_id in self._final:
                    duplicates += 1
                    continue
                group_id, index = self._rollouts[rollout_id]
                group = self._open[group_id]
                if index in group.rewards:
                    duplicates += 1
                    continue
                group.rewards[index] = float(reward)
                accepted += 1
                if len(group.rewards) == len(group.completions):
                    self._complete(group_id)
                    completed += 1
            self.counts["rewards_accepted"] += accepted
            self.counts["rewards_duplicate"] += duplicates
        return {"accepted": accepted, "duplicates": duplicates, "groups_completed": completed}

    def take(self, count: int) -> list[Group]:
        """Up to ``count`` complete groups, oldest first, removed from the queue."""
        with self._lock:
            taken, self.queue = self.queue[:count], self.queue[count:]
        return taken

    def sweep(self) -> None:
        with self._lock:
            self._expire(self.clock())

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"open_groups": len(self._open), "queued_groups": len(self.queue), **self.counts}

    # ------------------------------------------------------------------------------ inside the lock

    def _check(self, rewards: Sequence[tuple[str, float]]) -> None:
        unknown, expired, conflicts, invalid = [], [], [], []
        seen: dict[str, float] = {}
        for rollout_id, reward in rewards:
            if not _finite_number(reward):
                invalid.append(rollout_id)
                continue
            if rollout_id in seen and seen[rollout_id] != reward:
                conflicts.append(rollout_id)
            seen[rollout_id] = float(reward)
            if rollout_id in self._final:
                if self._final[rollout_id] != reward:
                    conflicts.append(rollout_id)
            elif rollout_id in self._expired:
                expired.append(rollout_id)
            elif rollout_id not in self._rollouts:
                unknown.append(rollout_id)
            else:
                group_id, index = self._rollouts[rollout_id]
                previous = self._open[group_id].rewards.get(index)
                if previous is not None and previous != reward:
                    conflicts.append(rollout_id)
        if invalid:
            raise BookError("invalid", f"{len(invalid)} rewards are not finite numbers", invalid)
        if unknown:
            raise BookError(
                "unknown",
                f"{len(unknown)} rollout ids are unknown here (never issued, or forgotten "
                "long ago); nothing was recorded",
                unknown,
            )
        if expired:
            raise BookError(
                "expired",
                f"{len(expired)} rollouts belong to groups that expired (their rewards did not "
                f"all arrive within {self.ttl:.0f} s) and were dropped untrained; nothing was recorded. "
                "Ask for new completions.",
                expired,
            )
        if conflicts:
            raise BookError(
                "conflict",
                f"{len(conflicts)} rollouts already have a different reward; rewards are final, nothing was recorded",
                conflicts,
            )

    def _complete(self, group_id: str) -> None:
        group = self._open.pop(group_id)
        rewards = [group.rewards[i] for i in range(len(group.completions))]
        for rollout_id, reward in zip(group.rollout_ids, rewards):
            del self._rollouts[rollout_id]
            self._final[rollout_id] = reward
        while len(self._final) > self.remember:
            self._final.popitem(last=False)
        advantages = group_advantages(rewards, scale_by_std=self.scale_by_std)
        self.queue.append(
            Group(
                problem=group.problem,
                completions=group.completions,
                rewards=rewards,
                advantages=advantages,
                node=self.node,
            )
        )
        self.counts["groups_completed"] += 1

    def _expire(self, now: float) -> None:
        for group_id in [g for g, group in self._open.items() if now - group.created > self.ttl]:
            group = self._open.pop(group_id)
            for rollout_id in group.rollout_ids:
                del self._rollouts[rollout_id]
                self._expired[rollout_id] = None
            self.counts["groups_expired"] += 1
        while len(self._expired) > self.remember:
            self._expired.popitem(last=False)


def rewards_from_json(items: Any, *, limit: int) -> list[tuple[str, float]]:
    """``[{"rollout_id": str, "reward": number}, ...]`` checked for shape; raises BookError("invalid")."""
    if not isinstance(items, list) or not items:
        raise BookError(
            "invalid", 'expected {"rewards": [{"rollout_id": "...", "reward": 0.5}, ...]} with at least one item'
        )
    if len(items) > limit:
        raise BookError("invalid", f"{len(items)} rewards in one request; at most {limit}")
    out = []
    for position, item in enumerate(items):
        if not isinstance(item, Mapping) or set(item) != {"rollout_id", "reward"}:
            raise BookError("invalid", f"rewards[{position}] must be an object with exactly rollout_id and reward")
        rollout_id, reward = item["rollout_id"], item["reward"]
        if not isinstance(rollout_id, str) or not 0 < len(rollout_id) <= 64:
            raise BookError("invalid", f"rewards[{position}].rollout_id must be a string of 1-64 characters")
        if not _finite_number(reward):
            raise BookError("invalid", f"rewards[{position}].reward must be a finite number")
        out.append((rollout_id, float(reward)))
    return out


def _finite_number(value: object) -> bool:
    """A JSON number a float can hold: not a bool, not NaN or infinite, not a 400-digit integer."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False
