"""Group-relative advantages (GRPO and Dr. GRPO) against a naive reference."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sapo_core.advantages import group_advantages, is_zero_variance
from sapo_core.records import Completion, Group, Problem


def _reference(rewards: list[float], scale_by_std: bool = True, eps: float = 1e-6) -> list[float]:
    mean = statistics.fmean(rewards)
    if not scale_by_std:
        return [r - mean for r in rewards]
    return [(r - mean) / (statistics.pstdev(rewards) + eps) for r in rewards]


def test_grpo_advantages_match_the_formula() -> None:
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.25]
    assert group_advantages(rewards) == pytest.approx(_reference(rewards), rel=1e-12)
    # Binary rewards, 1 of 4 correct: mean 0.25, population std sqrt(3)/4.
    one_right = group_advantages([1.0, 0.0, 0.0, 0.0], eps=0.0)
    assert one_right == pytest.approx((math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)))


def test_population_std_not_sample_std() -> None:
    advantages = group_advantages([0.0, 1.0], eps=0.0)
    assert advantages == pytest.approx((-1.0, 1.0))  # the sample std would give -0.707, 0.707
    assert sum(a * a for a in group_advantages([0.1, 0.9, 0.3, 0.2], eps=0.0)) == pytest.approx(4.0)


def test_dr_grpo_only_centres() -> None:
    rewards = [1.0, 0.0, 0.5, 0.5]
    assert group_advantages(rewards, scale_by_std=False) == pytest.approx((0.5, -0.5, 0.0, 0.0))
    assert group_advantages([3.0, 1.0], scale_by_std=False) == (1.0, -1.0)


def test_eps_keeps_tiny_spreads_bounded() -> None:
    advantages = group_advantages([0.0, 1e-9])
    assert all(abs(a) < 1e-2 for a in advantages)


@pytest.mark.parametrize("rewards", [[0.0] * 8, [1.0] * 4, [0.3, 0.3 + 1e-14, 0.3], [0.7], []])
def test_zero_variance_groups_get_exact_zeros(rewards: list[float]) -> None:
    assert is_zero_variance(rewards)
    for scale in (True, False):
        advantages = group_advantages(rewards, scale_by_std=scale)
        assert advantages == (0.0,) * len(rewards)
        assert all(a == 0.0 and math.copysign(1.0, a) == 1.0 for a in advantages)


def test_is_zero_variance_agrees_with_group_records() -> None:
    problem = Problem(task="t", id="t-0", messages=[{"role": "user", "content": "?"}])
    for rewards in ([1.0, 1.0], [1.0, 0.0], [0.5, 0.5 + 1e-13], [0.5, 0.5 + 1e-9]):
        group = Group(
            problem=problem,
            completions=[Completion(text="")] * len(rewards),
            rewards=rewards,
            advantages=group_advantages(rewards),
        )
        assert is_zero_variance(rewards) == group.zero_variance


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rewards_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        group_advantages([0.0, bad])


@pytest.mark.parametrize("eps", [-1e-6, math.nan, math.inf])
def test_bad_eps_is_refused(eps: float) -> None:
    with pytest.raises(ValueError, match="eps"):
        group_advantages([0.0, 1.0], eps=eps)


def test_accepts_any_sequence_of_numbers() -> None:
    assert group_advantages((1, 0)) == pytest.approx(group_advantages([1.0, 0.0]))
    assert isinstance(group_advantages([1, 0]), tuple)


_REWARDS = st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=1, max_size=16)


@settings(max_examples=200, deadline=None)
@given(rewards=_REWARDS, scale=st.booleans())
def test_matches_reference_and_centres(rewards: list[float], scale: bool) -> None:
    advantages = group_advantages(rewards, scale_by_std=scale)
    assert len(advantages) == len(rewards)
    if is_zero_variance(rewards):
        assert set(advantages) <= {0.0}
        return
    assert list(advantages) == pytest.approx(_reference(rewards, scale), rel=1e-9, abs=1e-9)
    assert math.fsum(advantages) == pytest.approx(0.0, abs=1e-6 * max(1.0, max(map(abs, advantages))))
    # Advantages keep the order of the rewards.
    for (a, ra), (b, rb) in itertools.pairwise(zip(advantages, rewards, strict=True)):
        if ra < rb:
            assert a <= b
