"""Named backends of every kind, with the distribution that registered each name."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import attrs

from sapo_core.errors import PluginError

#: Every kind of backend, with the words used for it in messages.
KINDS: Mapping[str, str] = {
    "task": "task",
    "inference": "inference backend",
    "reward": "reward function",
    "transport": "transport",
    "checkpointer": "checkpoint backend",
    "learner": "learner",
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

Factory = Callable[[Any, Any], Any]


class NameClashError(PluginError):
    """Two plugins registered the same name for one kind: the user must choose."""


class Register(Protocol):
    """The ``register`` callable a registry hook receives."""

    def __call__(
        self, name: str, factory: Factory, *, settings: type | None = None, description: str = ""
    ) -> None: ...


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

    def add(self, *registrations: Registration) -> None:
        """Add registrations all or none: if one is refused, none of them is added."""
        staged = Registry()
        staged._by_kind = {kind: dict(names) for kind, names in self._by_kind.items()}
        for registration in registrations:
            staged._add_one(registration)
        self._by_kind = staged._by_kind

    def _add_one(self, registration: Registration) -> None:
        kind, name = registration.kind, registration.name
        if kind not in KINDS:
            raise PluginError(f"Unknown backend kind {kind!r}. Choose one of: {', '.join(KINDS)}")
        if not _NAME.match(name):
            raise PluginError(
                f"Plugin {registration.plugin!r} registered the {KINDS[kind]} name {name!r}: names are "
                "1-64 lowercase letters, digits, '-', '_' or '.'"
            )
        if not callable(registration.factory):
            raise PluginError(f"Plugin {registration.plugin!r} registered {KINDS[kind]} {name!r} with a non-callable factory")
        existing = self._by_kind[kind].get(name)
        if existing is not None:
            raise NameClashError(
                f"Two plugins register the {KINDS[kind]} {name!r}: {_origin(existing)} and {_origin(registration)}. "
                "Uninstall or disable one of them (SAPO_DISABLE_PLUGINS=<name>)."
            )
        self._by_kind[kind][name] = registration

    def get(self, kind: str, name: str) -> Registration:
        try:
            return self._by_kind[kind][name]
        except KeyError:
            choices = ", ".join(sorted(self._by_kind.get(kind, {}))) or "(none installed)"
            raise PluginError(f"Unknown {KINDS.get(kind, kind)} {name!r}. Choose one of: {choices}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def __iter__(self) -> Iterator[Registration]:
        for kind in KINDS:
            yield from (self._by_kind[kind][name] for name in sorted(self._by_kind[kind]))

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._by_kind.get(kind, {})


def _origin(registration: Registration) -> str:
    return f"{registration.distribution or '?'} (plugin {registration.plugin!r})"
