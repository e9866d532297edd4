"""``sapo vllm launch``: start a vLLM or SGLang server with the flags sapo's weight sync needs.

The engine must be installed in this Python environment (it needs a CUDA GPU); when it is not,
the command says what to install instead of failing somewhere inside it. ``--dry-run`` prints
the command and its environment without starting anything.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

import attrs
import click

INSTALL = {
    "vllm": "pip install vllm   (Linux with a CUDA GPU; see https://docs.vllm.ai/en/latest/getting_started/installation/)",
    "sglang": "pip install 'sglang[all]'   (Linux with a CUDA GPU; see https://docs.sglang.ai/get_started/install.html)",
}


@attrs.frozen
class Launch:
    """A server's command line and the environment variables it adds."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(factory=dict)

    def describe(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{prefix} {shlex.join(self.argv)}".strip()


def build_launch(
    engine: str,
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    gpu: str = "",
    lora: bool = False,
    max_lora_rank: int = 64,
    seed: int = 0,
    api_key_env: str = "",
    python: str = sys.executable,
    extra: Sequence[str] = (),
) -> Launch:
    """The command that serves ``model`` with ``engine`` on ``host:port``, ready for sapo's weight sync."""
    if engine not in INSTALL:
        raise click.BadParameter(
            f"unknown engine {engine!r}. Choose one of: {', '.join(INSTALL)}", param_hint="--engine"
        )
    command = _vllm_command if engine == "vllm" else _sglang_command
    argv, env = command(
        python, model, host=host, port=port, seed=seed, lora=lora, max_lora_rank=max_lora_rank, api_key_env=api_key_env
    )
    if gpu:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return Launch(argv=(*argv, *extra), env=env)


def _vllm_command(
    python: str, model: str, *, host: str, port: int, seed: int, lora: bool, max_lora_rank: int, api_key_env: str
) -> tuple[list[str], dict[str, str]]:
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    argv += ["--host", host, "--port", str(port), "--seed", str(seed)]
    # /collective_rpc (full reloads) and /reset_prefix_cache are development routes.
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    if lora:
        argv += ["--enable-lora", "--max-lora-rank", str(max_lora_rank)]
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if api_key_env:  # vLLM reads its key from VLLM_API_KEY: the key never shows in the process list
        env["VLLM_API_KEY"] = f"${api_key_env}"
    return argv, env


def _sglang_command(
    python: str, model: str, *, host: str, port: int, seed: int, lora: bool, max_lora_rank: int, api_key_env: str
) -> tuple[list[str], dict[str, str]]:
    argv = [python, "-m", "sglang.launch_server", "--model-path", model]
    argv += ["--host", host, "--port", str(port), "--random-seed", str(seed)]
    if lora:
        argv += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--lora-target-modules", "all"]
    if api_key_env:  # SGLang takes it as a flag only
        argv += ["--api-key", f"${api_key_env}"]
    return argv, {}


def _expand(value: str, environ: Mapping[str, str]) -> str:
    return environ.get(value[1:], "") if value.startswith("$") else value


def resolved(launch: Launch, environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The argv and environment to run: ``$NAME`` placeholders (API keys) read from ``environ`` only now."""
    env = dict(environ)
    env.update({key: _expand(value, environ) for key, value in launch.env.items()})
    return [_expand(arg, environ) for arg in launch.argv], env


def engine_installed(engine: str) -> bool:
    module = "vllm" if engine == "vllm" else "sglang"
    return importlib.util.find_spec(module) is not None


@click.group(name="vllm")
def vllm_group() -> None:
    """vLLM / SGLang generation servers for the vllm and sglang inference backends."""


@vllm_group.command(name="launch", context_settings={"ignore_unknown_options": True})
@click.option("--engine", type=click.Choice(sorted(INSTALL)), default="vllm", show_default=True)
@click.option("--model", required=True, help="The model to serve: the same one the learner trains (model.name).")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback unless told otherwise)."
)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--gpu", default="", help="CUDA_VISIBLE_DEVICES for the server, e.g. 0 (the learner takes another GPU).")
@click.option("--lora", is_flag=True, help="Serve runtime-loadable LoRA adapters (for train.lora = true).")
@click.option("--max-lora-rank", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--api-key-env", default="", help="Environment variable holding the API key clients must send.")
@click.option("--dry-run", is_flag=True, help="Print the command and its environment; start nothing.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def launch(
    engine: str,
    model: str,
    host: str,
    port: int,
    gpu: str,
    lora: bool,
    max_lora_rank: int,
    seed: int,
    api_key_env: str,
    dry_run: bool,
    extra: tuple[str, ...],
) -> None:
    """Start a generation server; arguments after the options go to the engine as they are."""
    plan = build_launch(
        engine,
        model,
        host=host,
        port=port,
        gpu=gpu,
        lora=lora,
        max_lora_rank=max_lora_rank,
        seed=seed,
        api_key_env=api_key_env,
        extra=extra,
    )
    if dry_run:
        click.echo(plan.describe())
        return
    if not engine_installed(engine):
        raise click.ClickException(
            f"{engine} is not installed in this Python environment ({sys.executable}). Install it with:\n  "
            f"{INSTALL[engine]}\nor run the server elsewhere and point inference.urls at it. "
            "`sapo vllm launch --dry-run ...` prints the command to use."
        )
    if api_key_env and not os.environ.get(api_key_env):
        raise click.ClickException(f"--api-key-env {api_key_env}: that environment variable is not set")
    click.echo(f"starting: {plan.describe()}", err=True)
    argv, env = resolved(plan, os.environ)
    code = subprocess.call(argv, env=env)
    if code:
        raise click.ClickException(f"the {engine} server exited with status {code}")
