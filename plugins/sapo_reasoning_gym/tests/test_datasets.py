"""Every registered reasoning-gym dataset, through the real plugin and the real reasoning-gym."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sapo_core.config import backend_settings, load_config
from sapo_core.curriculum import Curriculum, task_variants
from sapo_core.errors import ConfigError
from sapo_core.interfaces import BackendContext
from sapo_core.plugins import Plugins
from sapo_reasoning_gym import catalog

REGISTERED = sorted(catalog.load()["datasets"])


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins()


def build(plugins: Plugins, name: str, *sets: str):
    """The task ``name`` as a run builds it: settings from the config, then the plugin's factory."""
    registration = plugins.registry.get("task", name)
    config = load_config(sets=list(sets))
    settings = backend_settings(registration, config.extras("tasks", name), f"tasks.{name}")
    return registration.factory(settings, BackendContext())


def test_most_of_reasoning_gyms_datasets_register_and_the_rest_say_why():
    from reasoning_gym.factory import DATASETS

    data = catalog.load()
    assert set(data["datasets"]) | set(data["excluded"]) == set(DATASETS), "python -m sapo_reasoning_gym.catalog"
    assert not set(data["datasets"]) & set(data["excluded"])
    assert len(data["datasets"]) >= 90, data["excluded"]
    assert all(reason for reason in data["excluded"].values())


def test_the_catalog_settings_are_the_installed_configs_defaults():
    from reasoning_gym.factory import DATASETS

    for name, entry in catalog.load()["datasets"].items():
        fields = {f.name: f for f in dataclasses.fields(DATASETS[name][1])}
        assert set(entry["settings"]) == set(fields) - {"seed", "size"}, name


@pytest.mark.parametrize("dataset", REGISTERED)
def test_the_reference_scores_1_a_wrong_answer_less_and_a_seed_gives_the_same_prompt(plugins, dataset):
    name = f"rg:{dataset}"
    task = build(plugins, name)
    first, again = task.generate(3), build(plugins, name).generate(3)
    assert first == again and first.messages == again.messages, "the same seed gives the same problem"
    assert first.id == f"{name}-0-3" and "<answer></answer>" in first.messages[-1].content
    other = task.generate(424242)
    assert task.verify(first, task.reference_answer(first)) == 1.0
    assert task.verify(first, "definitely wrong") < 1.0
    if task.reference_answer(other) != task.reference_answer(first):
        assert task.verify(first, task.reference_answer(other)) < 1.0
    json.dumps(first.answer)  # what a payload carries


@pytest.mark.parametrize("dataset", ["basic_arithmetic", "base_conversion", "propositional_logic"])
def test_curriculum_levels_give_verifiable_problems_and_a_peers_level_is_scored_at_its_level(plugins, dataset):
    name = f"rg:{dataset}"
    task = build(plugins, name, f"tasks.{name}.level=1")
    variants = task_variants(task)
    assert sorted(variants) == list(range(1, task.max_level + 1)) and task.max_level >= 3
    hardest = variants[task.max_level].generate(11)
    assert hardest.id == f"{name}-{task.max_level}-11"
    assert task.verify(hardest, variants[task.max_level].reference_answer(hardest)) == 1.0  # scored at its level
    curriculum = Curriculum({name: task}, window=2)
    assert curriculum.observe({name: [1.0, 1.0]}) == {name: (1, 2)}
    assert curriculum.tasks()[name].generate(5).id == f"{name}-2-5"


def test_a_peer_cannot_choose_the_item_it_is_scored_against(plugins):
    import attrs

    task = build(plugins, "rg:basic_arithmetic")
    problem = task.generate(8)
    forged = attrs.evolve(problem, answer="0")  # a payload's "answer" is not what is scored against
    assert task.verify(forged, task.reference_answer(problem)) == 1.0
    assert task.verify(forged, "0") < 1.0 or task.reference_answer(problem) == "0"
    assert task.verify(attrs.evolve(problem, id="rg:basic_arithmetic-99-8"), "1") == 0.0


def test_settings_are_checked_with_a_suggestion_and_reasoning_gyms_own_checks(plugins):
    with pytest.raises(ConfigError, match=r"Did you mean.*max_terms"):
        build(plugins, "rg:basic_arithmetic", "tasks.rg:basic_arithmetic.max_term=4")
    with pytest.raises(ConfigError, match=r"tasks\.rg:basic_arithmetic\.min_terms"):
        build(plugins, "rg:basic_arithmetic", "tasks.rg:basic_arithmetic.min_terms=two")
    with pytest.raises(ConfigError, match="reasoning-gym refuses these settings"):
        build(
            plugins,
            "rg:basic_arithmetic",
            "tasks.rg:basic_arithmetic.min_terms=9",
            "tasks.rg:basic_arithmetic.max_terms=3",
        )
    with pytest.raises(ConfigError, match="level"):
        build(plugins, "rg:basic_arithmetic", "tasks.rg:basic_arithmetic.level=99")
    with pytest.raises(ConfigError, match="from reasoning-gym's curriculum"):
        build(
            plugins, "rg:basic_arithmetic", "tasks.rg:basic_arithmetic.level=2", "tasks.rg:basic_arithmetic.max_terms=3"
        )
    task = build(
        plugins, "rg:basic_arithmetic", "tasks.rg:basic_arithmetic.min_terms=3", "tasks.rg:basic_arithmetic.max_terms=3"
    )
    default = build(plugins, "rg:basic_arithmetic")
    assert [task.generate(s).messages for s in range(8)] != [default.generate(s).messages for s in range(8)]


def test_an_unknown_dataset_is_refused_with_close_matches(plugins):
    from sapo_core.errors import PluginError

    with pytest.raises(PluginError, match=r"Unknown task 'rg:basic_arithmatic'\. Did you mean 'rg:basic_arithmetic'"):
        plugins.registry.get("task", "rg:basic_arithmatic")


def test_the_paper_preset_names_nine_registered_tasks_equally_weighted(plugins):
    config = load_config(sets=["tasks.preset=sapo-paper"])
    assert len(config.tasks.names) == 9 and config.tasks.weights == ()
    for name in config.tasks.names:
        assert plugins.registry.get("task", name).distribution == "sapo-reasoning-gym"


def test_an_untagged_completion_is_read_as_its_last_number_where_the_answers_are_numbers(plugins):
    from sapo_core.records import Completion
    from sapo_core.rewards import CorrectnessReward, CorrectnessSettings

    arithmetic, calendar = build(plugins, "rg:basic_arithmetic"), build(plugins, "rg:calendar_arithmetic")
    numbers, names = arithmetic.generate(5), calendar.generate(1)
    assert arithmetic.numeric_answers and not calendar.numeric_answers
    context = BackendContext(tasks={task.name: task for task in (arithmetic, calendar)})

    def scores(problem, *texts, answer_tags="prefer"):
        reward = CorrectnessReward(context, CorrectnessSettings(answer_tags=answer_tags))
        return reward.score(problem, [Completion(text=text, finish_reason="stop") for text in texts])

    right = arithmetic.reference_answer(numbers)
    wrong = str(int(right) + 1)
    assert scores(numbers, f"So it is {right}.", f"{right} or maybe {wrong}", f"<answer>{wrong}</answer> {right}") == [
        1.0,
        0.0,
        0.0,
    ], "the last number untagged; tags win"
    assert scores(numbers, f"So it is {right}.", answer_tags="require") == [0.0]
    day = calendar.reference_answer(names)
    assert scores(names, f"It was a {day}", f"<answer>{day}</answer>") == [0.0, 1.0], "words: tagged answers only"
