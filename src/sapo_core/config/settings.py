"""Settings classes and `structure`, which builds one from raw values: the core sections and every
backend's settings alike (`backend_settings`).

A settings class is a frozen attrs class or a stdlib dataclass; its config keys are the ``__init__``
names of its fields. `structure` converts each value by its field's annotation (`convert`), names
the key, its source and the closest valid key in errors, and keeps secrets out of them.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from sapo_core.config.convert import _coerce, _Mismatch
from sapo_core.config.schema import _CORE, _CORE_KEYS
from sapo_core.config.secrets import SECRET, _bad_value, _from, _scrub, _secret_word
from sapo_core.config.suggest import _unknown
from sapo_core.errors import ConfigError

if TYPE_CHECKING:
    from sapo_core.registry import Registration


@attrs.frozen
class _DataclassField:
    """A dataclass field seen through the attributes of an attrs field that `structure` reads."""

    name: str
    type: Any
    default: Any  # attrs.NOTHING when the field is required
    metadata: Mapping[str, Any]
    init: bool
    alias: str | None = None
    converter: Any = None
    validator: Any = None


def is_settings_class(cls: object) -> bool:
    """Whether ``cls`` can be a backend's settings class: an attrs class or a stdlib dataclass."""
    return isinstance(cls, type) and (attrs.has(cls) or dataclasses.is_dataclass(cls))


def settings_fields(cls: type) -> list[Any]:
    """The fields of a settings class: attrs' own, or a dataclass's as the same attributes (name,
    alias, type, default, metadata, init, converter, validator), so both are built alike."""
    if attrs.has(cls):
        return list(attrs.fields(cls))
    if not is_settings_class(cls):
        raise TypeError(f"a settings class must be an attrs class or a dataclass, not {cls!r}")
    return [
        _DataclassField(
            name=f.name,
            type=f.type,
            # dataclasses.MISSING for both: required; attrs spells that NOTHING.
            default=attrs.NOTHING
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            else f.default,
            metadata=f.metadata,
            init=f.init,
        )
        for f in dataclasses.fields(cls)
    ]


def settings_keys(cls: type) -> list[str]:
    """The config keys of a settings class: the ``__init__`` names of its fields."""
    return [f.alias or f.name for f in settings_fields(cls) if f.init]


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a settings class (string annotations evaluated), Any where unresolvable."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001  one unresolvable annotation (e.g. a class local to a function): go one by one
        hints = {}
    module = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
    resolved: dict[str, Any] = {}
    for field in settings_fields(cls):
        tp = hints.get(field.name, field.type)
        if isinstance(tp, str):
            try:
                tp = eval(tp, dict(module), dict(vars(typing)))  # what typing.get_type_hints does per name
            except Exception:  # noqa: BLE001  unresolvable: leave the value unconverted
                tp = Any
        resolved[field.name] = Any if tp is None else tp
    return resolved


# attrs >= 24.1 may wrap a converter in attrs.Converter (takes self/field): only the constructor can run it.
_ATTRS_CONVERTER: Any = getattr(attrs, "Converter", ())


class Extras(dict):  # type: ignore[type-arg]
    """The raw extras of one section (or one task / reward): a plain ``dict`` of key -> value
    that also carries, per key, its ``sources`` and, for values typed as text (environment,
    string flags, ``--set``), the ``texts`` as typed. `structure` uses both when given an
    `Extras`: errors name the source, and a string field gets exactly the text typed
    (``--set inference.revision=1.10`` stays ``"1.10"``, not the float 1.1).
    """

    __slots__ = ("sources", "texts")

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        sources: Mapping[str, str] | None = None,
        texts: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(values or {})
        self.sources: dict[str, str] = dict(sources or {})
        self.texts: dict[str, str] = dict(texts or {})


def structure(
    cls: type | None, values: Mapping[str, object], *, where: str, sources: Mapping[str, str] | None = None
) -> Any:
    """Build the settings class ``cls`` (frozen attrs, or a dataclass) from raw ``values`` (key -> value).

    Values are converted by the fields' type annotations (`_coerce`: strings are parsed by type;
    ``str | None``, int, float, bool, list/tuple, dict, Literal, Path, Enum supported). ``where``
    is the dotted prefix that names keys in errors (``"inference"``, ``"tasks.arithmetic"``);
    ``sources`` maps the keys of ``values`` to their source labels. An `Extras` brings its own
    sources and texts. Keys are the ``__init__`` names of the fields (attrs' alias).

    Raises ConfigError for: an unknown key (with the closest valid key, this class's or a core
    key), a value of the wrong type, a missing required field, and an attrs validator's or
    converter's error (naming the key when the exception carries the attribute or quotes its
    name). Secret values never appear in the message. ``cls`` None means "takes no settings":
    returns None, and any key is an error.
    """
    texts: Mapping[str, str] = {}
    if isinstance(values, Extras):
        texts = values.texts
        sources = values.sources if sources is None else sources
    sources = sources or {}
    if cls is None:
        if values:
            keys = ", ".join(f"'{_full(where, key)}'{_from(sources.get(key))}" for key in values)
            raise ConfigError(f"Unknown key{'s' if len(values) > 1 else ''} {keys}: '{where}' takes no settings here.")
        return None
    build = _Structuring(cls, where, sources)
    build.check_keys(values)
    hints = _field_types(cls)
    kwargs = {key: build.convert(key, raw, texts.get(key, raw), hints) for key, raw in values.items()}
    return build.construct(kwargs)


