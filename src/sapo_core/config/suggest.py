"""Suggestions: the valid key an unknown one most likely meant ("Did you mean 'inference.temperature'?")."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from sapo_core.config.schema import SECTIONS
from sapo_core.config.secrets import _from
from sapo_core.errors import ConfigError

# Similarity (difflib ratio) from which an extra's key counts as a typo of a core key of its
# section: "temprature" (0.95), "backends" (0.93) are typos; "max_tokens" (0.83), "top_a" (0.8) are not.
_TYPO_CUTOFF = 0.85


def _suggest(key: str, candidates: Iterable[str]) -> str | None:
    """The valid key ``key`` most likely meant, or None.

    In order: a very close last part under the same parent (``tasks.name`` -> ``tasks.names``);
    the same last part in another section (``model.seed`` -> ``run.seed``); a close last part
    under the same parent (``inference.temprature``); a close whole key (a misspelt section);
    a close last part anywhere.
    """
    candidates = list(dict.fromkeys(candidates))
    parent, _, leaf = key.rpartition(".")
    leaves: dict[str, str] = {}
    for candidate in candidates:
        leaves.setdefault(candidate.rpartition(".")[2], candidate)
    siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == parent}
    match = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.8)
    if match:
        return siblings[match[0]]
    if leaf in leaves and leaves[leaf] != key:
        return leaves[leaf]
    match = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if match:
        return siblings[match[0]]
    if not siblings:  # the parent is not a known one: compare whole keys (a misspelt section)
        match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        if match:
            return match[0]
    match = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.8)
    return leaves[match[0]] if match else None


def _env_name(key: str) -> str:
    return "SAPO_" + key.replace(".", "_").upper()


def _unknown(
    key: str, source: str | None, candidates: Iterable[str], *, what: str = "key", hint: str = ""
) -> ConfigError:
    candidates = list(dict.fromkeys(candidates))
    suggestion = _suggest(key, candidates)
    message = f"Unknown {what} '{key}'{_from(source)}."
    if suggestion:
        also = f" ({_env_name(suggestion)})" if source and source.startswith("env SAPO_") else ""
        message += f" Did you mean '{suggestion}'{also}?"
    else:
        parent = key.rpartition(".")[0]
        known = [c for c in candidates if c.rpartition(".")[0] == parent and "." in c]
        message += f" Known keys: {', '.join(known)}." if known else f" Sections: {', '.join(SECTIONS)}."
    return ConfigError(message + (f" {hint}" if hint else ""))
