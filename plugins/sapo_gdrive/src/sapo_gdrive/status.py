"""`sapo swarm status`: what a swarm folder says about its swarm, read-only.

Round and deadline (``state.json``), the shared settings (``swarm.json``), every node's heartbeat
(``nodes/*.json``: role, round, last seen, live or not) and, per node, its newest payload
(``rounds/<round>/<node>.json.gz``: round, size, valid or why `FolderTransport.collect` refused it).
Nothing is written.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import time
from collections.abc import Mapping
from typing import Any

import click

from sapo_core import codec
from sapo_core.interfaces import Lease, SwarmState
from sapo_core.logsafe import printable, unquoted
from sapo_gdrive.folder import FolderTransport
from sapo_gdrive.layout import ROUNDS_DIR, SETTINGS_FILE, parse_name

DEFAULT_LIVE_SECONDS = 120.0


def _experiments(transport: FolderTransport) -> list[str]:
    """The experiment folders under the root (folders holding swarm.json or state.json first-class)."""
    base = posixpath.dirname(transport.store.folder)
    try:
        entries = transport.store.fs.ls(base, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")


def _round_numbers(transport: FolderTransport) -> list[int]:
    """The round folders under ``rounds/``, newest first."""
    try:
        entries = transport.store.fs.ls(transport.store.path(ROUNDS_DIR), detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    numbers = []
    for entry in entries:
        name = posixpath.basename(str(entry["name"]).rstrip("/"))
        if entry.get("type") == "directory" and name.isdigit():
            numbers.append(int(name))
    return sorted(numbers, reverse=True)


def _sizes(transport: FolderTransport, round: int) -> dict[str, int | None]:
    """File name -> size of the files in one round folder."""
    try:
        entries = transport.store.fs.ls(transport.store.path(ROUNDS_DIR, str(round)), detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {posixpath.basename(str(e["name"])): e.get("size") for e in entries if e.get("type") != "directory"}


def _payload_node(name: str) -> str | None:
    parsed = parse_name(name, payload=True)
    if parsed is None:
        return None
    try:
        return codec.validate_node_id(parsed.node)
    except codec.PayloadError:
        return None


def last_payloads(transport: FolderTransport, nodes: set[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per node, its newest payload file: round, size, valid or the reason it was refused.

    Rounds are read newest first and the scan stops once every node of ``nodes`` is found.
    Also returns the refusals of files that name no node (round-prefixed).
    """
    found: dict[str, dict[str, Any]] = {}
    strays: list[str] = []
    for round in _round_numbers(transport):
        if nodes and nodes <= found.keys():
            break
        collected = transport.collect(round)
        sizes = _sizes(transport, round)
        for payload in collected.payloads:
            if payload.node in found:
                continue
            name = f"{payload.node}.json.gz"
            size = sizes.get(name)
            if size is None:  # only conflict copies of this node's file
                size = next((s for n, s in sizes.items() if _payload_node(n) == payload.node), None)
            found[payload.node] = {
                "round": round,
                "file": name,
                "size": size,
                "valid": True,
                "reason": None,
                "groups": len(payload.groups),
            }
        valid_here = {p.node for p in collected.payloads}
        for rejection in collected.rejected:
            name, reason = unquoted(rejection)  # '"<file name>": <reason>'
            reason = reason.removeprefix(": ")
            node = _payload_node(name)
            if node is None:
                strays.append(f"rounds/{round}/{rejection}")
                continue
            if node in found or node in valid_here:
                continue
            found[node] = {
                "round": round,
                "file": name,
                "size": sizes.get(name),
                "valid": False,
                "reason": reason,
                "groups": None,
            }
    return found, strays


def swarm_status(
    root: str,
    experiment: str,
    *,
    live_seconds: float = DEFAULT_LIVE_SECONDS,
    secret: str = "",
    now: float | None = None,
) -> dict[str, Any]:
    """The status as plain data (what ``--json`` prints); click.ClickException for a missing experiment."""
    transport = _open(root, experiment, secret)
    now = time.time() if now is None else now
    state, lease, settings = transport.read_state(), transport.read_lease(), _settings(transport)
    by_node = {row["node"]: row for row in _heartbeat_rows(transport, now, live_seconds)}
    workers = {node for node, row in by_node.items() if row["role"] != "coordinator"}
    payloads, strays = last_payloads(transport, workers)
    for node in payloads:
        if node not in by_node:  # a payload without a heartbeat: still worth showing
            by_node[node] = {
                "node": node,
                "role": None,
                "model": None,
                "round": None,
                "last_seen": None,
                "last_seen_ago": None,
                "live": False,
            }
    for node, row in by_node.items():
        row["last_payload"] = payloads.get(node)
    return {
        "root": root,
        "experiment": experiment,
        "folder": transport.store.folder,
        "now": now,
        "live_seconds": live_seconds,
        "state": None if state is None else _state_data(state, now),
        "lease": None if lease is None else _lease_data(lease, now),
        "settings": settings,
        "nodes": [by_node[name] for name in sorted(by_node)],
        "live": sorted(name for name, row in by_node.items() if row["live"]),
        "rejected_other": strays,
    }


