"""Per-stage backends (eval.inference) and a backend ending the run cleanly (StopRun)."""

from __future__ import annotations

import json

import attrs
import pytest

from sapo_core import hookimpl
from sapo_core.config import load_config
from sapo_core.errors import ConfigError, StopRun
from sapo_core.node import Node
from sapo_core.records import Completion


@attrs.frozen
class EchoSettings:
    answer_offset: int = 0  # 0: right answers; otherwise wrong by this much


class Echo:
    """Answers every problem with its answer plus ``answer_offset``; counts its calls."""

    def __init__(self, settings: EchoSettings, stop_after: int | None = None) -> None:
        self.settings = settings
        self.calls: list[int] = []  # problems per call
        self.stop_after = stop_after
        self.drained = 0

    def generate(self, problems, n, params):
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise StopRun(f"usage cap reached after {self.stop_after} calls (test.cap)")
        self.calls.append(len(problems))
        answer = lambda p: int(p.answer) + self.settings.answer_offset  # noqa: E731
        return [[Completion(f"<think>x</think>\n<answer>{answer(p)}</answer>", num_tokens=5)] * n for p in problems]

    def round_metrics(self):  # calls since the last read, as the interface asks
        drained, self.drained = len(self.calls) - self.drained, len(self.calls)
        return {"calls": float(drained)}


class Stages:
    def __init__(self, stop_after: int | None = None) -> None:
        self.built: dict[str, Echo] = {}
        self.stop_after = stop_after
        self.finished: list[dict] = []

    @hookimpl
    def register_inference(self, register):
        register("right", lambda s, c: self.built.setdefault("right", Echo(s, self.stop_after)), settings=EchoSettings)
        register("wrong", lambda s, c: self.built.setdefault("wrong", Echo(s, self.stop_after)), settings=EchoSettings)

    @hookimpl
    def run_finished(self, context, metrics):
        self.finished.append(dict(metrics))


def node(sapo_plugins, tmp_path, *sets, stop_after=None):
    stages = Stages(stop_after)
    sapo_plugins.register(stages, name="stages")
    config = load_config(
        env={},
        sets=[
            "inference.backend=right",
            "inference.num_completions=2",
            "tasks.problems_per_round=3",
            "eval.problems=4",
            f"run.workdir={tmp_path.as_posix()}",
            *sets,
        ],
    )
    return Node.from_config(config, sapo_plugins), stages


def test_evaluation_uses_its_own_backend_with_its_own_settings(sapo_plugins, tmp_path):
    built, stages = node(
        sapo_plugins, tmp_path, "run.rounds=2", "eval.every=1", "eval.inference=wrong", "eval.answer_offset=7"
    )
    metrics = built.run()
    assert stages.built["wrong"].settings == EchoSettings(answer_offset=7)
    assert stages.built["right"].calls == [3, 3]  # generation: both rounds, nothing else
    assert stages.built["wrong"].calls == [4, 4]  # evaluation: after each round
    assert metrics["reward/accuracy"] == 1.0 and metrics["eval/pass@1"] == 0.0
    assert metrics["inference/calls"] == 1.0 and metrics["eval/inference/calls"] == 1.0


def test_eval_settings_without_an_eval_backend_are_an_error(sapo_plugins, tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown key 'eval.answer_offset' \(from --set\).*set eval.inference=NAME"):
        node(sapo_plugins, tmp_path, "eval.answer_offset=7")


def test_a_stop_request_ends_the_run_cleanly_after_the_last_full_round(sapo_plugins, tmp_path, caplog):
    built, stages = node(sapo_plugins, tmp_path, "run.rounds=5", "eval.every=0", stop_after=2)
    metrics = built.run()
    assert metrics["round"] == 1 and stages.finished[-1]["round"] == 1
    lines = (built.context.workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1]
    assert "usage cap reached after 2 calls (test.cap); the run ends before round 2" in caplog.text


def test_a_stop_request_during_evaluation_keeps_the_rounds_metrics(sapo_plugins, tmp_path, caplog):
    built, _ = node(sapo_plugins, tmp_path, "run.rounds=5", "eval.every=1", stop_after=1)
    metrics = built.run()
    assert metrics["round"] == 0 and "eval/pass@1" not in metrics
    assert [
        json.loads(line)["round"] for line in (built.context.workdir / "metrics.jsonl").read_text().splitlines()
    ] == [0]
    assert "the run ends after round 0" in caplog.text
