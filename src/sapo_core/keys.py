"""API keys: from the environment, else from sapo's keys file; and the `sapo keys` command.

Any plugin that talks to a hosted service (sapo-openai, a vLLM server behind a key) asks
`require_key("OPENAI_API_KEY", what=...)`: the environment variable wins, then the keys file.
The file is JSON (``{"NAME": "value"}``) at ``<user config dir>/sapo/keys.json`` (click's
``get_app_dir``; ``SAPO_KEYS_FILE`` overrides the path), written atomically with mode 0600 in a
0700 folder. Values never appear in messages, listings or logs: only names and where they are set.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import click

from sapo_core import redaction
from sapo_core.errors import BackendError, ConfigError

__all__ = [
    "KEYS_FILE_ENV",
    "find_key",
    "keys_command",
    "keys_list",
    "keys_path",
    "keys_path_command",
    "keys_set",
    "keys_unset",
    "read_keys",
    "require_key",
    "set_key",
    "unset_key",
]

#: Overrides the keys file's path (tests, several profiles on one machine).
KEYS_FILE_ENV = "SAPO_KEYS_FILE"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def keys_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    override = env.get(KEYS_FILE_ENV, "").strip()
    return Path(override).expanduser() if override else Path(click.get_app_dir("sapo")) / "keys.json"


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"{name!r} is not a key name: use the environment variable's name, e.g. OPENAI_API_KEY "
            "(letters, digits and '_', not starting with a digit)"
        )
    return name


def read_keys(path: Path | None = None) -> dict[str, str]:
    """The keys file's names and values ({} when there is no file)."""
    path = path or keys_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"Cannot read the keys file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        # Never quote the content: it holds secrets.
        raise ConfigError(
            f"The keys file {path} is not a JSON object of names to strings; fix it or delete it "
            "and set the keys again with `sapo keys set NAME`"
        )
    return data


def _write_keys(keys: Mapping[str, str], path: Path) -> None:
    """Replace the keys file atomically; the new file is 0600 from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(dict(sorted(keys.items())), handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_key(name: str, value: str, path: Path | None = None) -> Path:
    value = value.strip()
    if not value:
        raise ConfigError(f"An empty value for {name}: nothing was stored (use `sapo keys unset {name}` to remove it)")
    path = path or keys_path()
    keys = read_keys(path)
    keys[_check_name(name)] = value
    _write_keys(keys, path)
    return path


def unset_key(name: str, path: Path | None = None) -> bool:
    """Remove ``name`` from the keys file; False when it was not there."""
    path = path or keys_path()
    keys = read_keys(path)
    if _check_name(name) not in keys:
        return False
    del keys[name]
    _write_keys(keys, path)
    return True


def find_key(name: str, env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(value, where)`` of the key ``name``: the environment first, then the keys file; None if unset."""
    env = os.environ if env is None else env
    value = env.get(name, "").strip()
    if value:
        redaction.register(value)
        return value, f"env {name}"
    path = keys_path(env)
    value = read_keys(path).get(name, "").strip()
    redaction.register(value)
    return (value, f"keys file {path}") if value else None


def require_key(name: str, *, what: str, env: Mapping[str, str] | None = None) -> str:
    """The value of key ``name``, or a `BackendError` saying how to provide it."""
    found = find_key(_check_name(name), env)
    if found is None:
        raise BackendError(
            f"{what} needs an API key and none is set: export {name}=... or run `sapo keys set {name}` "
            f"(stored 0600 in {keys_path(env)})"
        )
    return found[0]


# ---------------------------------------------------------------------------------- command


@click.group(name="keys")
def keys_command() -> None:
    """API keys for hosted services (OPENAI_API_KEY, DEEPSEEK_API_KEY, ANTHROPIC_API_KEY, ...).

    The environment wins over the keys file. Values are never printed.
    """


@keys_command.command(name="set")
@click.argument("name")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the value from standard input (for scripts).")
def keys_set(name: str, from_stdin: bool) -> None:
    """Store NAME's value (asked without echo) in the keys file, mode 0600."""
    try:
        _check_name(name)
        value = (
            sys.stdin.readline() if from_stdin else click.prompt(f"{name}", hide_input=True, confirmation_prompt=True)
        )
        path = set_key(name, value)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name} stored in {path}")
    if os.environ.get(name):
        click.echo(f"note: {name} is also set in the environment, which takes precedence", err=True)


@keys_command.command(name="unset")
@click.argument("name")
def keys_unset(name: str) -> None:
    """Remove NAME from the keys file."""
    try:
        removed = unset_key(name)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name} removed from {keys_path()}" if removed else f"{name} is not in {keys_path()}")


@keys_command.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: name -> where it is set.")
def keys_list(as_json: bool) -> None:
    """The names in the keys file and where each one's value comes from (never the value)."""
    try:
        names = sorted(read_keys())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    rows = {name: ("env" if os.environ.get(name, "").strip() else "file") for name in names}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no keys in {keys_path()}")
    for name, where in rows.items():
        shadow = " (the environment's value is used)" if where == "env" else ""
        click.echo(f"{name}{shadow}")


@keys_command.command(name="path")
def keys_path_command() -> None:
    """Print the keys file's path."""
    click.echo(str(keys_path()))
