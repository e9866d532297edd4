"""Which reasoning-gym datasets become sapo tasks, with their settings and curriculum levels.

Importing reasoning-gym takes seconds (it imports every dataset and sympy), and the registry
needs the names and settings of the tasks at every ``sapo`` command. So the plugin registers
from ``catalog.json``, made from the installed reasoning-gym by ``python -m
sapo_reasoning_gym.catalog``, and imports reasoning-gym only when a task is built. A dataset is
in the catalog when sapo can use it as a checkable task:

* its config has ``seed`` and ``size`` (problems are drawn by index, so the same sapo seed gives
  the same problem everywhere) and its defaults build a dataset;
* its reference answer is a string that its own ``score_answer`` scores 1.0, and a wrong answer
  scores below 1.0 (a verifier that passes anything teaches nothing);
* the same index gives the same question from a fresh dataset, in under `MAX_ITEM_SECONDS`.

Every other dataset is listed under ``"excluded"`` with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

#: Problems are drawn by index ``seed % size``: the largest size each dataset's own checks allow.
SIZES = (2**31 - 1, 10**6, 10**4)
#: A dataset slower than this per problem is left out: a round draws dozens of them.
MAX_ITEM_SECONDS = 2.0
#: Indices sampled when a dataset is examined.
PROBE_INDICES = (0, 1, 7, 4242, 99991, 123457, 5000, 333)
#: Config fields that sapo sets itself.
SAPO_FIELDS = ("seed", "size")


@cache
def load() -> dict[str, Any]:
    """The catalog shipped with the plugin."""
    text = resources.files("sapo_reasoning_gym").joinpath("catalog.json").read_text(encoding="utf-8")
    return json.loads(text)


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def score(dataset: Any, answer: str, entry: dict[str, Any]) -> float:
    """reasoning-gym's score of ``answer``, 0.0 where its scorer raises (some parse with int())."""
    try:
        value = float(dataset.score_answer(answer, entry))
    except Exception:
        return 0.0
    return value if 0.0 <= value <= 1.0 else 0.0


def reference(entry: dict[str, Any]) -> str | None:
    """The answer to check against: the item's own, or where several are right (propositional
    logic) the example answer reasoning-gym keeps in the metadata."""
    answer = entry.get("answer")
    if answer is None and isinstance(entry.get("metadata"), dict):
        answer = entry["metadata"].get("example_answer")
    return answer if isinstance(answer, str) and answer else None


def json_default(value: Any) -> Any:
    """A config default as JSON (tuples become lists; the settings class turns them back)."""
    return json.loads(json.dumps(value))


def _defaults(config_cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config_cls):
        if field.name in SAPO_FIELDS:
            continue
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            raise ValueError(f"its config field {field.name!r} has no default")
        try:
            out[field.name] = json_default(value)
        except (TypeError, ValueError):
            raise ValueError(f"its config field {field.name!r} has a default that is not JSON ({value!r})") from None
    return out


def check_items(dataset: Any, make: Any) -> str | None:
    """Why ``dataset`` (and a fresh one from ``make()``) fails as a sapo task, or None."""
    start = time.perf_counter()
    entries = [dataset[index % dataset.size] for index in PROBE_INDICES]
    if (time.perf_counter() - start) / len(entries) > MAX_ITEM_SECONDS:
        return f"it takes over {MAX_ITEM_SECONDS:.0f} s a problem"
    for entry in entries:
        right = reference(entry)
        if right is None:
            return "it gives no reference answer (any of several answers is right), so none can be checked"
        if score(dataset, right, entry) != 1.0:
            return "its own score_answer does not give its reference answer 1.0"
        # Another item's answer is wrong here only where each item has one right answer.
        others = [e["answer"] for e in entries if isinstance(entry.get("answer"), str) and e["answer"] != right]
        for wrong in ("definitely wrong", *others[:1]):
            if score(dataset, wrong, entry) >= 1.0:
                return f"its score_answer gives a wrong answer ({wrong!r}) 1.0"
    again = make()[PROBE_INDICES[3] % dataset.size]
    if again["question"] != entries[3]["question"]:
        return "the same index does not give the same question twice"
    return None


