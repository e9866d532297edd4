"""The curriculum (sapo_core.curriculum), the tasks' difficulty ladders and the reward gate, on hand-worked cases."""

from __future__ import annotations

import pytest

from sapo_core.advantages import group_advantages
from sapo_core.curriculum import Curriculum, group_success, task_variants
from sapo_core.records import Completion, Group
from sapo_core.sampling import select_groups
from sapo_core.tasks.arithmetic import ArithmeticSettings, ArithmeticTask
from sapo_core.tasks.countdown import CountdownSettings, CountdownTask
from sapo_core.tasks.sat import SatTask
from sapo_core.tasks.sort import SortSettings, SortTask


def arithmetic(difficulty: int = 2) -> ArithmeticTask:
    return ArithmeticTask(ArithmeticSettings(difficulty=difficulty))


# ------------------------------------------------------------------------------ the gate


def test_a_group_its_verifier_cannot_tell_apart_gets_no_advantage() -> None:
    # correctness all 0, format 0 / 1 / 0 / 1 at weight 0.1: rewards 0, .1, 0, .1.
    rewards = [0.0, 0.1, 0.0, 0.1]
    ungated = group_advantages(rewards)
    assert ungated == pytest.approx([-1.0, 1.0, -1.0, 1.0], abs=1e-4)  # std scaling blows 0.1 up to +-1
    assert group_advantages(rewards, gate=[0.0, 0.0, 0.0, 0.0]) == (0.0, 0.0, 0.0, 0.0)
    assert group_advantages(rewards, gate=[1.0] * 4) == (0.0, 0.0, 0.0, 0.0)  # all right: nothing to learn either


def test_where_the_verifier_varies_shaping_still_orders_completions() -> None:
    # correctness 1, 1, 0, 0; format 1, 0, 1, 0 at 0.1: rewards 1.1, 1.0, 0.1, 0.0 (mean 0.55, std 0.5025).
    advantages = group_advantages([1.1, 1.0, 0.1, 0.0], gate=[1.0, 1.0, 0.0, 0.0])
    assert advantages == pytest.approx([0.55 / 0.502494, 0.45 / 0.502494, -0.45 / 0.502494, -0.55 / 0.502494], rel=1e-4)


def test_a_gate_of_another_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="gate has 3 scores for 2"):
        group_advantages([0.0, 1.0], gate=[0.0, 1.0, 0.0])


def test_gated_groups_are_not_trained_on() -> None:
    problem = arithmetic().generate(1)
    completions = [Completion(text="x")] * 2
    gated = Group(problem=problem, completions=completions, rewards=(0.0, 0.1), advantages=(0.0, 0.0))
    useful = Group(problem=problem, completions=completions, rewards=(0.0, 1.0), advantages=(-1.0, 1.0))
    assert gated.no_signal and not gated.zero_variance
    import random

    assert select_groups([gated, useful], 2, random.Random(0)) == [useful]


def test_group_success_is_the_share_the_verifier_scores_solved() -> None:
    assert (
        group_success({"correctness": [1.0, 0.0, 0.0, 1.0], "format": [1.0] * 4}, [1.1, 0.1, 0.1, 1.1], "correctness")
        == 0.5
    )
    # sat's partial credit (7/8 of the clauses) is not a solve: 1 of 4 solved, though the mean is 0.84
    assert group_success({"correctness": [1.0, 0.875, 0.875, 0.625]}, [1.0, 0.875, 0.875, 0.625], "correctness") == 0.25
    assert group_success({"judge": [0.2, 0.4]}, [0.2, 0.4], "") == pytest.approx(0.3)  # no verifier: the reward


def test_partial_credit_alone_does_not_move_a_task_up() -> None:
    task = SatTask()
    curriculum = Curriculum({"sat": task}, band=(0.2, 0.8), window=4)
    partial = {"correctness": [0.9, 0.9, 0.8, 0.9]}  # every clause but one or two: a mean of 0.875, never solved
    rates = [group_success(partial, partial["correctness"], "correctness")] * 4
    assert curriculum.observe({"sat": rates}) == {"sat": (3, 2)}


# ------------------------------------------------------------------------------ ladders


@pytest.mark.parametrize(
    ("task", "level", "levels"),
    [(ArithmeticTask(), 1, 5), (SortTask(), 2, 5), (CountdownTask(), 1, 6), (SatTask(), 3, 5)],
)
def test_every_built_in_task_has_a_ladder_and_its_defaults_are_on_it(task, level, levels) -> None:
    assert task.level == level and task.max_level == levels
    assert [t.level for t in task_variants(task).values()] == list(range(1, levels + 1))