def backend_settings(registration: Registration, values: Mapping[str, Any], where: str) -> Any:
    """The typed settings of the backend ``registration`` from its raw config ``values`` at ``where``,
    e.g. ``backend_settings(registration, config.extras("tasks", name), f"tasks.{name}")``.

    None when the backend takes no settings; then any value set for it is a ConfigError. The one
    place where a node, ``sapo config``, the CLI and the tests turn a backend's config into settings.
    """
    if registration.settings is not None:
        return structure(registration.settings, values, where=where)
    if values:
        keys = ", ".join(f"{where}.{key}" for key in sorted(values))
        raise ConfigError(f"{registration.kind} {registration.name!r} takes no settings, but the config sets {keys}")
    return None


def _full(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _message(exc: BaseException) -> str:
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)


@attrs.define
class _Structuring:
    """One `structure` call: the class's fields by key, and the secret values seen so far, which no
    later error message may show either."""

    cls: type
    where: str
    sources: Mapping[str, str]
    fields: dict[str, Any] = attrs.field(init=False)
    secrets: list[Any] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self.fields = {(f.alias or f.name): f for f in settings_fields(self.cls) if f.init}

    def secret(self, key: str) -> bool:
        return bool(self.fields[key].metadata.get(SECRET)) or _secret_word(key)

    def check_keys(self, values: Mapping[str, object]) -> None:
        """Raise for the first unknown key, then for every missing required one."""
        section = self.where.split(".", 1)[0]
        for key in values:
            if key not in self.fields:
                # Core keys are candidates too: a typo of a core key lands in the extras.
                local = [_full(self.where, k) for k in self.fields]
                local += [f"{section}.{k}" for k in _CORE.get(section, {}) if "." not in self.where]
                raise _unknown(_full(self.where, key), self.sources.get(key), [*local, *_CORE_KEYS])
        missing = [
            _full(self.where, k) for k, f in self.fields.items() if f.default is attrs.NOTHING and k not in values
        ]
        if missing:
            raise ConfigError(
                f"Missing required key{'s' if len(missing) > 1 else ''}: {', '.join(missing)}. "
                "Set it in the config file or with --set KEY=VALUE."
            )

    def convert(self, key: str, raw: Any, value: Any, hints: Mapping[str, Any]) -> Any:
        """``value`` (the text as typed, else ``raw``) converted to the type of the field at ``key``."""
        field, name, source, secret = self.fields[key], _full(self.where, key), self.sources.get(key), self.secret(key)
        if secret:
            self.secrets.extend((value, raw))
        try:
            value = _coerce(value, hints[field.name])
        except _Mismatch as exc:
            raise _bad_value(name, raw, source, f"expected {exc.args[0]}", secret=secret) from None
        # Run this field's converter and validator now, so their errors name the key even when
        # the exception does not carry the attribute (attrs' own ge/le validators don't).
        checked = value
        try:
            if field.converter is not None and not isinstance(field.converter, _ATTRS_CONVERTER):
                checked = field.converter(checked)
            if field.validator is not None:
                field.validator(None, field, checked)
        except (ValueError, TypeError) as exc:
            raise _bad_value(name, checked, source, _scrub(_message(exc), self.secrets), secret=secret) from None
        except Exception:  # noqa: BLE001, S110  a validator that needs the instance: the constructor runs it
            pass
        return value

    def construct(self, kwargs: dict[str, Any]) -> Any:
        try:
            return self.cls(**kwargs)
        except (ValueError, TypeError) as exc:
            culprit = self._culprit(exc)
            message = _scrub(_message(exc), self.secrets)
            if culprit is not None:
                raise _bad_value(
                    _full(self.where, culprit),
                    kwargs.get(culprit),
                    self.sources.get(culprit),
                    message,
                    secret=self.secret(culprit),
                ) from None
            raise ConfigError(f"{self.where}: {message}") from None

    def _culprit(self, exc: BaseException) -> str | None:
        """The key a validator's exception is about: an attrs Attribute in its args, else a quoted name."""
        for arg in exc.args:
            if isinstance(arg, attrs.Attribute):
                return arg.alias or arg.name
        message = _message(exc)
        return next((key for key in self.fields if f"'{key}'" in message), None)
