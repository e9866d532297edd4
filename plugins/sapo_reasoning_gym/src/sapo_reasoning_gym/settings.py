"""The settings class of each ``rg:<dataset>`` task, made from its catalog entry.

Each field of the dataset's reasoning-gym config (but ``seed`` and ``size``, which sapo sets)
becomes a key ``tasks."rg:<dataset>".<field>`` with the same default, typed by that default, so
sapo's config checks it and suggests the closest key on a typo. One more key, ``level``, picks
a level of the dataset's reasoning-gym curriculum (0: the config as set, no curriculum).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import attrs


def _type_of(value: Any) -> Any:
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int  # sapo's converter accepts an int where a float field wants one, not the reverse
    if isinstance(value, float):
        return float
    if isinstance(value, str):
        return str
    if isinstance(value, list):
        items = {_type_of(item) for item in value}
        item = items.pop() if len(items) == 1 else Any
        return tuple[item, ...]  # type: ignore[valid-type]
    if isinstance(value, dict):
        return dict[str, Any]
    return Any  # None: reasoning-gym's "unset"


def _check_level(levels: int) -> Any:
    def check(instance: Any, attribute: Any, value: int) -> None:
        if not 0 <= value <= levels:
            top = f"1..{levels} (reasoning-gym's curriculum)" if levels else "none: this dataset has no curriculum"
            raise ValueError(f"must be 0 (the config as set) or a curriculum level, {top}; got {value}", attribute)

    return check


def _default(value: Any) -> Any:
    if isinstance(value, list):
        return attrs.field(default=tuple(value), converter=tuple)
    if isinstance(value, dict):
        return attrs.field(factory=lambda: dict(value))
    return attrs.field(default=value)


@cache
def settings_class(dataset: str, entry_json: str) -> type:
    """The frozen attrs settings class of ``rg:<dataset>`` (``entry_json``: its catalog entry)."""
    import json

    entry = json.loads(entry_json)
    fields: dict[str, Any] = {
        "level": attrs.field(default=0, type=int, validator=_check_level(entry["levels"])),
    }
    for key, value in entry["settings"].items():
        field = _default(value)
        fields[key] = attrs.field(default=field._default, type=_type_of(value), converter=field.converter)
    name = "".join(part.title() for part in dataset.split("_")) + "Settings"
    cls = attrs.make_class(name, fields, frozen=True, kw_only=True)
    cls.__doc__ = f"Settings of the ``rg:{dataset}`` task (reasoning-gym's {dataset} config)."
    cls.__module__ = __name__
    return cls


def dataset_kwargs(settings: Any) -> dict[str, Any]:
    """The reasoning-gym config keywords that ``settings`` hold (tuples stay tuples)."""
    values = attrs.asdict(settings, recurse=False)
    values.pop("level")
    return values
