"""A plugin that returns the wrong thing is an error naming it (sapo_core.contracts), on a real `sapo run`."""

from __future__ import annotations

import pytest

from sapo_core.contracts import checked_generation
from sapo_core.errors import PluginError
from sapo_core.records import Completion
from sapo_core.testing import sample_problems

WRONG_INFERENCE = """
from sapo_core import hookimpl
from sapo_core.records import Completion


class Wrong:
    def __init__(self, how):
        self.how = how

    def generate(self, problems, n, params):
        if self.how == "strings":
            return [["<answer>2</answer>"] * n for _ in problems]
        if self.how == "number":
            return [[Completion(text=42)] * n for _ in problems]
        return [[Completion(text="<answer>2</answer>")] * (n + 3) for _ in problems]


@hookimpl
def register_inference(register):
    for how in ("strings", "number", "extra"):
        register(f"wrong-{how}", lambda settings, context, how=how: Wrong(how))
"""


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("wrong-strings", "generate returned str '<answer>2</answer>' for problem"),
        ("wrong-number", "has text int 42, not a string"),
        ("wrong-extra", "generate returned 11 completions for problem"),
    ],
)
def test_sapo_run_names_the_backend_and_its_distribution(sapo_cli, install_dist, tmp_path, backend, message):
    install_dist("sapo-wrong", "sapo_wrong_plugin", WRONG_INFERENCE)
    from sapo_core.plugins import reset_plugins

    reset_plugins()
    result = sapo_cli(
        "run",
        "--inference",
        backend,
        "--role",
        "contributor",
        "--rounds",
        "1",
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        "eval.every=0",
        "--set",
        "inference.num_completions=8",
    )
    assert result.exit_code != 0
    assert f"inference backend '{backend}' from sapo-wrong" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_a_short_list_is_a_failed_problem_and_the_right_shape_passes() -> None:
    problems = sample_problems()
    got = checked_generation("x", problems, 2, [[Completion("a")], []])
    assert got == [[Completion("a")], []]
    with pytest.raises(PluginError, match="generate returned 1 results for 2 problems"):
        checked_generation("x", problems, 2, [[]])
    with pytest.raises(PluginError, match="generate returned NoneType None for 2 problems"):
        checked_generation("x", problems, 2, None)
    with pytest.raises(PluginError, match="generate returned str 'abc' for problem"):
        checked_generation("x", problems, 2, ["abc", []])