def examine(name: str) -> dict[str, Any]:
    """The catalog entry of one dataset: ``{"size", "levels", "settings", "curriculum_keys"}``,
    or ``{"excluded": reason}``."""
    from reasoning_gym.factory import CURRICULA, DATASETS, create_curriculum

    dataset_cls, config_cls = DATASETS[name]
    fields = {field.name for field in dataclasses.fields(config_cls)}
    if not set(SAPO_FIELDS) <= fields:
        return {"excluded": "its config has no seed and size, so problems cannot be drawn by index"}
    try:
        defaults = _defaults(config_cls)
    except ValueError as exc:
        return {"excluded": str(exc)}
    last_error = "no size works"
    for size in SIZES:
        try:
            with _time_limit(10 * MAX_ITEM_SECONDS):

                def make(size: int = size) -> Any:
                    return dataset_cls(config=config_cls(seed=0, size=size))

                dataset = make()
                why = check_items(dataset, make)
        except _Timeout:
            last_error = f"building it (size {size}) takes too long"
            continue
        except Exception as exc:
            last_error = f"its defaults fail: {type(exc).__name__}: {str(exc)[:160]}"
            continue
        if why:
            return {"excluded": why}
        entry: dict[str, Any] = {"size": size, "levels": 0, "settings": defaults, "curriculum_keys": []}
        if name in CURRICULA:
            entry.update(_levels(name, dataset_cls, config_cls, size, create_curriculum(name)))
        return entry
    return {"excluded": last_error}


def curriculum_keys(curriculum: Any) -> list[str]:
    """The config fields a reasoning-gym curriculum sets at each level."""
    keys: list[str] = []
    for attr in curriculum.attributes.values():
        for key in ("lower_field_name", "upper_field_name", "field_name"):
            if getattr(attr, key, None):
                keys.append(getattr(attr, key))
    return sorted(set(keys))


def config_at(curriculum: Any, level: int, defaults: dict[str, Any]) -> Any:
    """The dataset config at sapo level ``level`` (1 = the curriculum's level 0)."""
    curriculum.set_global_level(level - 1)
    return curriculum.generate_configuration(defaults)


def _levels(name: str, dataset_cls: type, config_cls: type, size: int, curriculum: Any) -> dict[str, Any]:
    """How many levels, from the easiest, give problems that pass `check_items`."""
    top = max((len(attr.levels) for attr in curriculum.attributes.values()), default=0)
    levels = 0
    for level in range(1, top + 1):
        try:
            with _time_limit(10 * MAX_ITEM_SECONDS):
                config = config_at(curriculum, level, {"seed": 0, "size": size})
                why = check_items(dataset_cls(config=config), lambda config=config: dataset_cls(config=config))
        except (_Timeout, Exception):
            why = "fails"
        if why:
            break
        levels = level
    return {"levels": levels, "curriculum_keys": curriculum_keys(curriculum) if levels else []}


def build() -> dict[str, Any]:
    """The catalog of the installed reasoning-gym (takes a few minutes)."""
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    datasets: dict[str, Any] = {}
    excluded: dict[str, str] = {}
    for name in sorted(DATASETS):
        entry = examine(name)
        if "excluded" in entry:
            excluded[name] = entry["excluded"]
        else:
            datasets[name] = entry
        said = entry.get("excluded") or f"ok, {entry['levels']} levels"
        print(f"{name}: {said}", file=sys.stderr, flush=True)
    return {"reasoning_gym": reasoning_gym.__version__, "datasets": datasets, "excluded": excluded}


if __name__ == "__main__":
    target = Path(__file__).with_name("catalog.json")
    target.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
