"""Named backends of every kind, with the distribution that registered each name."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import attrs

from sapo_core.config import SECTIONS, is_settings_class, settings_keys
from sapo_core.errors import PluginError
from sapo_core.first_party import provider_of
from sapo_core.names import BACKEND_NAME_RULE, is_backend_name
from sapo_core.tasks.presets import PLUGIN_PREFIXES

__all__ = ["Factory", "KINDS", "NameClashError", "Register", "Registration", "Registry", "SHARED_SECTIONS"]

#: Every kind of backend, with the words used for it in messages.
KINDS: Mapping[str, str] = {
    "task": "task",
    "inference": "inference backend",
    "reward": "reward function",
    "transport": "transport",
    "checkpointer": "checkpoint backend",
    "learner": "learner",
}

#: The config sections a kind's settings share with core keys (``inference.*`` beyond the
#: built-in keys, ...); a settings field named like one of those keys would never be set. Tasks and
#: rewards have a table of their own (``tasks.<name>.*``), so nothing can shadow theirs.
SHARED_SECTIONS: Mapping[str, tuple[str, ...]] = {
    "inference": ("inference", "eval"),  # eval.inference=NAME takes its settings from eval.*
    "transport": ("swarm",),
    "checkpointer": ("checkpoint",),
    "learner": ("train",),
}


Factory = Callable[[Any, Any], Any]


class NameClashError(PluginError):
    """Two plugins registered the same name for one kind: the user must choose."""

    def __init__(self, message: str, registrations: tuple[Registration, ...] = ()) -> None:
        super().__init__(message)
        self.registrations = registrations  # the one registered first, then the one refused


class Register(Protocol):
    """The ``register`` callable a registry hook receives."""

    def __call__(self, name: str, factory: Factory, *, settings: type | None = None, description: str = "") -> None: ...


@attrs.frozen
class Registration:
    """One backend name: who registered it, how to build it, and its settings class."""

    kind: str
    name: str
    factory: Factory = attrs.field(eq=False)
    settings: type | None = attrs.field(default=None, eq=False)
    description: str = ""
    plugin: str = ""
    distribution: str = ""


class Registry:
    """All registrations, by kind then name. Clashes and unknown names are `PluginError`s."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}

    def add(self, *registrations: Registration, clashes: list[NameClashError] | None = None) -> None:
        """Add registrations all or none: if one is refused, none of them is added.

        With a ``clashes`` list, a name another plugin registered first is not a refusal: it is
        left out and its `NameClashError` appended, so that the other names still count (for
        `sapo plugins`, which must show every plugin and the clash)."""
        staged = Registry()
        staged._by_kind = {kind: dict(names) for kind, names in self._by_kind.items()}
        found: list[NameClashError] = []
        for registration in registrations:
            try:
                staged._add_one(registration)
            except NameClashError as exc:
                if clashes is None:
                    raise
                found.append(exc)
        self._by_kind = staged._by_kind
        if clashes is not None:
            clashes.extend(found)

    def _add_one(self, registration: Registration) -> None:
        kind, name = registration.kind, registration.name
        if kind not in KINDS:
            raise PluginError(f"Unknown backend kind {kind!r}. Choose one of: {', '.join(KINDS)}")
        if not is_backend_name(name):
            raise PluginError(
                f"Plugin {registration.plugin!r} registered the {KINDS[kind]} name {name!r}: names are "
                f"{BACKEND_NAME_RULE}"
            )
        if not callable(registration.factory):
            raise PluginError(
                f"Plugin {registration.plugin!r} registered {KINDS[kind]} {name!r} with a non-callable factory"
            )
        _check_settings(registration)
        existing = self._by_kind[kind].get(name)
        if existing is not None:
            raise NameClashError(
                f"Two plugins register the {KINDS[kind]} {name!r}: {_origin(existing)} and {_origin(registration)}. "
                "Uninstall or disable one of them (SAPO_DISABLE_PLUGINS=<name>).",
                (existing, registration),
            )
        self._by_kind[kind][name] = registration

    def get(self, kind: str, name: str) -> Registration:
        try:
            return self._by_kind[kind][name]
        except KeyError:
            raise PluginError(self._unknown(kind, name)) from None

    def _unknown(self, kind: str, name: str) -> str:
        known = sorted(self._by_kind.get(kind, {}))
        what = f"Unknown {KINDS.get(kind, kind)} {name!r}."
        for prefix, distribution in PLUGIN_PREFIXES.items():
            if kind == "task" and name.startswith(prefix) and not any(k.startswith(prefix) for k in known):
                return f"{what} {prefix} tasks come from a plugin: pip install {distribution}"
        provider = provider_of(kind, name)
        if provider is not None:  # sapo's own, not installed (or its plugin failed to load: see the log)
            return f"{what} It comes with {provider}: pip install {provider}. Installed: {', '.join(known) or 'none'}"
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        if len(known) > 20:  # reasoning-gym alone brings ~100 tasks: too many for one message
            lister = "sapo tasks" if kind == "task" else "sapo plugins"
            return f"{what}{hint} Choose one of the {len(known)} that `{lister}` lists"
        return f"{what}{hint} Choose one of: {', '.join(known) or '(none installed)'}"

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def __iter__(self) -> Iterator[Registration]:
        for kind in KINDS:
            yield from (self._by_kind[kind][name] for name in sorted(self._by_kind[kind]))

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._by_kind.get(kind, {})


def _check_settings(registration: Registration) -> None:
    """Refuse, at registration, a settings class that would fail or be silently ignored at run time."""
    settings, what = registration.settings, f"the {KINDS[registration.kind]} {registration.name!r}"
    if settings is None:
        return
    if not is_settings_class(settings):
        raise PluginError(
            f"Plugin {registration.plugin!r} registered {what} with settings={settings!r}: pass a class "
            "decorated with @attrs.frozen (or @dataclasses.dataclass), not an instance or another kind of class."
        )
    keys = settings_keys(settings)
    for section in SHARED_SECTIONS.get(registration.kind, ()):
        for key in sorted(set(keys) & set(settings_keys(SECTIONS[section]))):
            # The core keeps its own keys out of the backend's extras, so the field keeps its default.
            raise PluginError(
                f"Plugin {registration.plugin!r} registered {what} with the settings class "
                f"{settings.__module__}.{settings.__qualname__}, whose field {key!r} is named like sapo's own key "
                f"{section}.{key}: the config would never set it. Rename the field; the core value is "
                f"context.config.{section}.{key}."
            )


def _origin(registration: Registration) -> str:
    return f"{registration.distribution or '?'} (plugin {registration.plugin!r})"
