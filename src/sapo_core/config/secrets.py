"""Secrets, and what of a value may be shown: in error messages, ``sapo config`` and `Config.to_dict`.

Secrets are ``swarm.secret``, fields whose metadata has ``secret=True``, and extras whose key contains
key/secret/token/password/passwd/passphrase/auth/credential/bearer/cookie. They never appear in exception
messages and read ``"***"`` unless ``redact=False``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

from sapo_core.errors import ConfigError

#: Field metadata key marking a value that must never be shown: ``attrs.field(metadata={SECRET: True})``.
SECRET = "secret"
REDACTED = "***"
# Words that make an extra's key a secret. Over-redacting (e.g. an extra named ``max_tokens``) is
# the safe failure; "auth" also covers HTTP ``authorization`` headers kept in an extra table.
_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "passphrase", "auth", "credential", "bearer", "cookie")


def _secret_word(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def is_secret(key: str) -> bool:
    """Whether the dotted ``key`` holds a secret: ``swarm.secret``, or an extra whose last part
    contains key/secret/token/password/passwd/passphrase/auth/credential/bearer/cookie (case-insensitive).

    Core keys are secret only by their field metadata, so ``inference.max_new_tokens`` is not.
    """
    from sapo_core.config.schema import _CORE  # the schema imports this module for SECRET: import it late

    section, _, name = key.partition(".")
    field = _CORE.get(section, {}).get(name)
    if field is not None:
        return bool(field.metadata.get(SECRET))
    return _secret_word(key.rsplit(".", 1)[-1])


def _redact_value(value: Any) -> Any:
    """A plain copy of ``value`` with every entry under a secret-looking key replaced."""
    if isinstance(value, Mapping):
        return {k: (_hide(v) if _secret_word(str(k)) else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return value


def _hide(value: Any) -> Any:
    # An unset secret stays visibly unset ("" / None): that tells the user something and leaks nothing.
    return value if value in ("", None) else REDACTED


def _redacted_repr(value: str) -> str:
    return repr(REDACTED) if value else "''"


def _scrub(message: str, secrets: Iterable[Any]) -> str:
    for secret in secrets:
        if isinstance(secret, str) and secret:
            message = message.replace(repr(secret), "<redacted>").replace(secret, "<redacted>")
    return message


def _plain(value: Any) -> Any:
    """``value`` as plain TOML/JSON-like data: tuples become lists, mappings dicts, paths strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _show(value: Any) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else repr(_plain(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _from(source: str | None) -> str:
    return f" (from {source})" if source else ""


def _bad_value(key: str, value: Any, source: str | None, problem: str, *, secret: bool) -> ConfigError:
    shown = f"{key}: <redacted>" if secret else f"{key} = {_show(_redact_value(value))}"
    return ConfigError(f"{shown}{_from(source)}: {problem}")
