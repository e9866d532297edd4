"""`sapo swarm`: the command group of a swarm in a shared folder (transport gdrive / fs).

Its commands live in the modules named for them: `sapo_gdrive.status` (``status``: what a swarm
folder says), `sapo_gdrive.swarm_run` (``run``: a whole swarm as local processes) and
`sapo_gdrive.table` (``table``: one swarm per split and seed, and the table of their results).
"""

from __future__ import annotations

import click

import sapo_core
from sapo_gdrive.status import status_command
from sapo_gdrive.swarm_run import run_swarm
from sapo_gdrive.table import table_command


@click.group(name="swarm")
def swarm() -> None:
    """Look at a swarm in its shared folder (transport gdrive / fs)."""


swarm.add_command(status_command)
swarm.add_command(run_swarm)
swarm.add_command(table_command)


@sapo_core.hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(swarm)
