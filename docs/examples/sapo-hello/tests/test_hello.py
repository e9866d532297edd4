"""Testing a sapo plugin: the `sapo_plugins` / `sapo_cli` fixtures and the contract checks.

`sapo_core.testing` is a pytest plugin installed with sapo-core, so its fixtures need no import.
Run with ``pip install -e '.[test]' && pytest``.
"""

from __future__ import annotations

import pytest
import sapo_hello

from sapo_core.answers import extract_answer, format_score
from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.plugins import Plugins
from sapo_core.testing import check_inference, check_reward, sample_problems


@pytest.fixture
def plugins(sapo_plugins: Plugins) -> Plugins:
    # Installed (pip install -e .), the entry point already loaded the plugin; otherwise add it.
    if "hello" not in sapo_plugins.infos:
        sapo_plugins.register(sapo_hello, name="hello")
    return sapo_plugins


def build(plugins: Plugins, kind: str, name: str, **settings: object) -> object:
    """Build a backend the way `sapo run` does: factory(settings, context)."""
    registration = plugins.registry.get(kind, name)
    assert registration.distribution in ("sapo-hello", "(not installed)")
    return registration.factory(registration.settings(**settings), BackendContext())


def test_plugin_loads(plugins: Plugins) -> None:
    info = plugins.infos["hello"]
    assert info.error is None
    assert set(info.hooks) == {"register_inference", "register_rewards", "round_finished", "register_commands"}


def test_guess_contract(plugins: Plugins) -> None:
    backend = build(plugins, "inference", "guess", max_value=5)
    out = check_inference(backend, n=4)
    for completions in out:
        assert len(completions) == 4
        for completion in completions:
            assert format_score(completion.text) == 1.0
            assert -5 <= int(extract_answer(completion.text)) <= 5
    # check_inference calls generate twice (deterministic=True: the same seed must give the same texts).
    assert backend.round_metrics() == {"requests": 2}


def test_guess_is_reproducible(plugins: Plugins) -> None:
    backend = build(plugins, "inference", "guess")
    problems = sample_problems()
    first = backend.generate(problems, 8, SamplingParams(seed=1))
    assert backend.generate(problems, 8, SamplingParams(seed=1)) == first
    assert backend.generate(problems, 8, SamplingParams(seed=2)) != first


def test_brevity_contract(plugins: Plugins) -> None:
    reward = build(plugins, "reward", "brevity", target_chars=10)
    short, long = check_reward(reward, sample_problems()[0], ["<answer>2</answer>"[:10], "x" * 40])
    assert short == 1.0
    assert long == pytest.approx(0.25)


def test_round_finished_writes_csv(plugins: Plugins, tmp_path) -> None:
    context = BackendContext(workdir=tmp_path)
    for round, mean in enumerate([0.25, 0.5]):
        plugins.notify("round_finished", context=context, round=round, metrics={"reward/mean": mean})
    assert (tmp_path / "hello.csv").read_text().splitlines() == ["round,reward_mean", "0,0.25", "1,0.5"]


def test_hello_command(plugins: Plugins, sapo_cli) -> None:
    result = sapo_cli("hello")
    assert result.exit_code == 0, result.output
    assert "Hello from sapo-hello" in result.output
    assert "guess" in result.output
