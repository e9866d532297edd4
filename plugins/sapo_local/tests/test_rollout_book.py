"""The remote trainer's ledger: idempotent rewards, all-or-nothing posts, expiry, advantages."""

from __future__ import annotations

import math
import threading

import pytest

from sapo_core.advantages import group_advantages
from sapo_core.records import Completion, Message, Problem
from sapo_local.rollout_book import BookError, RolloutBook, new_group_id, rewards_from_json


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_group(book: RolloutBook, g: int = 4):
    problem = Problem(task="remote", id=new_group_id(), messages=[Message("user", "sort: b a")])
    return book.open(problem, [Completion(text=f"answer {i}") for i in range(g)])


def test_a_group_completes_when_every_reward_is_in():
    book = RolloutBook(ttl=60, node="server")
    group_id, ids, expires = open_group(book)
    assert len(set(ids)) == 4 and expires == pytest.approx(book.clock() + 60, abs=5)
    assert book.post([(ids[0], 1.0), (ids[1], 0.0)]) == {"accepted": 2, "duplicates": 0, "groups_completed": 0}
    assert book.queue == []
    assert book.post([(ids[2], 0.5), (ids[3], 0.0)])["groups_completed"] == 1
    (group,) = book.take(10)
    assert group.problem.id == group_id and group.node == "server"
    assert group.rewards == (1.0, 0.0, 0.5, 0.0)
    assert group.advantages == pytest.approx(group_advantages([1.0, 0.0, 0.5, 0.0]))
    assert book.status()["groups_completed"] == 1 and book.status()["open_groups"] == 0


def test_rewards_posted_twice_count_once():
    book = RolloutBook(ttl=60, node="s")
    _, ids, _ = open_group(book, 2)
    assert book.post([(ids[0], 1.0), (ids[0], 1.0)]) == {"accepted": 1, "duplicates": 1, "groups_completed": 0}
    assert book.post([(ids[0], 1.0), (ids[1], 0.0)]) == {"accepted": 1, "duplicates": 1, "groups_completed": 1}
    # After the group is complete (and even once trained on), a retry is still a duplicate, not an error.
    book.take(1)
    assert book.post([(ids[0], 1.0), (ids[1], 0.0)]) == {"accepted": 0, "duplicates": 2, "groups_completed": 0}
    assert len(book.queue) == 0, "the group was queued once"


def test_a_different_value_is_refused_and_nothing_is_recorded():
    book = RolloutBook(ttl=60, node="s")
    _, ids, _ = open_group(book, 3)
    book.post([(ids[0], 1.0)])
    with pytest.raises(BookError) as refused:
        book.post([(ids[1], 0.5), (ids[0], 0.0)])
    assert refused.value.kind == "conflict" and refused.value.ids == [ids[0]]
    assert book.post([(ids[1], 0.5)])["accepted"] == 1, "the refused request recorded nothing"


def test_unknown_and_invalid_ids_are_refused_all_or_nothing():
    book = RolloutBook(ttl=60, node="s")
    _, ids, _ = open_group(book, 2)
    with pytest.raises(BookError) as refused:
        book.post([(ids[0], 1.0), ("r-nope", 1.0)])
    assert refused.value.kind == "unknown" and refused.value.ids == ["r-nope"]
    with pytest.raises(BookError) as invalid:
        book.post([(ids[0], math.nan)])
    assert invalid.value.kind == "invalid"
    assert book.status()["rewards_accepted"] == 0


def test_incomplete_groups_expire_untrained():
    clock = Clock()
    book = RolloutBook(ttl=60, node="s", clock=clock)
    _, ids, _ = open_group(book, 2)
    _, other, _ = open_group(book, 2)
    book.post([(ids[0], 1.0)])  # then the client disappears
    clock.now += 61
    book.sweep()
    assert book.status()["open_groups"] == 0 and book.status()["groups_expired"] == 2
    with pytest.raises(BookError) as late:
        book.post([(ids[1], 0.0)])
    assert late.value.kind == "expired" and "expired" in str(late.value)
    assert book.queue == [], "nothing half-done reaches the learner"
    with pytest.raises(BookError):
        book.post([(other[0], 0.0)])


def test_concurrent_posts_complete_a_group_once():
    book = RolloutBook(ttl=60, node="s")
    _, ids, _ = open_group(book, 8)
    barrier = threading.Barrier(8)

    def post(rid: str) -> None:
        barrier.wait()
        book.post([(rid, 1.0) for rid in ids])  # every thread posts every reward

    threads = [threading.Thread(target=post, args=(rid,)) for rid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(book.queue) == 1 and book.status()["rewards_accepted"] == 8
    assert book.status()["rewards_duplicate"] == 8 * 8 - 8


def test_reward_json_shapes():
    assert rewards_from_json([{"rollout_id": "r-1", "reward": 1}], limit=10) == [("r-1", 1.0)]
    for bad, reason in [
        ([], "at least one"),
        ({"rollout_id": "r"}, "at least one"),
        ([{"rollout_id": "r"}], "exactly rollout_id and reward"),
        ([{"rollout_id": "r", "reward": 1, "extra": 2}], "exactly rollout_id and reward"),
        ([{"rollout_id": 5, "reward": 1}], "string of 1-64"),
        ([{"rollout_id": "x" * 65, "reward": 1}], "string of 1-64"),
        ([{"rollout_id": "r", "reward": "1"}], "finite number"),
        ([{"rollout_id": "r", "reward": True}], "finite number"),
        ([{"rollout_id": "r", "reward": 10**400}], "finite number"),  # OverflowError in float(): was a 500
        ([{"rollout_id": "r", "reward": 1}] * 11, "at most 10"),
    ]:
        with pytest.raises(BookError, match=reason):
            rewards_from_json(bad, limit=10)
