"""Sharing generated completions between the processes of a distributed launch, as JSON.

Under ``accelerate launch`` (or torchrun) every process runs the node's loop on the same
problems. The ``local`` inference backend splits a call's rows between the processes
(`shard`), each generates its share, and `exchange_completions` gives every process all the
completions in the call's order: one ``all_gather`` of the encoded lengths, then one of the
UTF-8 JSON bytes as uint8 tensors padded to the longest. JSON, not ``all_gather_object``,
which pickles: nothing that crosses a process boundary is pickle.

The process group is the one the learner's ``Accelerator`` initialises (gloo between CPU
processes, NCCL between GPUs, whose tensors must live on the GPU: pass the policy's device).
Whether a call is sharded is decided when it runs, never when a backend is built, so it does
not matter which backend the node builds first. Without an initialised group of more than one
process nothing here communicates.

Each process also sends a fingerprint of the call (problem ids, n, sampling parameters): a
process that was given other problems would otherwise receive completions of problems it did
not ask for. And a process whose share failed sends its error instead of completions, so that
every process raises rather than the others waiting forever in the next collective.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from sapo_core import codec
from sapo_core.codec import Limits
from sapo_core.errors import BackendError
from sapo_core.records import Completion

__all__ = [
    "ShardError",
    "all_gather_json",
    "call_fingerprint",
    "exchange_completions",
    "exchange_device",
    "shard",
    "world",
]

# The completions come from the other processes of this very job: the limits that guard against a
# hostile peer's payload would only refuse long generations here.
_TRUSTED = Limits(max_payload_bytes=1 << 62, max_text_chars=1 << 62, max_tokens=1 << 62, max_brackets=1 << 62)


class ShardError(BackendError):
    """Another process failed to generate its share of a call (its error is in the message)."""


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes) of the initialised default process group; (0, 1) without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard(items: Sequence[int], rank: int, size: int) -> list[int]:
    """This process's share of ``items``: every ``size``-th one from position ``rank``.

    Strided rather than in blocks, so that when ``items`` are sorted by prompt length each
    process gets long and short prompts alike and they finish together.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a world of {size} processes")
    return list(items[rank::size])


def exchange_device(device: torch.device | str) -> torch.device:
    """Where the exchanged tensors live: the CPU when the group has gloo, else ``device`` (NCCL needs the GPU)."""
    backend = str(dist.get_backend())
    if "gloo" in backend:
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cpu":
        raise BackendError(
            f"the process group's backend is {backend!r}, which cannot move CPU tensors; generate on the "
            'process\'s GPU (inference.device = "auto") or launch with a gloo process group'
        )
    return device


def all_gather_json(value: Any, *, device: torch.device | str = "cpu") -> list[Any]:
    """Every process's ``value`` (plain JSON data), in rank order; a collective: all processes call it.

    Without an initialised group of more than one process: ``[value]``.
    """
    rank, size = world()
    if size == 1:
        return [value]
    where = exchange_device(device)
    data = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    length = torch.tensor([len(data)], dtype=torch.int64, device=where)
    lengths = [torch.zeros_like(length) for _ in range(size)]
    dist.all_gather(lengths, length)
    sizes = [int(n.item()) for n in lengths]
    longest = max(sizes)
    mine = torch.zeros(longest, dtype=torch.uint8, device=where)
    if data:
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(where)
    gathered = [torch.empty(longest, dtype=torch.uint8, device=where) for _ in range(size)]
    dist.all_gather(gathered, mine)
    return [json.loads(t[:n].cpu().numpy().tobytes().decode("utf-8")) for t, n in zip(gathered, sizes)]


def call_fingerprint(parts: Any) -> str:
    """A short digest of a call's inputs (plain JSON data), to check that every process made the same call."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()[:16]


def exchange_completions(
    mine: Mapping[int, Completion],
    total: int,
    *,
    fingerprint: str,
    error: str | None = None,
    device: torch.device | str = "cpu",
) -> list[Completion]:
    """All ``total`` completions of a sharded call, in row order, on every process; a collective.

    ``mine`` maps the row indices this process generated to their completions. ``error``: this
    process failed (``mine`` is then ignored); every process raises `ShardError` naming it, the
    failing one included (it should re-raise its own exception instead, which this leaves to it).
    """
    rank, _ = world()
    if error is not None:
        sent: dict[str, Any] = {"fingerprint": fingerprint, "error": error}
    else:
        sent = {"fingerprint": fingerprint, "rows": [[i, codec.to_data(c)] for i, c in sorted(mine.items())]}
    received = all_gather_json(sent, device=device)
    failed = [f"process {r}: {part['error']}" for r, part in enumerate(received) if "error" in part]
    if failed:
        raise ShardError(
            "generation failed on another process of this distributed launch ("
            + "; ".join(failed)
            + "); see that process's log"
        )
    others = [r for r, part in enumerate(received) if part["fingerprint"] != fingerprint]
    if others:
        raise ShardError(
            f"process {rank} and process(es) {others} called generate with different problems or sampling "
            "parameters; under a distributed launch every process must make the same calls in the same order"
        )
    out: list[Completion | None] = [None] * total
    for part in received:
        for index, data in part["rows"]:
            if not 0 <= index < total or out[index] is not None:
                raise ShardError(
                    f"row {index} was generated twice or is out of range (0..{total - 1}): the "
                    "processes disagree on how the call is shared"
                )
            out[index] = codec.completion_from_data(data, _TRUSTED)
    missing = [i for i, c in enumerate(out) if c is None]
    if missing:
        raise ShardError(f"no process generated rows {missing[:10]}: the processes disagree on how the call is shared")
    return [c for c in out if c is not None]
