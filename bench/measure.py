"""What every benchmark here needs: one process per measurement, its peak memory, a table.

Each measured variant runs in a fresh Python process (the parent re-runs its own script with
``--worker``), so one variant's allocations, caches and compiled kernels never count in
another's figures. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU it
is the process's peak resident set (VmHWM), reset through ``/proc/self/clear_refs`` where the
measured part starts, so it counts what the variant holds, libraries and weights included.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s), for MFU.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
RESULT_PREFIX = "BENCH-RESULT "


def device(preference: str = "auto") -> Any:
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def worker_device(args: argparse.Namespace) -> Any:
    """The device a worker measures on (``--device``), torch's CPU threads set first (``--threads``)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return device(args.device)


def sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _vm_hwm_mib() -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def reset_peak(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_mib(dev: Any) -> float:
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return _vm_hwm_mib()


@contextmanager
def timed(dev: Any, into: list[float]) -> Iterator[None]:
    """Seconds of the block, the device's queued work included."""
    sync(dev)
    started = time.perf_counter()
    yield
    sync(dev)
    into.append(time.perf_counter() - started)


def bf16_peak_tflops(dev: Any) -> float | None:
    import torch

    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def device_name(dev: Any) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({torch.get_num_threads()} threads)"


def emit(result: dict[str, Any]) -> None:
    """A worker's result: one JSON line the parent picks out of its output."""
    print(RESULT_PREFIX + json.dumps(result, sort_keys=True), flush=True)


def run_worker(script: str, argv: Sequence[str], *, timeout: float | None = None) -> dict[str, Any]:
    """Runs ``script --worker ...`` in a fresh interpreter; its result, or the error that stopped it."""
    command = [sys.executable, script, "--worker", *argv]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
    return {"error": f"exit {done.returncode}: " + " | ".join(tail)}


def arguments_without(*options: str) -> list[str]:
    """The script's arguments less the given options and their values, to forward to its workers."""
    forwarded, skip = [], False
    for argument in sys.argv[1:]:
        if skip or argument in options:
            skip = argument in options
            continue
        if not argument.startswith(tuple(option + "=" for option in options)):
            forwarded.append(argument)
    return forwarded


def run_each(script: str, option: str, chosen: Sequence[str], *, timeout: float | None, what: str) -> dict[str, Any]:
    """Runs one worker per chosen variant with the parent's other arguments; the results that ran.

    ``option`` (e.g. ``--variant``) is the parent's to choose, so its occurrences are not forwarded.
    Exits with a message when none ran.
    """
    forwarded = arguments_without(option)
    results = {}
    for name in chosen:
        results[name] = run_worker(script, [name, *forwarded], timeout=timeout)
        print(f"{name}: {results[name]}", flush=True)
    ok = {name: result for name, result in results.items() if "error" not in result}
    if not ok:
        raise SystemExit(f"no {what} ran")
    return ok


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, ready for docs/benchmarks.md."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, *, warmup: int = 1) -> None:
    """Where and how a worker runs."""
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs first (compilation, allocator)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per worker process")
