"""`sapo keys` and the keys file: 0600, atomic, the environment first, values never printed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from sapo_core.errors import BackendError, ConfigError
from sapo_core.keys import KEYS_FILE_ENV, find_key, read_keys, require_key, set_key, unset_key

SECRET = "sk-test-0123456789abcdef"


@pytest.fixture
def keys_file(tmp_path, monkeypatch):
    path = tmp_path / "conf" / "keys.json"
    monkeypatch.setenv(KEYS_FILE_ENV, str(path))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return path


def sapo(*args, input=None, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "sapo_core", *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_set_list_unset_through_the_cli(keys_file):
    result = sapo("keys", "set", "OPENAI_API_KEY", "--stdin", input=SECRET + "\n")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_file.parent.stat().st_mode) == 0o700
    assert json.loads(keys_file.read_text()) == {"OPENAI_API_KEY": SECRET}
    listed = sapo("keys", "list", "--json")
    assert json.loads(listed.stdout) == {"OPENAI_API_KEY": "file"}
    shadowed = sapo("keys", "list", env_extra={"OPENAI_API_KEY": "from-env"})
    assert "the environment's value is used" in shadowed.stdout
    for result in (listed, shadowed, sapo("keys", "path")):
        assert SECRET not in result.stdout + result.stderr
    assert sapo("keys", "path").stdout.strip() == str(keys_file)
    assert sapo("keys", "unset", "OPENAI_API_KEY").returncode == 0
    assert read_keys(keys_file) == {}
    assert "is not in" in sapo("keys", "unset", "OPENAI_API_KEY").stdout


def test_the_environment_wins_and_a_missing_key_says_what_to_do(keys_file):
    set_key("DEEPSEEK_API_KEY", SECRET)
    assert find_key("DEEPSEEK_API_KEY") == (SECRET, f"keys file {keys_file}")
    assert find_key("DEEPSEEK_API_KEY", env={"DEEPSEEK_API_KEY": "e", KEYS_FILE_ENV: str(keys_file)}) == (
        "e",
        "env DEEPSEEK_API_KEY",
    )
    with pytest.raises(BackendError) as info:
        require_key("ANTHROPIC_API_KEY", what="inference backend 'anthropic'")
    assert "export ANTHROPIC_API_KEY=... or run `sapo keys set ANTHROPIC_API_KEY`" in str(info.value)
    assert unset_key("DEEPSEEK_API_KEY") and not unset_key("DEEPSEEK_API_KEY")


def test_bad_names_and_a_corrupt_file_are_clear_errors_without_the_content(keys_file):
    with pytest.raises(ConfigError, match="is not a key name"):
        set_key("../etc", SECRET)
    with pytest.raises(ConfigError, match="An empty value"):
        set_key("X_KEY", "  ")
    keys_file.parent.mkdir(parents=True)
    keys_file.write_text(f'["{SECRET}"]')
    with pytest.raises(ConfigError) as info:
        read_keys(keys_file)
    assert SECRET not in str(info.value) and "sapo keys set NAME" in str(info.value)
    result = sapo("keys", "list")
    assert result.returncode != 0 and SECRET not in result.stdout + result.stderr
