"""The sapo plugin: every dataset of the catalog registered as the task ``rg:<dataset>``."""

from __future__ import annotations

import json
from typing import Any

from sapo_core import hookimpl
from sapo_core.interfaces import BackendContext
from sapo_core.registry import Register
from sapo_reasoning_gym import PREFIX, catalog
from sapo_reasoning_gym.settings import settings_class


def _factory(dataset: str) -> Any:
    def build(settings: Any, context: BackendContext) -> Any:
        from sapo_reasoning_gym.task import ReasoningGymTask  # imports reasoning-gym: only when used

        return ReasoningGymTask(dataset, settings)

    return build


@hookimpl
def register_tasks(register: Register) -> None:
    for dataset, entry in catalog.load()["datasets"].items():
        levels = f", curriculum levels 1-{entry['levels']}" if entry["levels"] else ""
        register(
            PREFIX + dataset,
            _factory(dataset),
            settings=settings_class(dataset, json.dumps(entry, sort_keys=True)),
            description=f"reasoning-gym's {dataset}{levels}",
        )
