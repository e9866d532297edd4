"""Layering and provenance: `load_config` resolves the layers into a `Config`, and every key
remembers which layer set it.

Precedence, lowest first: defaults < TOML config file < environment < command-line flags <
``--set KEY=VALUE`` (within a layer, the last value wins). A key's source is ``"default"``,
``"file <path>"``, ``"env NAME"``, a flag's label or ``"--set"``, so errors and ``sapo config`` can say so.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import os
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from sapo_core import redaction
from sapo_core.config.convert import _coerce, _Mismatch, _parse_toml_value
from sapo_core.config.resolved import Config
from sapo_core.config.schema import _CORE, _CORE_KEYS, _FLAT_EXTRAS, _NAMED_EXTRAS, RL_SWARM_ENV, SECTIONS
from sapo_core.config.secrets import _bad_value, _from
from sapo_core.config.settings import Extras, _field_types, structure
from sapo_core.config.suggest import _TYPO_CUTOFF, _env_name, _unknown
from sapo_core.errors import ConfigError

_CORE_TYPES = {section: _field_types(cls) for section, cls in SECTIONS.items()}


@attrs.frozen
class _Entry:
    value: Any  # as given: TOML-typed, a typed flag, or a string
    source: str
    text: str | None = None  # the text as typed (env, string flag, --set), which a str field takes verbatim


class _Resolver:
    """Applies the layers in precedence order to the flat entries (key parts -> `_Entry`)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, ...], _Entry] = {}
        for section, cls in SECTIONS.items():
            defaults = cls()
            for name in _CORE[section]:
                self.entries[(section, name)] = _Entry(getattr(defaults, name), "default")

    def set(self, parts: tuple[str, ...], value: Any, source: str, text: str | None = None) -> None:
        """Place one value at the dotted key ``parts``: a core key, an extra, or (for a table at a
        section or subsection) each of its entries. A key below a value (``rewards.weights.format``,
        ``inference.headers.x``) sets one entry inside that table."""
        key = ".".join(parts)
        if not parts or any(not p or not p.strip() for p in parts):
            raise ConfigError(f"Malformed key {key!r}{_from(source)}: use dotted names like inference.temperature")
        section = parts[0]
        if section not in SECTIONS:
            if len(parts) == 1:
                what = "section" if isinstance(value, Mapping) else "key"
                raise _unknown(key, source, [*SECTIONS] if what == "section" else [*SECTIONS, *_CORE_KEYS], what=what)
            raise _unknown(key, source, _CORE_KEYS)
        if len(parts) == 1:
            if isinstance(value, Mapping):  # a whole [section] table
                for name, item in value.items():
                    self.set((section, str(name)), item, source)
                return
            example = next(k for k in _CORE_KEYS if k.startswith(section + "."))
            raise ConfigError(
                f"'{section}' is a section, not a key{_from(source)}: set {section}.<key>, e.g. {example}"
            )
        if parts[1] in _CORE[section]:
            self._set_core(parts, value, source, text)
        elif section in _FLAT_EXTRAS:
            self._set_flat_extra(parts, value, source, text)
        elif section in _NAMED_EXTRAS:
            self._set_named_extra(parts, value, source, text)
        else:
            raise _unknown(key, source, [f"{section}.{k}" for k in _CORE[section]] + list(_CORE_KEYS))

    def _set_core(self, parts: tuple[str, ...], value: Any, source: str, text: str | None) -> None:
        section, name = parts[:2]
        if len(parts) == 2:
            self.entries[parts[:2]] = _Entry(value, source, text)
        elif typing.get_origin(_CORE_TYPES[section][name]) is dict:
            self._set_inside(parts[:2], parts[2:], value, source, core_type=_CORE_TYPES[section][name])
        else:
            raise ConfigError(f"'{section}.{name}' is a single value{_from(source)}: it has no key '{'.'.join(parts)}'")

    def _set_flat_extra(self, parts: tuple[str, ...], value: Any, source: str, text: str | None) -> None:
        # A key this close to a core key of its section is a typo, not a backend's setting:
        # say so now rather than when (or if) the backend's settings are built.
        section, name = parts[:2]
        near = difflib.get_close_matches(name, list(_CORE[section]), n=1, cutoff=_TYPO_CUTOFF)
        if near:
            raise _unknown(".".join(parts), source, [f"{section}.{near[0]}"])
        if len(parts) == 2:
            self.entries[parts] = _Entry(value, source, text)
        else:
            self._set_inside(parts[:2], parts[2:], value, source)

    def _set_named_extra(self, parts: tuple[str, ...], value: Any, source: str, text: str | None) -> None:
        # tasks / rewards: <section>.<name> is a subsection, its keys are the extras of <name>.
        section, name = parts[:2]
        if len(parts) == 2:
            if isinstance(value, Mapping):
                for sub, item in value.items():
                    self.set((section, name, str(sub)), item, source)
                return
            one = "task" if section == "tasks" else "reward function"
            raise _unknown(
                ".".join(parts),
                source,
                [f"{section}.{k}" for k in _CORE[section]] + list(_CORE_KEYS),
                hint=f"(The settings of one {one} are keys {section}.<name>.<key>.)",
            )
        if len(parts) == 3:
            self.entries[parts] = _Entry(value, source, text)
        else:
            self._set_inside(parts[:3], parts[3:], value, source)

    def _set_inside(
        self, base: tuple[str, ...], path: tuple[str, ...], value: Any, source: str, core_type: Any = None
    ) -> None:
        """Set ``base.path`` = value inside the table resolved so far at ``base`` (created if absent)."""
        entry = self.entries.get(base)
        current: Any = {} if entry is None else entry.value
        if entry is not None and core_type is not None:
            try:
                current = _coerce(entry.text if entry.text is not None else entry.value, core_type)
            except _Mismatch as exc:
                raise _bad_value(
                    ".".join(base), entry.value, entry.source, f"expected {exc.args[0]}", secret=False
                ) from None
        elif isinstance(current, str):
            try:
                current = _parse_toml_value(current) if current.strip() else {}
            except ValueError:
                pass
        if not isinstance(current, Mapping):
            raise ConfigError(
                f"Cannot set '{'.'.join(base + path)}'{_from(source)}: '{'.'.join(base)}' is not a table "
                f"(a {type(current).__name__}, set by {entry.source if entry else '?'})"
            )
        table = copy.deepcopy(dict(current))
        node = table
        for part in path[:-1]:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, Mapping) else {}
            node = child
        node[path[-1]] = value
        self.entries[base] = _Entry(table, source)

    def build(self) -> Config:
        sections: dict[str, Any] = {}
        for section, cls in SECTIONS.items():
            values = Extras()  # the same carrier of sources and texts that backends' extras use
            for name in _CORE[section]:
                entry = self.entries[(section, name)]
                values[name] = entry.value
                values.sources[name] = entry.source
                if entry.text is not None:
                    values.texts[name] = entry.text
            sections[section] = structure(cls, values, where=section)
        extras = {parts: e.value for parts, e in self.entries.items() if parts[1] not in _CORE[parts[0]]}
        stray = next((parts for parts in extras if parts[0] == "eval"), None)
        if stray is not None and not sections["eval"].inference:
            raise _unknown(
                ".".join(stray),
                self.entries[stray].source,
                [f"eval.{k}" for k in _CORE["eval"]],
                hint="(eval's other keys are the settings of its own backend: set eval.inference=NAME.)",
            )
        texts = {parts: e.text for parts, e in self.entries.items() if parts in extras and e.text is not None}
        sources = {".".join(parts): e.source for parts, e in self.entries.items() if e.source != "default"}
        return Config(**sections, extras=extras, texts=texts, sources=sources)


