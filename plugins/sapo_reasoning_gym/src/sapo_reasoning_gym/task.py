"""``rg:<dataset>``: a reasoning-gym dataset as a sapo `Task`.

* **Problems.** The problem of seed ``s`` is item ``s % size`` of the dataset built with
  reasoning-gym seed 0: reasoning-gym draws each item from its index, so it is the same on every
  machine. The prompt is the dataset's question followed by sapo's answer format.
* **Verifier.** reasoning-gym's own ``score_answer`` on the extracted answer, partial credit kept.
  The item it scores against is regenerated from the problem's id, never taken from a peer's
  payload, so a peer cannot send its own "reference answer".
* **Untagged answers.** Where every sampled reference answer is a number (basic_arithmetic,
  decimal_arithmetic, base_conversion to bases up to 10, ...), a completion without answer tags
  is read as its last number, as sapo's own numeric tasks read it; other datasets credit tagged
  answers only.
* **Levels.** With ``level`` >= 1 the dataset's config comes from reasoning-gym's curriculum at
  that level, and sapo's curriculum (`sapo_core.curriculum`) moves it with the model.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import OrderedDict
from typing import Any

import attrs

from sapo_core.answers import build_messages, last_number, normalize_answer
from sapo_core.errors import ConfigError, PluginError
from sapo_core.records import Problem
from sapo_reasoning_gym import PREFIX, catalog
from sapo_reasoning_gym.settings import dataset_kwargs

#: Items kept per task for scoring (each round scores every completion against its item).
CACHED_ITEMS = 4096

_ID = re.compile(r"(?P<level>[0-9]+)-(?P<seed>[0-9]+)")
#: Items whose reference answers decide whether the dataset's answers are numbers.
ANSWER_SAMPLE = 32


def _reasoning_gym() -> Any:
    try:
        from reasoning_gym import factory
    except ImportError as exc:  # the plugin is installed but its dependency is not
        raise PluginError(f"the rg: tasks need reasoning-gym ({exc}); run: pip install sapo-reasoning-gym") from exc
    return factory


class ReasoningGymTask:
    """One reasoning-gym dataset at the settings given (see the module docstring)."""

    def __init__(self, dataset: str, settings: Any) -> None:
        self.dataset = dataset
        self.name = PREFIX + dataset
        self.settings = settings
        entry = catalog.load()["datasets"][dataset]
        self.size: int = entry["size"]
        self.max_level: int = entry["levels"]
        self.description = f"reasoning-gym {dataset}"
        self._data = self._build(entry)
        self._items: OrderedDict[int, dict[str, Any]] = OrderedDict()
        # One task per level, shared by all of them: a peer's problem at any level reuses its dataset.
        self._siblings: dict[int, ReasoningGymTask] = {settings.level: self}

    def _build(self, entry: dict[str, Any]) -> Any:
        factory = _reasoning_gym()
        if self.dataset not in factory.DATASETS:
            raise PluginError(
                f"the installed reasoning-gym has no dataset {self.dataset!r} (the catalog was made "
                f"from reasoning-gym {catalog.load()['reasoning_gym']}); install that version"
            )
        dataset_cls, config_cls = factory.DATASETS[self.dataset]
        # Only what the config changed: the rest keeps reasoning-gym's own defaults, whose types
        # (enums, tuples) JSON cannot carry.
        kwargs = {
            key: value
            for key, value in dataset_kwargs(self.settings).items()
            if catalog.json_default(value) != entry["settings"][key]
        }
        for field in dataclasses.fields(config_cls):  # JSON has lists only: give back the config's own type
            if field.name in kwargs and isinstance(kwargs[field.name], tuple):
                default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
                if isinstance(default, list):
                    kwargs[field.name] = list(kwargs[field.name])
        where = f'tasks."{self.name}"'
        level = self.settings.level
        try:
            if level:
                pinned = sorted(set(entry["curriculum_keys"]) & set(kwargs))
                if pinned:
                    raise ConfigError(
                        f"{where}.level = {level} sets {', '.join(pinned)} from reasoning-gym's "
                        "curriculum; leave them unset, or set level = 0 to configure them yourself"
                    )
                curriculum = factory.create_curriculum(self.dataset)
                config = catalog.config_at(curriculum, level, {**kwargs, "seed": 0, "size": self.size})
            else:
                config = config_cls(seed=0, size=self.size, **kwargs)
            return dataset_cls(config=config)
        except ConfigError:
            raise
        except Exception as exc:  # reasoning-gym's own checks (asserts in validate())
            raise ConfigError(f"{where}: reasoning-gym refuses these settings: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------------ the Task protocol

    @property
    def level(self) -> int | None:
        """The curriculum level (None with level 0 or no curriculum: sapo's curriculum leaves it)."""
        if not self.max_level or not self.settings.level:
            return None
        return int(self.settings.level)

    def at_level(self, level: int) -> ReasoningGymTask:
        """The same dataset at another curriculum level (1..max_level)."""
        if not 1 <= level <= self.max_level:
            raise ValueError(f"level {level} is off {self.name}'s curriculum (1..{self.max_level})")
        return self._at(level)

    def _at(self, level: int) -> ReasoningGymTask:
        if level not in self._siblings:
            sibling = ReasoningGymTask(self.dataset, attrs.evolve(self.settings, level=level))
            sibling._siblings = self._siblings
            self._siblings[level] = sibling
        return self._siblings[level]

    def item(self, seed: int) -> dict[str, Any]:
        """reasoning-gym's item for ``seed`` (question, answer, metadata), cached."""
        found = self._items.get(seed)
        if found is None:
            found = self._data[seed % self.size]
            self._items[seed] = found
            if len(self._items) > CACHED_ITEMS:
                self._items.popitem(last=False)
        return found

    def generate(self, seed: int) -> Problem:
        item = self.item(seed)
        prompt = f"{item['question']}\n\nPut only your final answer inside <answer></answer>."
        return Problem(
            task=self.name,
            id=f"{self.name}-{self.settings.level}-{seed}",
            messages=build_messages(prompt),
            answer=catalog.reference(item),
            metadata={"dataset": self.dataset, "level": self.settings.level},
        )

    @functools.cached_property
    def numeric_answers(self) -> bool:
        """Whether this dataset's reference answers are numbers (the first `ANSWER_SAMPLE` items)."""
        references = []
        for seed in range(ANSWER_SAMPLE):
            try:
                references.append(catalog.reference(self.item(seed)))
            except Exception:  # a generator that raises for a seed: judged on the others
                continue
        return bool(references) and all(
            isinstance(reference, str) and last_number(reference) == normalize_answer(reference)
            for reference in references
        )

    def untagged_answer(self, text: str) -> str | None:
        """A completion without answer tags: its last number where the answers are numbers, else none."""
        return last_number(text) if self.numeric_answers else None

    def reference_answer(self, problem: Problem) -> str:
        """The answer reasoning-gym gives for ``problem`` (its verifier scores it 1.0)."""
        task, seed = self._source(problem)
        return catalog.reference(task.item(seed)) or ""

    def verify(self, problem: Problem, answer: str) -> float:
        """reasoning-gym's ``score_answer`` against the item regenerated from the problem's id."""
        try:
            task, seed = self._source(problem)
            return catalog.score(task._data, answer, task.item(seed))
        except (ValueError, ConfigError, PluginError):
            return 0.0

    def _source(self, problem: Problem) -> tuple[ReasoningGymTask, int]:
        """The task (this one at the problem's level) and the seed that made ``problem``."""
        match = _ID.fullmatch(problem.id.removeprefix(f"{self.name}-"))
        if not problem.id.startswith(f"{self.name}-") or match is None:
            raise ValueError(f"{problem.id!r} is no {self.name} problem id")
        level = int(match["level"])
        if not 0 <= level <= self.max_level:
            raise ValueError(f"{problem.id!r}: level {level} is off the curriculum")
        return self._at(level), int(match["seed"])
