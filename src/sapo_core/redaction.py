"""Secrets never reach a log line, whichever code path logs them and whichever handler writes it.

The code that reads a secret registers it (`register`): API keys as they are found
(`sapo_core.keys.find_key`), the configuration's secret values when it is resolved, and, when the
CLI starts (`install`), the values of environment variables named like secrets (``*_API_KEY``,
``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``). From the first registration on, a log record factory
replaces each registered value by ``<redacted>`` in the message, the traceback and the stack of
every record as it is made: before any handler sees it, the swarm folder's shared log included.
An API that echoes the key in an error page therefore cannot leak it through a warning.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "<redacted>"
#: Shorter values are not registered: redacting them would garble ordinary words.
MIN_CHARS = 6
_SECRET_VARIABLE = re.compile(r".*(API_KEY|APIKEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_installed = False


def register(*values: object) -> None:
    """Redact these values (strings of at least `MIN_CHARS` characters) from every log record."""
    global _secrets
    fresh = {value for value in values if isinstance(value, str) and len(value.strip()) >= MIN_CHARS}
    fresh |= {value.strip() for value in fresh}
    if not fresh - _secrets:
        return
    with _lock:
        _secrets = _secrets | fresh
    install(scan_environment=False)


def register_environment(env: Mapping[str, str] | None = None) -> None:
    """Register the values of the environment variables whose names say they hold a secret."""
    env = os.environ if env is None else env
    register(*(value for name, value in env.items() if _SECRET_VARIABLE.fullmatch(name)))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``<redacted>`` (the longest first)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def install(*, scan_environment: bool = True) -> None:
    """Make every log record of this process redacted as it is created (idempotent)."""
    global _installed
    if scan_environment:
        register_environment()
    with _lock:
        if _installed:
            return
        _installed = True
        make = logging.getLogRecordFactory()

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if _secrets:
            _scrub(record)
        return record

    logging.setLogRecordFactory(redacting_factory)


def _scrub(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed log call: logging reports it when it formats
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        trace = logging.Formatter().formatException(record.exc_info)
        if redact(trace) != trace:
            record.exc_text = redact(trace)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def secret_strings(shown: Any, raw: Any) -> Iterable[str]:
    """The strings of ``raw`` that a redacted copy (``shown``) hides: where the two differ."""
    if isinstance(raw, str):
        if shown != raw:
            yield raw
    elif isinstance(raw, Mapping) and isinstance(shown, Mapping):
        for key, value in raw.items():
            yield from secret_strings(shown.get(key), value)
    elif isinstance(raw, (list, tuple)) and isinstance(shown, (list, tuple)):
        for hidden, value in zip(shown, raw):
            yield from secret_strings(hidden, value)
