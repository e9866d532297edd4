"""What a backend returns, checked where it returns it: a plugin's mistake is an error that names it.

A third party's inference backend that returns strings, a `Completion` whose text is not a
string, or more completions than asked would otherwise surface far away: a traceback from the
node, or every reward 0 with the warning blaming a task's verifier. These checks run on every
call and raise `PluginError` naming the backend and its distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sapo_core.errors import PluginError
from sapo_core.records import Completion, Problem


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def checked_generation(who: str, problems: Sequence[Problem], n: int, outputs: Any) -> list[list[Completion]]:
    """``outputs`` of ``generate(problems, n, ...)`` if it keeps the `InferenceBackend` contract:
    one list per problem of at most ``n`` `Completion` with string text (fewer: that problem failed)."""
    if not isinstance(outputs, (list, tuple)) or len(outputs) != len(problems):
        count = f"{len(outputs)} results" if isinstance(outputs, (list, tuple)) else _shown(outputs)
        raise PluginError(
            f"{who}: generate returned {count} for {len(problems)} problems; it must return one list "
            f"of Completion per problem, in order"
        )
    checked: list[list[Completion]] = []
    for problem, got in zip(problems, outputs):
        if not isinstance(got, (list, tuple)):
            raise PluginError(
                f"{who}: generate returned {_shown(got)} for problem {problem.id}, not a list of Completion"
            )
        if len(got) > n:
            raise PluginError(
                f"{who}: generate returned {len(got)} completions for problem {problem.id}, {n} were asked"
            )
        for completion in got:
            if not isinstance(completion, Completion):
                raise PluginError(
                    f"{who}: generate returned {_shown(completion)} for problem {problem.id}; "
                    f"wrap each text as sapo_core.records.Completion(text=...)"
                )
            if not isinstance(completion.text, str):
                raise PluginError(
                    f"{who}: a Completion for problem {problem.id} has text {_shown(completion.text)}, not a string"
                )
        checked.append(list(got))
    return checked