def _read_file(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``; ConfigError naming the file (and tomllib's line) when unreadable."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} not found. Check the path given with --config or SAPO_CONFIG.") from None
    except IsADirectoryError:
        raise ConfigError(f"Config file {path} is a folder; give the path of a .toml file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not UTF-8 text.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror or exc}") from None


def _from_env(env: Mapping[str, str]) -> list[tuple[tuple[str, ...], str, str]]:
    """``(key parts, text, source)`` for each config variable, RL-Swarm's names first so SAPO_* ones win."""
    found: list[tuple[tuple[str, ...], str, str]] = []
    for variable, key in RL_SWARM_ENV.items():
        if env.get(variable):  # generic names: an empty one is treated as unset
            found.append((tuple(key.split(".")), env[variable], f"env {variable}"))
    for variable in sorted(env):
        if not variable.startswith("SAPO_"):
            continue
        head, _, tail = variable[len("SAPO_") :].partition("_")
        section = head.lower()
        if section not in SECTIONS:  # SAPO_CONFIG, SAPO_STRICT_PLUGINS, ...: not config keys
            continue
        key = tail.lower()
        source = f"env {variable}"
        if not key:
            example = _env_name(next(k for k in _CORE_KEYS if k.startswith(section + ".")))
            raise ConfigError(f"Environment variable {variable} names no key: use SAPO_{head}_<KEY>, e.g. {example}")
        parts: tuple[str, ...] = (section, key)
        if section in _NAMED_EXTRAS and key not in _CORE[section]:
            near = difflib.get_close_matches(key, list(_CORE[section]), n=1, cutoff=0.8)
            if near:  # SAPO_TASKS_PROBLEMS_PER_ROUN is a typo, not task "problems"'s key "per_roun"
                raise _unknown(f"{section}.{key}", source, [f"{section}.{near[0]}"])
            # SAPO_TASKS_<NAME>__<KEY>, or SAPO_TASKS_<NAME>_<KEY> for a name without '_'.
            name, _, sub = key.partition("__") if "__" in key else key.partition("_")
            parts = (section, name, sub) if sub else (section, key)
        found.append((parts, env[variable], source))
    return found


def _parse_set(item: str) -> tuple[tuple[str, ...], Any, str]:
    """``KEY=VALUE`` -> (key parts, value, text): the value as TOML when it is one, else the plain string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        # Echoed only when it names a section: a value pasted without its key may be an API key.
        names_a_key = re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", item.strip() or "-") is not None and (
            item.strip().partition(".")[0] in SECTIONS
        )
        got = f", got {item.strip()!r}" if names_a_key else ", got an argument without '='"
        raise ConfigError(f"--set expects KEY=VALUE (e.g. --set inference.temperature=0.7){got}")
    text = raw.strip()
    try:
        value = _parse_toml_value(text)
    except ValueError:
        return tuple(key.split(".")), text, text
    if isinstance(value, (datetime.date, datetime.time)):  # 2024-01-01: a name, not a date
        return tuple(key.split(".")), text, text
    if isinstance(value, str):
        return tuple(key.split(".")), value, value  # '"a b"': the quotes were TOML's
    return tuple(key.split(".")), value, text


def load_config(
    *,
    file: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, tuple[Any, str]] | None = None,
    sets: Sequence[str] = (),
) -> Config:
    """Resolve the configuration: defaults < ``file`` < ``env`` < ``flags`` < ``sets``.

    * ``file``: a TOML file; when None, ``env["SAPO_CONFIG"]`` if set, else no file. Relative
      paths in it (``run.workdir``) stay relative to the working directory.
    * ``env``: the environment (None: ``os.environ``). ``SAPO_<SECTION>_<KEY>`` sets
      ``<section>.<key>`` (key lowercased; for tasks/rewards subsections
      ``SAPO_TASKS_<NAME>__<KEY>``); variables whose first part is not a section are ignored;
      RL-Swarm's GDRIVE_PATH, EXPERIMENT_NAME, NODE_ROLE, NODE_ID, MODEL_NAME are read too
      (empty ones ignored; a SAPO_* variable for the same key wins).
    * ``flags``: dotted key -> ``(value, source_label)``, e.g.
      ``{"inference.backend": ("openai", "--inference")}``; the value typed or a string
      (parsed by the field's type); a None value is skipped (a flag not given).
    * ``sets``: ``"KEY=VALUE"`` strings, applied in order; VALUE is a TOML value when it
      parses as one (``0.7``, ``true``, ``["a","b"]``, ``{correctness=1.0}``), else a plain string.

    Raises ConfigError naming the key, its source and the closest valid key, or the value's problem.
    """
    env = os.environ if env is None else env
    resolver = _Resolver()
    path = file if file is not None else (env.get("SAPO_CONFIG") or None)
    if path is not None:
        path = Path(path)
        source = f"file {path}"
        for name, value in _read_file(path).items():
            resolver.set((name,), value, source)
    for parts, text, source in _from_env(env):
        resolver.set(parts, text, source, text)
    for key, given in (flags or {}).items():
        value, label = given
        if value is not None:
            resolver.set(tuple(key.split(".")), value, label, value if isinstance(value, str) else None)
    for item in sets:
        parts, value, text = _parse_set(item)
        resolver.set(parts, value, "--set", text)
    config = resolver.build()
    redaction.register(*redaction.secret_strings(config.to_dict(redact=True), config.to_dict(redact=False)))
    return config