def _open(root: str, experiment: str, secret: str) -> FolderTransport:
    """The experiment's transport; click.ClickException, naming the experiments there, when it has no folder."""
    try:
        transport = FolderTransport(root, experiment, secret=secret)
    except (ValueError, codec.PayloadError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not transport.store.fs.isdir(transport.store.folder):
        found = _experiments(transport)
        listed = ", ".join(found) if found else "none"
        raise click.ClickException(f"no experiment {experiment!r} under {root} (experiments found there: {listed})")
    return transport


def _settings(transport: FolderTransport) -> Any:
    """swarm.json as stored; None when missing, ``{"error": ...}`` when unreadable."""
    try:
        return transport.store.read_json(transport.store.path(SETTINGS_FILE))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        return {"error": f"unreadable: {exc}"}


def _heartbeat_rows(transport: FolderTransport, now: float, live_seconds: float) -> list[dict[str, Any]]:
    """One row per readable heartbeat (``last_seen``: the later of the node's claim and the file's mtime)."""
    rows = []
    for info in transport.live_nodes(math.inf):
        ago = now - info.last_seen
        rows.append(
            {
                "node": info.node,
                "role": info.role,
                "model": info.model,
                "round": info.round,
                "last_seen": info.last_seen,
                "last_seen_ago": ago,
                "live": ago <= live_seconds,
            }
        )
    return rows


def _state_data(state: SwarmState, now: float) -> dict[str, Any]:
    return {
        "round": state.round,
        "deadline": state.deadline,
        "deadline_in": None if state.deadline is None else state.deadline - now,
        "updated_ago": now - state.updated_at,
        "coordinator": state.coordinator,
    }


def _lease_data(lease: Lease, now: float) -> dict[str, Any]:
    return {
        "epoch": lease.epoch,
        "holder": lease.holder or None,  # None: the lease file is unreadable
        "expires_in": lease.expires_at - now,
    }


def duration(value: float | None) -> str:
    """Seconds as a short human duration: 42s, 7m, 1.5h ('-' for None)."""
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < 120:
        return f"{sign}{value:.0f}s"
    if value < 7200:
        return f"{sign}{value / 60:.0f}m"
    return f"{sign}{value / 3600:.1f}h"


def _size(value: object) -> str:
    if not isinstance(value, int):
        return "-"
    return f"{value} B" if value < 1024 else f"{value / 1024:.1f} KiB"


def print_status(data: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console() if os.isatty(1) else Console(width=200)
    for line in _summary_lines(data):
        console.print(line)
    console.print(_nodes_table(data))
    for stray in data["rejected_other"]:
        console.print(f"[yellow]refused[/] {escape(stray)}")  # a peer's file name is no markup


def _summary_lines(data: Mapping[str, Any]) -> list[str]:
    """The state, the lease and swarm.json, one line each (rich markup)."""
    state = data["state"]
    if state is None:
        lines = [f"[bold]{data['experiment']}[/] at {data['folder']}: no state.json yet (no coordinator has started)"]
    else:
        deadline = state["deadline_in"]
        when = (
            "none (the run is over)"
            if deadline is None
            else (f"in {duration(deadline)}" if deadline >= 0 else f"passed {duration(-deadline)} ago")
        )
        lines = [
            f"[bold]{data['experiment']}[/] at {data['folder']}: round {state['round']}, deadline {when}, "
            f"coordinator {state['coordinator'] or '-'} (state updated {duration(state['updated_ago'])} ago)"
        ]
    lease = data["lease"]
    if lease is not None:
        left = lease["expires_in"]
        lines.append(
            f"coordinator lease: epoch {lease['epoch']}, held by {lease['holder'] or '(unreadable file)'}, "
            + (f"expires in {duration(left)}" if left > 0 else f"expired {duration(-left)} ago")
        )
    settings = data["settings"]
    if isinstance(settings, dict):
        summary = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()) if not isinstance(v, (dict, list)))
        lines.append(f"swarm.json: {summary or '(empty)'}")
    else:
        lines.append("swarm.json: missing")
    return lines


def _nodes_table(data: Mapping[str, Any]) -> Any:
    """One row per node: its heartbeat and its newest payload."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        "node",
        "role",
        "round",
        "last seen",
        "live",
        "last payload",
        "size",
        "payload status",
        title=f"{len(data['live'])} live of {len(data['nodes'])} (live = seen within {data['live_seconds']:g}s)",
    )
    for node in data["nodes"]:
        payload = node["last_payload"]
        if payload is None:
            where, size, verdict = "-", "-", "-"
        else:
            where, size = f"round {payload['round']}", _size(payload["size"])
            verdict = "[green]valid[/]" if payload["valid"] else f"[red]refused[/]: {escape(payload['reason'])}"
        ago = node["last_seen_ago"]
        role = escape(printable(node["role"] or "-"))  # what a peer wrote: no markup, one line
        table.add_row(
            node["node"],
            role,
            "-" if node["round"] is None else str(node["round"]),
            "-" if ago is None else f"{duration(ago)} ago",
            "[green]yes[/]" if node["live"] else "[red]no[/]",
            where,
            size,
            verdict,
        )
    return table


@click.command(name="status")
@click.option(
    "--root",
    envvar="GDRIVE_PATH",
    required=True,
    help="The swarm's shared folder or fsspec URL (default: env GDRIVE_PATH).",
)
@click.option(
    "--experiment",
    envvar="EXPERIMENT_NAME",
    default="default",
    show_default=True,
    help="Experiment name (default: env EXPERIMENT_NAME, else 'default').",
)
@click.option(
    "--live-seconds",
    type=float,
    default=DEFAULT_LIVE_SECONDS,
    show_default=True,
    help="A node is live if its heartbeat is this recent.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(root: str, experiment: str, live_seconds: float, as_json: bool) -> None:
    """Round, deadline, nodes (live or not) and each node's newest payload.

    In a signed swarm, set SAPO_SWARM_SECRET to check the payloads' signatures too.
    """
    data = swarm_status(root, experiment, live_seconds=live_seconds, secret=os.environ.get("SAPO_SWARM_SECRET", ""))
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print_status(data)