def test_a_level_changes_only_the_ladders_keys() -> None:
    easy = CountdownTask(CountdownSettings(min_number=2)).at_level(2)
    assert (easy.settings.num_numbers, easy.settings.max_number, easy.settings.min_number) == (3, 10, 2)
    assert SortTask(SortSettings(min_words=5, max_words=7)).level is None  # custom settings: on no rung


def test_levels_the_other_settings_forbid_are_left_out() -> None:
    # min_number 20 is above the max_number of levels 1 and 2 (10; level 3's 25 is fine): only they are impossible.
    assert sorted(
        task_variants(CountdownTask(CountdownSettings(num_numbers=4, min_number=20, max_number=100, max_target=1000)))
    ) == [3, 4, 5, 6]


# ------------------------------------------------------------------------------ the curriculum


def test_a_task_moves_down_when_below_the_band_and_up_when_above() -> None:
    curriculum = Curriculum({"arithmetic": arithmetic(2)}, band=(0.2, 0.8), window=4)
    assert curriculum.observe({"arithmetic": [0.0, 0.1, 0.0]}) == {}  # 3 of 4 groups seen: no decision yet
    assert curriculum.observe({"arithmetic": [0.1]}) == {"arithmetic": (2, 1)}  # mean 0.05 < 0.2
    assert curriculum.tasks()["arithmetic"].settings.difficulty == 1
    assert curriculum.observe({"arithmetic": [1.0, 1.0, 0.5]}) == {}  # the count restarted at the new level
    assert curriculum.observe({"arithmetic": [1.0]}) == {"arithmetic": (1, 2)}  # mean 0.875 > 0.8
    assert curriculum.observe({"arithmetic": [0.5, 0.5, 0.4, 0.6]}) == {}  # in the band: stays
    assert curriculum.levels == {"arithmetic": 2}


def test_the_window_slides_over_the_newest_groups() -> None:
    curriculum = Curriculum({"arithmetic": arithmetic(2)}, band=(0.2, 0.8), window=2)
    curriculum.observe({"arithmetic": [0.5, 0.5]})
    assert curriculum.observe({"arithmetic": [0.9]}) == {}  # newest two: 0.5, 0.9 -> 0.7
    assert curriculum.observe({"arithmetic": [0.9]}) == {"arithmetic": (2, 3)}  # 0.9, 0.9


def test_no_move_off_either_end_of_the_ladder() -> None:
    curriculum = Curriculum({"arithmetic": arithmetic(1)}, band=(0.2, 0.8), window=1)
    assert curriculum.observe({"arithmetic": [0.0]}) == {}
    top = Curriculum({"arithmetic": arithmetic(5)}, window=1)
    assert top.observe({"arithmetic": [1.0]}) == {}


def test_tasks_without_a_ladder_stay_as_configured() -> None:
    class Plain:
        name, description = "plain", "no levels"

        def generate(self, seed):  # pragma: no cover - never called here
            raise AssertionError

        def verify(self, problem, answer):  # pragma: no cover
            return 0.0

    plain = Plain()
    curriculum = Curriculum({"plain": plain, "sort": SortTask(SortSettings(min_words=5, max_words=7))}, window=1)
    assert curriculum.levels == {}
    assert curriculum.observe({"plain": [0.0], "sort": [0.0]}) == {}
    assert curriculum.tasks()["plain"] is plain


def test_the_state_survives_a_round_trip_and_ignores_what_it_does_not_know() -> None:
    curriculum = Curriculum({"arithmetic": arithmetic(3), "sort": SortTask()}, window=3)
    curriculum.observe({"arithmetic": [0.0, 0.0, 0.0], "sort": [0.9]})
    state = curriculum.state()
    assert state == {"levels": {"arithmetic": 2, "sort": 2}, "seen": {"arithmetic": [], "sort": [0.9]}}
    again = Curriculum({"arithmetic": arithmetic(3), "sort": SortTask()}, window=3)
    again.restore({**state, "levels": {**state["levels"], "countdown": 1}})
    assert again.state() == state
    again.restore({"levels": {"arithmetic": 99}})  # off the ladder: ignored
    assert again.levels["arithmetic"] == 2


def test_bad_bands_are_refused() -> None:
    with pytest.raises(ValueError):
        Curriculum({}, band=(0.8, 0.2))
