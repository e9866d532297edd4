"""`sapo sweep`: the grid from --set lists, one run directory per combination, the summary."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from sapo_core import hookimpl
from sapo_core.errors import ConfigError, TrainingError
from sapo_core.records import Completion
from sapo_core.sweep import MAX_COMBINATIONS, parse_grid, sanitize, split_values

# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text, values",
    [
        ("5e-6,1e-5", ["5e-6", "1e-5"]),
        (" 0 , 0.05 ", ["0", "0.05"]),
        ('["a","b"]', ['["a","b"]']),
        ('["a","b"],["c"]', ['["a","b"]', '["c"]']),
        ("{correctness=1.0, format=0.1},{correctness=1.0}", ["{correctness=1.0, format=0.1}", "{correctness=1.0}"]),
        ('"x,y",z', ['"x,y"', "z"]),
        ("'a,b'", ["'a,b'"]),
        (r'"say \"hi, there\"",b', [r'"say \"hi, there\""', "b"]),
        ("[[1,2],[3]],[4]", ["[[1,2],[3]]", "[4]"]),
        ("plain", ["plain"]),
    ],
)
def test_split_values_respects_brackets_braces_and_quotes(text, values):
    assert split_values(text) == values


def test_grid_is_the_product_of_the_lists_in_the_order_given():
    grid = parse_grid(["run.rounds=2", "train.lr=5e-6,1e-5", 'tasks.names=["arithmetic","sort"]', "train.beta=0,0.05"])
    assert [axis.key for axis in grid.axes] == ["train.lr", "train.beta"]
    assert [c.name for c in grid.combinations] == [
        "lr=5e-6,beta=0",
        "lr=5e-6,beta=0.05",
        "lr=1e-5,beta=0",
        "lr=1e-5,beta=0.05",
    ]
    assert grid.combinations[1].sets == (
        "run.rounds=2",
        "train.lr=5e-6",
        'tasks.names=["arithmetic","sort"]',
        "train.beta=0.05",
    ), "each value stands where its list did"
    assert grid.combinations[3].values == {"train.lr": "1e-5", "train.beta": "0.05"}


def test_names_use_the_shortest_unambiguous_key_and_readable_values():
    grid = parse_grid(["inference.temperature=0.5,1", "eval.temperature=0,0.7", 'tasks.names=["a","b"],["c"]'])
    assert grid.combinations[0].name == "inference.temperature=0.5,eval.temperature=0,names=a+b"
    assert sanitize("x" * 300).startswith("x" * 100) and len(sanitize("x" * 300)) == 120
    assert sanitize("../etc/passwd") == "_etc_passwd" and sanitize("..") == "_"
    assert parse_grid(["run.rounds=2"]).combinations[0].name == "run", "no axes: one run"


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.lr=1,,2"], "empty value"),
        (["train.lr=1,"], "empty value"),
        (["train.lr=1,1"], "repeats a value"),
        (["train.lr=1,2", "train.lr=3,4"], "swept twice"),
        (["run.workdir=a,b"], "cannot be swept"),
        (["swarm.transport=none,gdrive"], "cannot be swept"),
        (
            [f"run.seed={','.join(map(str, range(17)))}", f"train.lr={','.join(map(str, range(16)))}"],
            f"272 combinations .*at most {MAX_COMBINATIONS}",
        ),
    ],
)
def test_bad_grids_are_refused(sets, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(sets)


# ------------------------------------------------------------------------------ running


class Oracle:
    def generate(self, problems, n, params):
        return [
            [Completion(f"<answer>{p.answer if i % 2 == 0 else -1}</answer>", num_tokens=3) for i in range(n)]
            for p in problems
        ]


@attrs.frozen
class FlakySettings:
    lr: float = 1.0
    explode: bool = False


class Flaky:
    def __init__(self, settings: FlakySettings) -> None:
        self.settings = settings

    def train(self, groups, round):
        if self.settings.explode:
            raise TrainingError("loss is nan")
        return {"loss": self.settings.lr}

    def save(self, folder: Path) -> None:
        (folder / "state.json").write_text("{}")

    def load(self, folder: Path) -> None:
        pass


@pytest.fixture
def backends(sapo_plugins):
    class Plugin:
        @hookimpl
        def register_inference(self, register):
            register("oracle", lambda settings, context: Oracle())

        @hookimpl
        def register_learners(self, register):
            register("flaky", lambda settings, context: Flaky(settings), settings=FlakySettings)

    sapo_plugins.register(Plugin(), name="sweep-backends")


def sweep(sapo_cli, tmp_path, *args):
    return sapo_cli(
        "sweep",
        "--inference",
        "oracle",
        "--rounds",
        "2",
        "--set",
        "train.backend=flaky",
        "--set",
        "inference.num_completions=2",
        "--set",
        "tasks.problems_per_round=2",
        "--set",
        "eval.problems=2",
        "--set",
        f"run.workdir={tmp_path.as_posix()}",
        *args,
    )


def test_a_sweep_runs_each_combination_in_its_own_run_directory_and_summarises(sapo_cli, backends, tmp_path):
    result = sweep(sapo_cli, tmp_path, "--set", "train.lr=0.5,2", "--set", "train.explode=false,true")
    assert result.exit_code == 1, result.output  # one failed combination fails the command, after the table
    (folder,) = (tmp_path / "default").glob("sweep-*")
    assert sorted(p.name for p in folder.iterdir()) == [
        "lr=0.5,explode=false",
        "lr=0.5,explode=true",
        "lr=2,explode=false",
        "lr=2,explode=true",
        "summary.json",
        "sweep.json",
    ]
    for name in ("lr=0.5,explode=false", "lr=2,explode=false"):
        assert (folder / name / "metrics" / "eval_iter_001.json").exists()
        assert json.loads((folder / name / "config.json").read_text())["run"]["dir"] == str(folder / name)
    assert "TrainingError" in (folder / "lr=2,explode=true" / "error.txt").read_text()

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["axes"] == {"train.lr": ["0.5", "2"], "train.explode": ["false", "true"]}
    rows = {row["name"]: row for row in summary["results"]}
    ok = rows["lr=2,explode=false"]
    assert ok["status"] == "ok" and ok["error"] is None and ok["rounds_done"] == 2
    assert ok["final_train_loss"] == 2.0 and ok["final_reward_mean"] > 0
    assert ok["best_eval_pass@1"] == 1.0 and ok["best_eval_round"] == 1 and ok["wall_seconds"] > 0
    failed = rows["lr=0.5,explode=true"]
    assert failed["status"] == "failed" and failed["error"] == "loss is nan" and failed["final_train_loss"] is None

    table = result.stdout
    assert "sweep summary" in table and "train.lr" in table and "best pass@1" in table
    assert table.count("failed") == 2 and table.count(" ok ") == 2 and "loss is nan" in table
    assert "1.000 (r1)" in table and f"summary: {folder / 'summary.json'}" in table
    assert "2 of 4 combinations failed" in result.stderr


def test_dry_run_lists_the_grid_and_runs_nothing(sapo_cli, backends, tmp_path):
    result = sweep(
        sapo_cli,
        tmp_path,
        "--dry-run",
        "--set",
        "train.lr=0.5,2",
        "--set",
        'tasks.names=["arithmetic","sort"],["sort"]',
    )
    assert result.exit_code == 0, result.output
    assert "4 combination(s)" in result.output and "lr=0.5,names=arithmetic+sort" in result.output
    assert '["arithmetic","sort"]' in result.output
    assert not (tmp_path / "default").exists()
    grid = json.loads(sweep(sapo_cli, tmp_path, "--dry-run", "--json", "--set", "run.seed=1,2").output)
    assert [c["name"] for c in grid["combinations"]] == ["seed=1", "seed=2"]


def test_sweep_refusals(sapo_cli, backends, tmp_path):
    too_big = sweep(sapo_cli, tmp_path, "--set", f"run.seed={','.join(map(str, range(300)))}")
    assert too_big.exit_code == 1 and "300 combinations" in too_big.output
    swarm = sweep(sapo_cli, tmp_path, "--transport", "memory", "--set", "run.seed=1,2")
    assert swarm.exit_code == 1 and "sapo sweep runs offline" in swarm.output
    resume = sweep(sapo_cli, tmp_path, "--resume", "--set", "run.seed=1,2")
    assert resume.exit_code == 1 and "--run-dir" in resume.output
    run_dir = sweep(sapo_cli, tmp_path, "--set", "run.dir=x", "--set", "run.seed=1,2")
    assert run_dir.exit_code == 1 and "--run-dir, not --set run.dir" in run_dir.output
    typo = sweep(sapo_cli, tmp_path, "--set", "eval.evry=1,2")
    assert typo.exit_code == 1 and "eval.every" in typo.output and "combination eval.evry=1" in typo.output
    assert not (tmp_path / "default").exists(), "nothing ran"


def test_a_sweep_resumes_in_its_folder(sapo_cli, backends, tmp_path):
    folder = tmp_path / "my-sweep"
    first = sweep(sapo_cli, tmp_path, "--run-dir", str(folder), "--set", "train.lr=1,2")
    assert first.exit_code == 0, first.output
    again = sapo_cli(
        "sweep",
        "--inference",
        "oracle",
        "--rounds",
        "3",
        "--resume",
        "--run-dir",
        str(folder),
        "--set",
        "train.backend=flaky",
        "--set",
        "inference.num_completions=2",
        "--set",
        "tasks.problems_per_round=2",
        "--set",
        "eval.problems=2",
        "--set",
        "train.lr=1,2",
    )
    assert again.exit_code == 0, again.output
    for name in ("lr=1", "lr=2"):
        lines = (folder / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["round"] for line in lines] == [0, 1, 2]
    rows = json.loads((folder / "summary.json").read_text())["results"]
    assert [row["rounds_done"] for row in rows] == [3, 3]
    reused = sweep(sapo_cli, tmp_path, "--run-dir", str(folder), "--set", "train.lr=1,2")
    assert reused.exit_code == 1 and "already holds a sweep" in reused.output
