"""Find, load and query plugins: entry points of the group ``sapo``, then the built-ins.

A plugin that fails (import error, misspelt hook, a hook that raises) is reported and skipped,
never fatal, unless ``SAPO_STRICT_PLUGINS=1``; a hook function without ``@sapo_core.hookimpl``
is warned about. A name two plugins register is an error for every command that needs the
registry, except `sapo plugins`, which shows it (`problems`). Environment:

* ``SAPO_LOAD_PLUGINS=a,b``: load only these entry points or distributions (empty: none).
* ``SAPO_DISABLE_PLUGINS=a,b``: skip these entry points or distributions.
* ``SAPO_STRICT_PLUGINS=1``: any plugin failure raises `PluginError`.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import attrs
import pluggy

import sapo_core
from sapo_core import hookspecs
from sapo_core.errors import PluginError
from sapo_core.registry import KINDS, Factory, NameClashError, Registration, Registry

__all__ = [
    "BUILTIN_PLUGINS",
    "GROUP",
    "PluginInfo",
    "Plugins",
    "REGISTRY_HOOKS",
    "describe",
    "get_plugins",
    "reset_plugins",
]

log = logging.getLogger("sapo.plugins")

GROUP = "sapo"

#: Built-in plugin modules, registered after the entry points (the llm / datasette pattern).
BUILTIN_PLUGINS = (
    "sapo_core.builtin.tasks",
    "sapo_core.builtin.rewards",
    "sapo_core.builtin.transports",
    "sapo_core.builtin.checkpointers",
)

#: Registry hook name -> backend kind it registers.
REGISTRY_HOOKS = {
    "register_tasks": "task",
    "register_inference": "inference",
    "register_rewards": "reward",
    "register_transports": "transport",
    "register_checkpointers": "checkpointer",
    "register_learners": "learner",
}


@attrs.define
class PluginInfo:
    """A plugin as `sapo plugins` shows it."""

    name: str
    distribution: str
    version: str
    module: str
    builtin: bool = False
    hooks: list[str] = attrs.field(factory=list)
    error: str | None = None  # why the plugin was not loaded at all
    hook_errors: dict[str, str] = attrs.field(factory=dict)  # hook name -> why its names were dropped
    warnings: list[str] = attrs.field(factory=list)  # loaded, but something is likely wrong (an undecorated hook)


@attrs.frozen
class _Collected:
    """What the registry hooks gave: the registry, every name offered, and the clashes among them."""

    registry: Registry
    offered: list[Registration]  # every registration of a hook that did not fail, clashing ones included
    clashes: list[NameClashError]


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _strict() -> bool:
    return _env_flag("SAPO_STRICT_PLUGINS")


class Plugins:
    """The plugin manager of one process: pluggy underneath, the registry on top."""

    def __init__(self, *, builtins: Iterable[str] = BUILTIN_PLUGINS) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        if _env_flag("SAPO_TRACE_PLUGINS"):  # every hook call, its arguments and results, on stderr
            self.pm.trace.root.setwriter(lambda text: sys.stderr.write(f"[sapo plugins] {text}"))
            self.pm.enable_tracing()
        self.infos: dict[str, PluginInfo] = {}
        self._builtins = tuple(builtins)
        self._collected: _Collected | None = None
        self._loaded = False

    # ------------------------------------------------------------------------- loading

    def load(self) -> None:
        """Load entry points, then the built-ins. Idempotent."""
        if self._loaded:
            return
        self._loaded = True
        only, disabled = _env_list("SAPO_LOAD_PLUGINS"), _env_list("SAPO_DISABLE_PLUGINS") or set()
        for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            wanted = {ep.name, dist}
            if (only is not None and not wanted & only) or wanted & disabled:
                continue
            self._load_entry_point(ep, dist, version)
        for module_name in self._builtins:
            name = module_name.rsplit(".", 1)[-1]
            if {name, module_name} & disabled:
                continue
            self.register(importlib.import_module(module_name), name=f"sapo-core:{name}", builtin=True)

    def _load_entry_point(self, ep: EntryPoint, dist: str, version: str) -> None:
        info = PluginInfo(name=ep.name, distribution=dist, version=version, module=ep.value)
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not break sapo
            self._fail(info, f"failed to import ({type(exc).__name__}: {exc})", exc)
            return
        self.register(plugin, name=ep.name, distribution=dist, version=version)

    def register(
        self,
        plugin: object,
        *,
        name: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
        builtin: bool = False,
    ) -> PluginInfo | None:
        """Register a plugin object or module; returns its info, or None if it was refused."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if self.pm.is_registered(plugin):
            existing = self.pm.get_name(plugin)
            return self.infos.get(existing) if existing else None
        if builtin:
            distribution, version = "sapo-core", sapo_core.__version__
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        info = PluginInfo(
            name=name,
            distribution=distribution or "(not installed)",
            version=version or "",
            module=module,
            builtin=builtin,
        )
        for function in _undecorated(plugin, self.hook_names()):
            self._warn(
                info,
                f"defines {function}() without @sapo_core.hookimpl, so sapo never calls it; "
                "decorate it with @sapo_core.hookimpl",
            )
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy refuses impls whose arguments do not match the spec
            self._fail(info, f"was refused by the plugin manager ({exc})", exc)
            return None
        unknown = [hc.name for hc in self.pm.get_hookcallers(plugin) or [] if hc.spec is None]
        if unknown:
            self.pm.unregister(plugin)
            hints = []
            for hook in unknown:
                close = difflib.get_close_matches(hook, self.hook_names(), n=1)
                hints.append(f"'{hook}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            self._fail(info, "implements unknown hook " + ", ".join(hints), None)
            return None
        info.hooks = sorted(hc.name for hc in self.pm.get_hookcallers(plugin) or [])
        self.infos[name] = info
        self._collected = None
        return info

    def unregister(self, name: str) -> None:
        """Remove a plugin by name (used by the test fixture)."""
        self.pm.unregister(name=name)
        self.infos.pop(name, None)
        self._collected = None

    def hook_names(self) -> list[str]:
        return sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "sapo_spec"))

    def _fail(self, info: PluginInfo, why: str, exc: BaseException | None) -> None:
        message = f"plugin {info.name!r} from {info.distribution} {why}; skipped"
        if _strict():
            raise PluginError(message) from exc
        log.warning("%s", message)
        info.error = why
        self.infos[info.name] = info

    def _warn(self, info: PluginInfo, why: str) -> None:
        """The plugin loads, but part of it is likely dead code: a warning, an error when strict."""
        message = f"plugin {info.name!r} from {info.distribution} {why}"
        if _strict():
            raise PluginError(message)
        log.warning("%s", message)
        info.warnings.append(why)

    # ------------------------------------------------------------------------ registry

    @property
    def registry(self) -> Registry:
        """Every backend name, from every loaded plugin; built once per set of plugins.

        Raises `NameClashError` when two plugins register one name: which one a run would get
        must be the user's choice, not an accident of loading order."""
        collected = self._collect_once()
        if collected.clashes:
            raise NameClashError(str(collected.clashes[0]), collected.clashes[0].registrations)
        return collected.registry

    @property
    def clashes(self) -> list[NameClashError]:
        """The names two plugins register, without raising (what `sapo plugins` shows)."""
        return list(self._collect_once().clashes)

    def _collect_once(self) -> _Collected:
        self.load()
        if self._collected is None:
            self._collected = self._collect()
        return self._collected

    def _collect(self) -> _Collected:
        registry = Registry()
        offered: list[Registration] = []
        clashes: list[NameClashError] = []
        for hook_name, kind in REGISTRY_HOOKS.items():
            # Each plugin is called on its own so that one that raises loses only its own names.
            for impl in self._in_call_order(hook_name):
                info = self.infos.get(impl.plugin_name)
                if info is None or info.error:
                    continue
                register = _Collector(kind, info)
                try:
                    self._call(hook_name, impl, {"register": register})
                    registry.add(*register.registrations, clashes=clashes)
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PluginError) else str(exc)
                    self._hook_failed(info, hook_name, why, exc)
                    continue
                offered.extend(register.registrations)
        return _Collected(registry=registry, offered=offered, clashes=clashes)

    def _hook_failed(self, info: PluginInfo, hook_name: str, why: str, exc: BaseException) -> None:
        """One hook of a plugin failed: drop the names it registered, keep the rest of the plugin."""
        message = f"plugin {info.name!r} from {info.distribution} failed in {hook_name} ({why}); its names are skipped"
        if _strict():
            raise PluginError(message) from exc
        if hook_name not in info.hook_errors:  # the registry is rebuilt when plugins change: warn once
            log.warning("%s", message)
        info.hook_errors[hook_name] = why

    def names_by_plugin(self) -> dict[str, dict[str, list[str]]]:
        """plugin name -> kind -> names it registered (a clashing name under both plugins)."""
        out: dict[str, dict[str, list[str]]] = {}
        kinds = list(KINDS)
        for reg in sorted(self._collect_once().offered, key=lambda r: (kinds.index(r.kind), r.name)):
            out.setdefault(reg.plugin, {}).setdefault(reg.kind, []).append(reg.name)
        return out

    def problems(self) -> list[str]:
        """What is wrong with the installed plugins, each with what to do: skipped plugins, failed
        hooks, undecorated hooks, name clashes. Empty when all is well (`sapo plugins --check`)."""
        found = []
        for info in sorted(self.infos.values(), key=lambda i: (i.builtin, i.name)):
            where = f"plugin {info.name!r} from {info.distribution}"
            fix = f"Fix or upgrade {info.distribution}, uninstall it, or disable it with SAPO_DISABLE_PLUGINS={info.name}."
            if info.error:
                found.append(f"{where} {info.error}; it is skipped. {fix}")
            for hook_name, why in sorted(info.hook_errors.items()):
                found.append(f"{where} failed in {hook_name} ({why}); the names it registers there are skipped. {fix}")
            found.extend(f"{where} {why}." for why in info.warnings)
        found.extend(str(clash) for clash in self.clashes)
        return found

    # ----------------------------------------------------------------------- observers

    def ask(self, hook_name: str, **kwargs: Any) -> Any:
        """The first answer other than None from the plugins implementing a hook (None if none
        answers); one that raises is reported and skipped, as in `notify`."""
        self.load()
        for impl in self._in_call_order(hook_name):
            try:
                answer = self._call(hook_name, impl, kwargs)
            except Exception as exc:
                if _strict():
                    raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc}") from exc
                log.warning("plugin %r failed in %s (%s: %s)", impl.plugin_name, hook_name, type(exc).__name__, exc)
                continue
            if answer is not None:
                return answer
        return None

    def _in_call_order(self, hook_name: str) -> list[pluggy.HookImpl]:
        """The hook's implementations in the order pluggy calls them: tryfirst ones first, trylast
        ones last, the others last registered first."""
        return list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))

    def _call(self, hook_name: str, impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> Any:
        """One plugin's implementation of a hook, through pluggy's executor, so that hook-call
        monitoring (``pm.add_hookcall_monitoring``, SAPO_TRACE_PLUGINS) sees it. Each plugin is
        called on its own so that one that raises costs only its own answer."""
        results = self.pm._hookexec(hook_name, [impl], kwargs, False)  # pluggy 1.x's executor
        assert isinstance(results, list)
        return results[0] if results else None

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call a hook on every plugin, one at a time; one that raises is reported, not fatal."""
        self.load()
        for impl in self._in_call_order(hook_name):
            try:
                self._call(hook_name, impl, kwargs)
            except Exception as exc:
                if _strict():
                    raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc}") from exc
                log.warning("plugin %r failed in %s (%s: %s)", impl.plugin_name, hook_name, type(exc).__name__, exc)


def _undecorated(plugin: object, hook_names: Iterable[str]) -> list[str]:
    """The plugin's functions named like a hook but not marked as one: pluggy skips them silently."""
    found = []
    for name in hook_names:
        function = getattr(plugin, name, None)  # as pluggy looks hooks up
        if callable(function) and not hasattr(function, f"{GROUP}_impl"):  # the attribute HookimplMarker sets
            found.append(name)
    return found


@attrs.define
class _Collector:
    """The ``register`` one plugin's registry hook receives: collects, the registry adds all or none."""

    kind: str
    info: PluginInfo
    registrations: list[Registration] = attrs.field(factory=list)

    def __call__(self, name: str, factory: Factory, *, settings: type | None = None, description: str = "") -> None:
        self.registrations.append(
            Registration(
                kind=self.kind,
                name=name,
                factory=factory,
                settings=settings,
                description=description,
                plugin=self.info.name,
                distribution=self.info.distribution,
            )
        )


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process's plugin manager, loaded on first use."""
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
        _plugins.load()
    return _plugins


def reset_plugins() -> None:
    """Forget the loaded plugins, so the next `get_plugins()` loads afresh (tests, env changes)."""
    global _plugins
    _plugins = None


def describe(plugins: Plugins) -> list[Mapping[str, Any]]:
    """The rows of `sapo plugins --json`: one per plugin, with the names it registers."""
    names, clashes = plugins.names_by_plugin(), plugins.clashes
    rows: list[Mapping[str, Any]] = []
    for info in sorted(plugins.infos.values(), key=lambda i: (i.builtin, i.name)):
        rows.append(
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "module": info.module,
                "builtin": info.builtin,
                "hooks": info.hooks,
                "registers": names.get(info.name, {}),
                "error": info.error,
                "hook_errors": info.hook_errors,
                "warnings": info.warnings,
                "clashes": [str(c) for c in clashes if info.name in {r.plugin for r in c.registrations}],
            }
        )
    return rows
