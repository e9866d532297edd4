"""Secrets never reach a log line: the record factory of sapo_core.redaction, on real handlers."""

from __future__ import annotations

import io
import logging

from sapo_core import redaction
from sapo_core.config import load_config
from sapo_core.keys import find_key

CANARY = "sk-canary-redaction-0123456789"


def logged(logger: logging.Logger, emit) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        emit()
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_a_registered_secret_is_redacted_in_messages_arguments_tracebacks_and_stacks() -> None:
    redaction.register(CANARY)
    log = logging.getLogger("sapo.test.redaction")

    def emit() -> None:
        log.warning("server said: %s", f"502 <html>Bearer {CANARY}</html>")
        log.warning(f"formatted early: {CANARY}")
        try:
            raise RuntimeError(f"echoed {CANARY}")
        except RuntimeError:
            log.exception("failed")
        log.warning("where %s", CANARY, stack_info=True)

    text = logged(log, emit)
    assert CANARY not in text
    assert text.count("<redacted>") >= 4 and "RuntimeError: echoed <redacted>" in text


def test_short_values_are_not_registered_so_words_survive() -> None:
    redaction.register("abc", "", None)  # type: ignore[arg-type]
    assert redaction.redact("abc and abcdef") == "abc and abcdef"


def test_keys_found_and_config_secrets_and_environment_secrets_are_registered(tmp_path) -> None:
    env = {"SAPO_KEYS_FILE": str(tmp_path / "keys.json"), "MY_SERVICE_API_KEY": "env-secret-abcdef-1"}
    assert find_key("MY_SERVICE_API_KEY", env) == ("env-secret-abcdef-1", "env MY_SERVICE_API_KEY")
    assert redaction.redact("key env-secret-abcdef-1") == "key <redacted>"
    load_config(env={}, sets=["swarm.secret=swarm-secret-abcdef-2", "inference.auth_token=extra-secret-abcdef-3"])
    assert redaction.redact("swarm-secret-abcdef-2 extra-secret-abcdef-3") == "<redacted> <redacted>"
    redaction.register_environment({"GITHUB_TOKEN": "ghp_env_token_abcdef", "PATH": "/usr/bin:/bin"})
    assert redaction.redact("ghp_env_token_abcdef /usr/bin:/bin") == "<redacted> /usr/bin:/bin"


def test_a_set_argument_without_a_key_is_not_echoed() -> None:
    import pytest

    from sapo_core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(env={}, sets=["sk-pasted-without-its-key"])
    assert "sk-pasted" not in str(info.value) and "without '='" in str(info.value)
    with pytest.raises(ConfigError, match="got 'inference.temperature'"):
        load_config(env={}, sets=["inference.temperature"])
