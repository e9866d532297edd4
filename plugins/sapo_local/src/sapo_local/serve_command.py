"""The ``sapo serve`` command: the remote trainer (`sapo_local.serve`) under uvicorn.

Imports FastAPI, uvicorn and torch only when the command runs, so other `sapo` commands stay fast.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from sapo_core.cli import fail, resolve, run_options, setup_logging
from sapo_core.errors import SapoError
from sapo_core.keys import find_key

if TYPE_CHECKING:
    from sapo_core.config import Config
    from sapo_local.serve import ServeSettings

log = logging.getLogger("sapo.serve")

MIN_KEY_CHARS = 16


@click.command(name="serve")
@run_options
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind. Anything but loopback exposes the trainer: put TLS in front of it.",
)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option(
    "--api-key-env",
    default="SAPO_SERVE_API_KEY",
    show_default=True,
    help="Environment variable holding the API key clients must send (at least 16 characters).",
)
@click.option(
    "--group-ttl",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds a group may wait for all its rewards; then it expires untrained.",
)
@click.option(
    "--batch-groups", type=click.IntRange(min=1), default=4, show_default=True, help="Complete groups per learner step."
)
@click.option(
    "--max-queued-groups",
    type=click.IntRange(min=1),
    default=None,
    help="Complete groups waiting for the learner before new rollouts get 503 [default: 4 x batch-groups].",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Learner steps between automatic checkpoints (0: on request and at exit only).",
)
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1_000_000, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.01),
    default=20.0,
    show_default=True,
    help="Requests per second per client address.",
)
@click.option("--burst", type=click.IntRange(min=1), default=40, show_default=True)
def serve(
    config_file: str | None,
    sets: tuple[str, ...],
    host: str,
    port: int,
    api_key_env: str,
    group_ttl: float,
    batch_groups: int,
    max_queued_groups: int | None,
    checkpoint_every: int,
    max_body_bytes: int,
    rate: float,
    burst: int,
    **flags: Any,
) -> None:
    """Host the policy and its learner behind HTTP; clients score completions with their own code.

    The run's folder (config.json, metrics.jsonl, checkpoints/) is made as for `sapo run`
    offline. See docs/serve.md for the API and sapo_core.remote.RemoteTrainer for the client.
    """
    api_key = _api_key(api_key_env)
    _warn_if_exposed(host)
    flags["transport"] = "none"  # one process owns the policy; clients are not swarm nodes
    try:
        config = resolve(config_file, sets, **flags)
        setup_logging(config.run.log_level)
        from sapo_local.serve import ServeSettings

        settings = ServeSettings(
            host=host,
            port=port,
            group_ttl=group_ttl,
            batch_groups=batch_groups,
            max_queued_groups=max_queued_groups or 4 * batch_groups,
            checkpoint_every=checkpoint_every,
            max_body_bytes=max_body_bytes,
            rate=rate,
            burst=burst,
        )
        _host_trainer(config, settings, api_key)
    except ImportError as exc:
        raise click.ClickException(
            f"sapo serve needs FastAPI and uvicorn: pip install 'sapo-local[serve]' ({exc})"
        ) from exc
    except SapoError as exc:
        fail(exc)
    sys.stdout.flush()


def _api_key(api_key_env: str) -> str:
    """The key clients must send, from ``api_key_env`` (or sapo's key store); refuses a short or missing one."""
    found = find_key(api_key_env)
    api_key = found[0] if found else ""
    if len(api_key) < MIN_KEY_CHARS:
        raise click.ClickException(
            f"sapo serve needs an API key of at least {MIN_KEY_CHARS} characters in {api_key_env}, e.g.\n"
            f"  export {api_key_env}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\n"
            f"(or `sapo keys set {api_key_env}`), and the same key on the clients."
        )
    return api_key


def _warn_if_exposed(host: str) -> None:
    try:
        if not ipaddress.ip_address(host).is_loopback:
            log.warning(
                "binding %s: the trainer is reachable from other machines over plain HTTP; "
                "put a TLS proxy in front of it",
                host,
            )
    except ValueError:
        pass  # a host name: uvicorn resolves it


def _host_trainer(config: Config, settings: ServeSettings, api_key: str) -> None:
    """Build the node and its service, and serve them until uvicorn returns."""
    import uvicorn

    from sapo_core.node import Node
    from sapo_core.plugins import get_plugins
    from sapo_local.serve import TrainerService, create_app

    node = Node.from_config(config, get_plugins())
    service = TrainerService(node, settings)
    service.start(resume=config.run.resume)
    click.echo(
        f"sapo serve: {config.model.name} on http://{settings.host}:{settings.port} "
        f"(run folder {node.context.workdir})",
        err=True,
    )
    try:
        uvicorn.run(
            create_app(service, api_key),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
        )
    finally:
        service.stop()  # already done by the app's shutdown, unless uvicorn failed to start
        node.close()
