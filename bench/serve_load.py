"""Load test of a `sapo serve` server on this machine: requests per second it serves.

    SAPO_SERVE_API_KEY=... python bench/serve_load.py --url http://127.0.0.1:8080 --requests 200 --seconds 60

Bounded in count (``--requests``) and time (``--seconds``), and loopback only: it refuses any
other host, so it cannot be pointed at someone else's server. Two kinds of request:

* ``status``: ``GET /v1/status``, the HTTP stack alone (auth, rate limit, JSON);
* ``cycle``: one prompt's ``POST /v1/rollouts`` (G completions from the model) then its rewards'
  ``POST /v1/rewards``; the server trains whenever enough groups are complete.

Prints one JSON object: per kind, requests done, errors, seconds, requests/s and latency
percentiles. Run the server with a --rate above what you measure, or you measure the limiter.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from rich.progress import Progress

from sapo_core.remote import RemoteError, RemoteTrainer


def loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(url: str, kind: str, requests: int, seconds: float, concurrency: int) -> dict:
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def client() -> RemoteTrainer:
        if not hasattr(local, "trainer"):
            local.trainer = RemoteTrainer(url, timeout=max(5.0, seconds), retries=30)  # waits out 503 "learner busy"
        return local.trainer

    def one(index: int, progress: Progress, task: int) -> None:
        if time.monotonic() > deadline:
            return
        started = time.perf_counter()
        try:
            if kind == "status":
                client().status()
            else:
                (group,) = client().rollouts([f"Sort these words alphabetically: pear apple fig {index}"])
                client().post_rewards({r.rollout_id: float(len(r.text) % 3) / 2 for r in group.rollouts})
        except (RemoteError, ValueError) as exc:
            with lock:
                errors.append(str(exc)[:200])
        else:
            with lock:
                latencies.append(time.perf_counter() - started)
        progress.advance(task)

    started = time.perf_counter()
    with Progress(transient=True) as progress, ThreadPoolExecutor(concurrency) as pool:
        task = progress.add_task(f"{kind} x{requests}", total=requests)
        for future in [pool.submit(one, i, progress, task) for i in range(requests)]:
            future.result()
    elapsed = time.perf_counter() - started
    done = len(latencies)
    ordered = sorted(latencies) or [0.0]
    return {
        "kind": kind,
        "requests": done,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(done / elapsed, 2) if elapsed else 0.0,
        "latency_p50_ms": round(1000 * statistics.median(ordered), 1),
        "latency_p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "concurrency": concurrency,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Requests per second of a sapo serve server on 127.0.0.1.")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--requests", type=int, default=200, help="per kind, at most 5000")
    parser.add_argument("--seconds", type=float, default=60.0, help="per kind, at most 600")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kinds", default="status,cycle")
    args = parser.parse_args(argv)
    if not loopback(args.url):
        parser.error(f"{args.url} is not a loopback address: this load test only runs against 127.0.0.1")
    if not (1 <= args.requests <= 5000 and 0 < args.seconds <= 600 and 1 <= args.concurrency <= 64):
        parser.error("bounds: 1 <= --requests <= 5000, 0 < --seconds <= 600, 1 <= --concurrency <= 64")
    results = {
        kind: run(args.url, kind, args.requests, args.seconds, args.concurrency) for kind in args.kinds.split(",")
    }
    with RemoteTrainer(args.url) as trainer:
        results["server"] = trainer.metrics()
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
