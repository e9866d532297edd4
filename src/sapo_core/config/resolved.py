"""`Config`: the resolved configuration, one attribute per section, with the extras and the source of every key."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from sapo_core.config import schema
from sapo_core.config.schema import _CORE_KEYS, _NAMED_EXTRAS, SECTIONS
from sapo_core.config.secrets import SECRET, _hide, _plain, _redact_value, _secret_word
from sapo_core.config.settings import Extras, structure


@attrs.frozen
class Config:
    """The resolved configuration: one attribute per section (``config.inference.temperature``),
    plus the extras and the source of every key. Build it with `load_config`; ``Config()`` is
    the defaults. Sequences are tuples (``config.tasks.names == ("arithmetic",)``).
    """

    run: schema.RunSettings = attrs.field(factory=schema.RunSettings)
    model: schema.ModelSettings = attrs.field(factory=schema.ModelSettings)
    inference: schema.InferenceSettings = attrs.field(factory=schema.InferenceSettings)
    tasks: schema.TasksSettings = attrs.field(factory=schema.TasksSettings)
    rewards: schema.RewardsSettings = attrs.field(factory=schema.RewardsSettings)
    advantages: schema.AdvantagesSettings = attrs.field(factory=schema.AdvantagesSettings)
    swarm: schema.SwarmSettings = attrs.field(factory=schema.SwarmSettings)
    train: schema.TrainSettings = attrs.field(factory=schema.TrainSettings)
    checkpoint: schema.CheckpointSettings = attrs.field(factory=schema.CheckpointSettings)
    eval: schema.EvalSettings = attrs.field(factory=schema.EvalSettings)
    # Extras by key parts: ("inference", "base_url") or ("tasks", "arithmetic", "difficulty").
    _extras: Mapping[tuple[str, ...], Any] = attrs.field(factory=dict, repr=False)
    _texts: Mapping[tuple[str, ...], str] = attrs.field(factory=dict, repr=False, eq=False)
    # Dotted key -> source label; a key not listed has its default.
    _sources: Mapping[str, str] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def experiment_dir(self) -> Path:
        """``<workdir>/<experiment>``: the folder that holds this experiment's run directories."""
        return Path(self.run.workdir) / self.run.experiment

    @property
    def node_dir(self) -> Path:
        """A swarm node's automatic run directory: ``<workdir>/<experiment>/<node_id>`` (stable, so
        ``--resume`` finds it). Offline runs get a timestamped one: see `sapo_core.rundir`."""
        return self.experiment_dir / self.run.node_id

    def extras(self, section: str, name: str | None = None) -> Any:
        """The raw extras of ``section`` as an `Extras` (a dict): for ``inference``, ``train``,
        ``checkpoint``, ``swarm``, ``eval`` its non-core keys; for ``tasks``/``rewards`` with ``name`` the
        keys of ``tasks.<name>``, without ``name`` a dict name -> `Extras` of every subsection
        set. Empty for ``run``, ``model``, ``advantages``. Values are copies.
        """
        if section not in SECTIONS:
            raise ValueError(f"Unknown config section {section!r}. Choose one of: {', '.join(SECTIONS)}")
        if section in _NAMED_EXTRAS:
            if name is None:
                names = dict.fromkeys(parts[1] for parts in self._extras if parts[0] == section)
                return {n: self.extras(section, n) for n in names}
            prefix: tuple[str, ...] = (section, name)
        elif name is not None:
            raise ValueError(f"Section {section!r} has no named subsections")
        else:
            prefix = (section,)
        out = Extras()
        for parts, value in self._extras.items():
            if parts[: len(prefix)] == prefix:
                key = parts[len(prefix)]
                out[key] = copy.deepcopy(value)
                out.sources[key] = self._sources.get(".".join(parts), "default")
                if parts in self._texts:
                    out.texts[key] = self._texts[parts]
        return out

    def settings(self, cls: type | None, section: str, name: str | None = None) -> Any:
        """``structure(cls, self.extras(section, name), where=...)``: a backend's settings from its extras."""
        return structure(cls, self.extras(section, name), where=section if name is None else f"{section}.{name}")

    def source(self, key: str) -> str:
        """Where the dotted ``key`` got its value: "default", "file <path>", "env NAME", a flag's label or "--set".

        A key inside a table value (``rewards.weights.format``) reports the table's source.
        """
        if key in self._sources:
            return self._sources[key]
        if key in _CORE_KEYS:
            return "default"
        for known in self._sources:
            if key.startswith(known + "."):
                return self._sources[known]
        for parts in self._extras:
            if key.startswith(".".join(parts) + "."):
                return self._sources.get(".".join(parts), "default")
        if any(key.startswith(k + ".") for k in _CORE_KEYS):
            return "default"
        raise KeyError(f"No config key {key!r}")

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """Nested plain data (lists, dicts, str, numbers, bools), extras included, e.g.
        ``{"inference": {"backend": ..., "base_url": ...}, "tasks": {"names": [...], "arithmetic": {...}}}``.

        With ``redact`` (the default) every non-empty secret reads ``"***"``; ``redact=False``
        gives the real values (for the backends; never log it).
        """
        out: dict[str, Any] = {}
        for section, cls in SECTIONS.items():
            settings = getattr(self, section)
            data: dict[str, Any] = {}
            for field in attrs.fields(cls):
                value = _plain(getattr(settings, field.name))
                data[field.name] = _hide(value) if redact and field.metadata.get(SECRET) else value
            out[section] = data
        for parts, value in self._extras.items():
            table = out
            for part in parts[:-1]:
                table = table.setdefault(part, {})
            table[parts[-1]] = self._extra_value(parts, value, redact)
        return out

    def items(self, redact: bool = True) -> list[tuple[str, Any, str]]:
        """Every key as ``(dotted_key, value, source)``: core keys in schema order, each section's
        extras after its core keys (sorted). Values are plain data, secrets redacted as in `to_dict`.
        """
        rows: list[tuple[str, Any, str]] = []
        for section, cls in SECTIONS.items():
            settings = getattr(self, section)
            for field in attrs.fields(cls):
                key = f"{section}.{field.name}"
                value = _plain(getattr(settings, field.name))
                rows.append((key, _hide(value) if redact and field.metadata.get(SECRET) else value, self.source(key)))
            for parts in sorted(p for p in self._extras if p[0] == section):
                key = ".".join(parts)
                rows.append((key, self._extra_value(parts, self._extras[parts], redact), self.source(key)))
        return rows

    def _extra_value(self, parts: tuple[str, ...], value: Any, redact: bool) -> Any:
        value = _plain(value)
        if not redact:
            return value
        return _hide(value) if _secret_word(parts[-1]) else _redact_value(value)
