"""Child processes of a launcher (`sapo swarm run`'s nodes, `sapo swarm table`'s swarms).

Each child runs in its own session, so a terminal's Ctrl-C reaches the launcher only and the
launcher decides how they stop: SIGINT first (a node flushes its logs on the way out), SIGKILL
after a grace period; on Linux a child is told SIGTERM if the launcher itself dies. While the
launcher runs, SIGINT/SIGTERM raise `Interrupted` in its main loop, so its ``finally`` stops the
children. What a child writes is followed through its files (`JsonlTail`, `tail_lines`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

#: Seconds a node has to exit after SIGINT (flushing its logs) before it is killed.
STOP_GRACE_SECONDS = 10.0


def cpu_count() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def in_child() -> None:
    """In the child, before exec: take signals again (the launcher blocks them while it starts
    nodes, and the mask is inherited), and on Linux get SIGTERM when the launcher dies, even by SIGKILL."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Stoppable(Protocol):
    """A started process that `stop` can end: a node, or a whole swarm's launcher (`sapo swarm table`)."""

    popen: subprocess.Popen[bytes]

    def signal(self, signum: int) -> None: ...


def stop(processes: Sequence[Stoppable], *, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGINT (a node flushes its logs on the way out), then SIGKILL whoever is still there."""
    for process in processes:
        process.signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.signal(signal.SIGKILL)
            process.popen.wait()


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main loop (so `finally` stops the nodes)."""

    def interrupt(signum: int, frame: Any) -> None:
        # Once: a second signal while the nodes are being stopped must not cut that short.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_reason(code: int, *, hint: bool = True) -> str:
    if code >= 0:
        return f"exit code {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    # Nobody here sends SIGKILL before the stop: the kernel's out-of-memory killer is the usual one.
    why = (
        "; out of memory? fewer --nodes or a smaller train.micro_batch_tokens"
        if hint and -code == signal.SIGKILL
        else ""
    )
    return f"killed by {name}{why}"


class JsonlTail:
    """The JSON-object lines appended to a file since the last read (a torn last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        lines = []
        for text in data[: end + 1].decode("utf-8", "replace").splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if isinstance(line, dict) and isinstance(line.get("round"), int):
                lines.append(line)
        return lines


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` non-empty lines of a (possibly large) text file; [] when there is none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-count:]
