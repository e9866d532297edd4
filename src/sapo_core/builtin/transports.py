"""Built-in transports: ``none`` (the offline loop) and ``memory`` (one process, for tests)."""

from __future__ import annotations

from sapo_core import hookimpl
from sapo_core.registry import Register
from sapo_core.transports import build_memory, build_offline


@hookimpl
def register_transports(register: Register) -> None:
    register("none", build_offline, description="No swarm: the offline GRPO loop on one node")
    register("memory", build_memory, description="A swarm of threads inside one process (tests, demos)")
