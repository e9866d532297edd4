"""A real `sapo run` (offline, a tiny model built from its config) with the one added flag, and one
whose trackers fail: it warns and finishes its rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("sapo_local")
pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

# A None in sys.modules is how Python sees a module that is not installed.
WITHOUT_TENSORBOARDX = "import sys; sys.modules['tensorboardX'] = None; from sapo_core.cli import main; main()"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sapo_local.models import tiny_model_spec

    return tiny_model_spec(tmp_path_factory.mktemp("tiny"))


def small_round(tiny_model: str) -> list[str]:
    """The settings of a round of seconds on the tiny model, with an evaluation after round 2."""
    return [
        f"model.name={tiny_model}",
        "tasks.problems_per_round=2",
        "inference.num_completions=2",
        "inference.max_new_tokens=8",
        "eval.problems=2",
        "eval.every=2",
    ]


def as_sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def sapo_run(tmp_path, tiny_model, report_to, *, code=None, env=None):
    """``sapo run`` for 2 rounds with an evaluation before and after; returns (run dir, stderr)."""
    run_dir = tmp_path / "run"
    start = [sys.executable, "-c", code] if code else [sys.executable, "-m", "sapo_core"]
    command = [*start, "run", "--rounds", "2", "--run-dir", str(run_dir)]
    command += as_sets(
        *small_round(tiny_model),
        f"run.workdir={tmp_path.as_posix()}",
        "eval.at_start=true",
        f"run.report_to={json.dumps(report_to)}",
    )
    # Wide lines: a warning is asserted on whole; no tracking server of the machine's environment.
    environ = {name: value for name, value in os.environ.items() if name != "MLFLOW_TRACKING_URI"}
    environ.update({"COLUMNS": "1000", **(env or {})})
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, " ".join(done.stderr.split())


def test_one_flag_puts_the_run_in_tensorboard(tmp_path, tiny_model):
    run_dir, stderr = sapo_run(tmp_path, tiny_model, ["tensorboard"])
    assert "reporting to tensorboard" in stderr
    assert list(run_dir.glob("events.out.tfevents.*"))
    events = event_accumulator.EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("reward/mean")] == [1, 2]
    assert [e.step for e in events.Scalars("eval/pass@1")] == [0, 2]  # before training, after round 2
    written = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("reward/mean")] == pytest.approx(
        [line["reward/mean"] for line in written if line["round"] >= 0]
    )


def test_failing_trackers_warn_once_each_and_the_run_finishes(tmp_path, tiny_model):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run_dir, stderr = sapo_run(
        tmp_path,
        tiny_model,
        ["tensorboard", "mlflow"],
        code=WITHOUT_TENSORBOARDX,
        env={"MLFLOW_TRACKING_URI": (blocker / "mlruns").as_uri()},
    )
    assert stderr.count("pip install 'sapo-trackers[tensorboard]'") == 1
    assert stderr.count("mlflow could not start") == 1
    assert stderr.count("the run goes on without it") == 2
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3  # before training and 2 rounds
    assert not list(run_dir.glob("events.out.tfevents.*"))


def test_the_same_flag_on_sapo_swarm_run_reaches_every_node(tmp_path, tiny_model):
    """The launcher hands each node's process the --set flags: one TensorBoard run per node."""
    root = tmp_path / "launch"
    command = [sys.executable, "-m", "sapo_core", "swarm", "run", "--nodes", "2", "--root", str(root), "--rounds", "2"]
    command += as_sets(
        *small_round(tiny_model), "swarm.round_seconds=60", "swarm.poll_seconds=0.5", 'run.report_to=["tensorboard"]'
    )
    done = subprocess.run(command, env={**os.environ, "COLUMNS": "1000"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    for node in ("worker-1", "worker-2"):
        events = event_accumulator.EventAccumulator(str(root / "runs" / node))
        events.Reload()
        assert [e.step for e in events.Scalars("reward/mean")] == [1, 2], node
    coordinator = event_accumulator.EventAccumulator(str(root / "runs" / "coordinator"))
    coordinator.Reload()
    assert coordinator.Tags()["scalars"], "the coordinator reports its rounds too"
