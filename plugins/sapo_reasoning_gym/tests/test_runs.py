"""The rg: tasks from the command line, in an offline run and in a swarm (real processes, tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sapo_core.sampling import sample_problems


def sapo(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sapo_core", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_tasks_lists_them_and_show_prints_a_problem_its_answer_and_the_answers_score(tmp_path):
    listed = sapo("tasks", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "rg:basic_arithmetic" in listed.stdout and "rg:propositional_logic" in listed.stdout
    shown = sapo("tasks", "show", "rg:basic_arithmetic", "--seed", "3", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "# rg:basic_arithmetic-0-3" in shown.stdout and "<answer></answer>" in shown.stdout
    assert shown.stdout.rstrip().endswith("1.0"), shown.stdout  # [score of the reference answer ...] 1.0


def test_without_the_plugin_an_rg_task_says_what_to_install(tmp_path):
    shown = sapo(
        "tasks", "show", "rg:basic_arithmetic", cwd=tmp_path, env={"SAPO_DISABLE_PLUGINS": "sapo_reasoning_gym"}
    )
    assert shown.returncode != 0
    assert "pip install sapo-reasoning-gym" in shown.stderr, shown.stderr


def test_a_generator_that_raises_for_a_seed_is_skipped_with_a_warning(caplog):
    class Flaky:
        name, description = "flaky", "fails on odd seeds"

        def generate(self, seed):
            if seed % 2:
                raise RuntimeError("no puzzle for this seed")
            from sapo_core.tasks.arithmetic import ArithmeticTask

            return ArithmeticTask().generate(seed)

        def verify(self, problem, answer):
            return 0.0

    problems = sample_problems({"flaky": Flaky()}, (), 16, seed=0, node="a", round=0)
    assert 0 < len(problems) < 16
    assert "could not generate the problem of seed" in caplog.text and "no puzzle for this seed" in caplog.text


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("sapo_local")
    from sapo_local.models import tiny_model_spec

    return tiny_model_spec(tmp_path_factory.mktemp("tiny"))


def tiny(model: str) -> list[str]:
    sets = [
        f"model.name={model}",
        "tasks.preset=sapo-paper",
        "tasks.problems_per_round=4",
        "inference.num_completions=2",
        "inference.max_new_tokens=8",
        "eval.problems=9",
        "eval.every=1",
        "checkpoint.every=1",
    ]
    return [part for item in sets for part in ("--set", item)]


@pytest.mark.slow
def test_an_offline_run_on_the_paper_preset_trains_two_rounds_and_resumes(tiny_model, tmp_path):
    run = sapo("run", "--rounds", "2", "--run-dir", str(tmp_path / "run"), *tiny(tiny_model), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rounds = [line for line in lines if line["round"] >= 0]
    assert [line["round"] for line in rounds] == [0, 1]
    tasks = {key.removeprefix("reward/task/") for line in rounds for key in line if key.startswith("reward/task/")}
    assert tasks and all(task.startswith("rg:") for task in tasks)
    assert "eval/pass@1" in rounds[-1]
    resumed = sapo(
        "run", "--rounds", "3", "--resume", "--run-dir", str(tmp_path / "run"), *tiny(tiny_model), cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines if line["round"] >= 0] == [0, 1, 2]


@pytest.mark.slow
def test_a_two_worker_swarm_on_the_paper_preset_shares_every_round(tiny_model, tmp_path):
    pytest.importorskip("sapo_gdrive")
    root = tmp_path / "swarm"
    sets = [
        *tiny(tiny_model),
        "--set",
        "swarm.local_groups=4",
        "--set",
        "swarm.external_groups=4",
        "--set",
        "swarm.poll_seconds=0.2",
        "--set",
        "swarm.round_seconds=600",
        "--set",
        "eval.every=0",
    ]
    result = sapo(
        "swarm", "run", "--root", str(root), "--nodes", "2", "--rounds", "2", "--experiment", "rg", *sets, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    workers = 0
    for metrics in sorted((root / "rg" / "metrics").glob("*.jsonl")):
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if '"round"' in line]
        worked = [line for line in lines if line["round"] >= 0 and "payloads/peers" in line]
        if not worked:
            continue  # the coordinator's own lines
        assert [line["round"] for line in worked] == [0, 1], metrics.name
        assert all(line["payloads/peers"] == 1 for line in worked), metrics.name
        workers += 1
    assert workers == 2
