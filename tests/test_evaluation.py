"""Evaluation on held-out problems: pass@k arithmetic, the fixed held-out set, and the node's schedule."""

from __future__ import annotations

import json

import pytest

from sapo_core import hookimpl
from sapo_core.config import EvalSettings, load_config
from sapo_core.errors import SapoError
from sapo_core.evaluation import Evaluator, ProblemResult, eval_problems, pass_at_1, pass_at_k, summarize
from sapo_core.interfaces import SamplingParams
from sapo_core.node import Node
from sapo_core.records import Completion, Message, Problem
from sapo_core.tasks.arithmetic import ArithmeticTask
from sapo_core.tasks.sort import SortTask


def right(problem: Problem) -> str:
    answer = ", ".join(problem.answer) if problem.task == "sort" else str(problem.answer)
    return f"<think>sure</think>\n<answer>{answer}</answer>"


WRONG = "<think>hmm</think>\n<answer>nope</answer>"


class Scripted:
    """Training calls (temperature > 0): right for even replicates. Eval calls (temperature 0):
    only the first completion of each problem is right. Records every call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.unread = 0

    def round_metrics(self):
        calls, self.unread = self.unread, 0
        return {"calls": calls}

    def generate(self, problems, n, params):
        self.unread += 1
        self.calls.append(
            {"ids": [p.id for p in problems], "n": n, "temperature": params.temperature, "seed": params.seed}
        )
        if params.temperature == 0:
            return [
                [
                    Completion(
                        right(p) if i == 0 else WRONG, num_tokens=5, finish_reason="stop" if i == 0 else "length"
                    )
                    for i in range(n)
                ]
                for p in problems
            ]
        return [[Completion(right(p) if i % 2 == 0 else WRONG, num_tokens=7) for i in range(n)] for p in problems]

    def training_ids(self):
        return {i for call in self.calls if call["temperature"] > 0 for i in call["ids"]}

    def eval_calls(self):
        return [call for call in self.calls if call["temperature"] == 0]


class Learner:
    def train(self, groups, round):
        return {"loss": 0.25, "kl": 0.01, "clip_ratio_low": 0.01, "clip_ratio_high": 0.02, "tokens_per_second": 99.0}

    def save(self, folder):
        (folder / "state.json").write_text("{}")

    def load(self, folder):
        pass


@pytest.fixture
def scripted(sapo_plugins):
    backends: dict[str, Scripted] = {}

    class Plugin:
        @hookimpl
        def register_inference(self, register):
            register("scripted", lambda settings, context: backends.setdefault(context.node, Scripted()))

        @hookimpl
        def register_learners(self, register):
            register("learner", lambda settings, context: Learner())

    sapo_plugins.register(Plugin(), name="eval-backends")
    return backends


def config(tmp_path, *sets):
    return load_config(
        env={},
        sets=[
            "inference.backend=scripted",
            "train.backend=learner",
            "inference.num_completions=4",
            "tasks.problems_per_round=4",
            "eval.problems=6",
            f"run.workdir={tmp_path.as_posix()}",
            *sets,
        ],
    )


def only_run_dir(tmp_path):
    (found,) = [p.parent for p in (tmp_path / "default").glob("*/config.json")]
    return found


# ---------------------------------------------------------------------------- the math


def test_pass_at_1_is_the_mean_fraction_of_correct_completions():
    correctness = [[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.5, 1.0]]
    assert pass_at_1(correctness) == pytest.approx((0.5 + 1.0 + 0.0 + 0.5) / 4), "partial credit is not correct"
    assert pass_at_1([[0.9999999999999]]) == 1.0, "float noise below 1.0 still counts"
    assert pass_at_1([[], [1.0]]) == 1.0, "a problem without completions is left out"
    assert pass_at_1([]) == 0.0


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    for n in range(1, 6):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_summarize_a_hand_made_evaluation():
    def problem(task, i):
        return Problem(task=task, id=f"{task}-{i}", messages=[Message("user", "?")], answer=1)

    def result(task, i, correct, fmt):
        n = len(correct)
        completions = tuple(Completion("x", num_tokens=10, finish_reason="length" if i else "stop") for _ in range(n))
        rewards = tuple(c + 0.1 * f for c, f in zip(correct, fmt))
        return ProblemResult(problem(task, i), completions, rewards, {"correctness": correct, "format": fmt})

    results = [
        result("a", 0, [1.0, 0.0], [1.0, 1.0]),  # pass@1 0.5, pass@2 1
        result("a", 1, [0.0, 0.0], [0.5, 0.0]),  # 0, 0
        result("b", 0, [1.0, 1.0], [1.0, 1.0]),  # 1, 1
    ]
    metrics = summarize(results, k=2, dropped=1)
    assert metrics["eval/problems"] == 3 and metrics["eval/dropped_problems"] == 1
    assert metrics["eval/pass@1"] == pytest.approx(0.5)
    assert metrics["eval/pass@2"] == pytest.approx(2 / 3)
    assert metrics["eval/pass@1/a"] == pytest.approx(0.25) and metrics["eval/pass@1/b"] == 1.0
    assert metrics["eval/format"] == pytest.approx((1.0 + 0.25 + 1.0) / 3)
    assert metrics["eval/reward_mean"] == pytest.approx((0.6 + 0.025 + 1.1) / 3)
    assert metrics["eval/reward_mean/b"] == pytest.approx(1.1)
    assert metrics["eval/truncated"] == pytest.approx(2 / 6) and metrics["eval/mean_tokens"] == 10


def test_held_out_problems_are_fixed_split_over_tasks_and_stable_when_tasks_join():
    tasks = {"arithmetic": ArithmeticTask(), "sort": SortTask()}
    both = eval_problems(tasks, ["arithmetic", "sort"], 6, seed=0)
    assert [p.task for p in both] == ["arithmetic", "sort"] * 3
    assert [p.id for p in both] == [p.id for p in eval_problems(tasks, ["arithmetic", "sort"], 6, seed=0)]
    alone = eval_problems(tasks, ["arithmetic"], 3, seed=0)
    assert [p.id for p in alone] == [p.id for p in both if p.task == "arithmetic"]
    assert {p.id for p in eval_problems(tasks, ["arithmetic"], 3, seed=1)}.isdisjoint(p.id for p in alone)


def test_a_backend_returning_the_wrong_number_of_results_is_an_error():
    class Short:
        def generate(self, problems, n, params):
            return []

    evaluator = Evaluator.build(
        EvalSettings(problems=2),
        inference=Short(),
        score=lambda p, c: {},
        weights={},
        tasks={"arithmetic": ArithmeticTask()},
        names=["arithmetic"],
        base=SamplingParams(),
    )
    with pytest.raises(SapoError, match="returned 0 results for 2 problems"):
        evaluator.evaluate()


# ------------------------------------------------------------------------- in the node


def test_eval_every_n_and_after_the_last_round_on_the_same_held_out_problems(tmp_path, sapo_plugins, scripted):
    cfg = config(tmp_path, "run.rounds=5", "eval.every=2", 'tasks.names=["arithmetic","sort"]')
    last = Node.from_config(cfg, sapo_plugins).run()
    folder = only_run_dir(tmp_path)
    evals = sorted(p.name for p in (folder / "metrics").glob("eval_iter_*.json"))
    assert evals == ["eval_iter_001.json", "eval_iter_003.json", "eval_iter_004.json"], "every 2 rounds, and the last"
    oracle = scripted["node-0"]
    calls = oracle.eval_calls()
    assert len(calls) == 3
    assert calls[0]["ids"] == calls[1]["ids"] == calls[2]["ids"], "every evaluation scores the same problems"
    assert len(calls[0]["ids"]) == 6 and calls[0]["n"] == 1
    assert set(calls[0]["ids"]).isdisjoint(oracle.training_ids()), "held out: never a training problem"
    assert len({call["seed"] for call in calls}) == 1

    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [("eval/pass@1" in line) for line in lines] == [False, True, False, True, True]
    assert [line["inference/calls"] for line in lines] == [1] * 5, "eval generation is not the next round's"
    assert [line.get("eval/inference/calls") for line in lines] == [None, 1, None, 1, 1]
    assert last["eval/pass@1"] == 1.0, "greedy and k=1: the scripted backend's first completion is right"
    assert last["eval/pass@1/arithmetic"] == last["eval/pass@1/sort"] == 1.0
    assert last["eval/format"] == 1.0 and last["eval/problems"] == 6
    assert last["time/eval"] >= 0 and last["time/round"] >= last["time/eval"]
    stored = json.loads((folder / "metrics" / "eval_iter_004.json").read_text())
    assert stored["round"] == 4 and stored["eval/pass@1"] == 1.0
    assert [p["id"] for p in stored["problems"]] == calls[0]["ids"]
    assert stored["problems"][0]["completions"][0]["text"].startswith("<think>")
    train = json.loads((folder / "metrics" / "train_iter_004.json").read_text())
    assert not any(key.startswith("eval/") for key in train) and train["train/loss"] == 0.25


def test_pass_at_1_with_several_samples_per_problem(tmp_path, sapo_plugins, scripted):
    cfg = config(tmp_path, "run.rounds=1", "eval.num_completions=2")
    metrics = Node.from_config(cfg, sapo_plugins).run()
    assert metrics["eval/pass@1"] == pytest.approx(0.5), "one of two completions right on every problem"
    assert metrics["eval/pass@2"] == 1.0
    assert metrics["eval/truncated"] == pytest.approx(0.5)


def test_the_held_out_set_does_not_depend_on_run_seed_or_node(tmp_path, sapo_plugins, scripted):
    Node.from_config(config(tmp_path / "a", "run.rounds=1"), sapo_plugins).run()
    Node.from_config(config(tmp_path / "b", "run.rounds=1", "run.seed=7", "run.node_id=other"), sapo_plugins).run()
    Node.from_config(config(tmp_path / "c", "run.rounds=1", "eval.seed=3"), sapo_plugins).run()
    a, b = scripted["node-0"].eval_calls(), scripted["other"].eval_calls()
    assert a[0]["ids"] == b[0]["ids"]
    assert set(a[-1]["ids"]).isdisjoint(a[0]["ids"]), "eval.seed picks another held-out set"


def test_eval_never_and_eval_metrics_without_the_format_reward(tmp_path, sapo_plugins, scripted):
    metrics = Node.from_config(config(tmp_path / "never", "run.rounds=2", "eval.every=0"), sapo_plugins).run()
    assert not any(key.startswith("eval/") for key in metrics)
    assert not list((tmp_path / "never").glob("*/*/metrics/eval_iter_*"))

    cfg = config(tmp_path / "w", "run.rounds=1", "rewards.weights={correctness=1.0, format=0.0}")
    metrics = Node.from_config(cfg, sapo_plugins).run()
    assert metrics["eval/format"] == 1.0, "scored for the report even though it does not count"
    assert metrics["eval/reward_mean"] == 1.0, "the reward counts correctness only, as in training"
    assert metrics["reward/fn/correctness"] == pytest.approx(0.5) and "reward/fn/format" not in metrics


def test_a_contributor_evaluates_too(tmp_path, sapo_plugins, scripted):
    cfg = config(tmp_path, "run.rounds=1", "run.role=contributor")
    metrics = Node.from_config(cfg, sapo_plugins).run()
    assert metrics["eval/pass@1"] == 1.0 and "train/loss" not in metrics


def test_eval_at_start_records_the_baseline_before_any_training(tmp_path, sapo_plugins, scripted):
    cfg = config(tmp_path, "run.rounds=2", "eval.every=2", "eval.at_start=true")

    class Observer:
        seen: list[tuple[int, float | None]] = []

        @hookimpl
        def round_finished(self, context, round, metrics):
            self.seen.append((round, metrics.get("eval/pass@1")))

    sapo_plugins.register(Observer(), name="observer")
    Node.from_config(cfg, sapo_plugins).run()
    assert Observer.seen == [(-1, 1.0), (0, None), (1, 1.0)], "observers see the baseline as round -1"
    folder = only_run_dir(tmp_path)
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [-1, 0, 1]
    assert lines[0]["eval/pass@1"] == 1.0 and not any(key.startswith(("train/", "reward/")) for key in lines[0])
    assert lines[1]["inference/calls"] == 1, "the baseline's generation is not round 0's"
    stored = json.loads((folder / "metrics" / "eval_start.json").read_text())
    calls = scripted["node-0"].eval_calls()
    assert len(calls) == 2 and calls[0]["ids"] == calls[1]["ids"]
    assert [p["id"] for p in stored["problems"]] == calls[0]["ids"]
    assert scripted["node-0"].training_ids(), "training happened after the baseline"
