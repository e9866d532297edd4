"""Rollouts per second of the sapo-openai client against the number of requests in flight.

A local OpenAI-compatible server (aiohttp, its own process) answers every chat completion after a
fixed added latency L, so the ideal rate with k requests in flight is k / L. For k = 1 .. 128 this
times the `openai` inference backend generating ``--rollouts-per-slot`` x k completions, side by
side with the one-request-at-a-time loop most people write first (the sync SDK in a for loop),
whose rate is 1 / L whatever k is.

    .venv/bin/python bench/openai_inflight.py                 # the table in docs/benchmarks.md
    .venv/bin/python bench/openai_inflight.py --latency 0.2 --max-in-flight 64 --json

Needs aiohttp (``pip install -e 'plugins/sapo_openai[test]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ANSWER = "<think>3 + 4 is 7.</think>\n<answer>7</answer>"


def serve(port: int, latency: float) -> None:
    """The fixed-latency server: a chat completion (one choice, as many real servers do) after ``latency`` s."""
    from aiohttp import web

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(latency)
        return web.json_response(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32},
            }
        )

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    # backlog: 128 connections opening at once must not wait on the kernel's accept queue
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


def start_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "sapo_openai" / "src"))
    from sapo_openai.testing import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--latency", str(latency)])
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the benchmark server did not start")


def problems(count: int) -> list:
    from sapo_core.records import Message, Problem

    return [
        Problem(task="arithmetic", id=f"bench-{i}", answer=7, messages=[Message("user", "What is 3 + 4?")])
        for i in range(count)
    ]


def sapo_rate(url: str, in_flight: int, rollouts: int) -> float:
    """Completions per second of the `openai` backend with ``in_flight`` requests at once (G=4 per problem)."""
    from sapo_core.interfaces import BackendContext, SamplingParams
    from sapo_openai.inference import build_inference
    from sapo_openai.settings import APISettings

    backend = build_inference(
        "openai", APISettings(base_url=url, max_in_flight=in_flight, use_n=False), BackendContext(model="bench")
    )
    backend.generate(problems(1), 1, SamplingParams(max_new_tokens=16))  # imports and first connection: not timed
    batch = problems(max(1, rollouts // 4))
    started = time.perf_counter()
    out = backend.generate(batch, 4, SamplingParams(max_new_tokens=16))
    elapsed = time.perf_counter() - started
    done = sum(len(group) for group in out)
    assert done == 4 * len(batch), f"{done} of {4 * len(batch)} completions"
    return done / elapsed


def naive_rate(url: str, rollouts: int) -> float:
    """The first wrapper people write: the sync SDK, one request after the other."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused")
    client.models.list()  # the first connection: not timed
    started = time.perf_counter()
    for _ in range(rollouts):
        client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": "What is 3 + 4?"}], max_tokens=16
        )
    return rollouts / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.5, help="the server's added latency per request, s")
    parser.add_argument("--max-in-flight", type=int, default=128, help="the largest k (powers of two from 1)")
    parser.add_argument("--rollouts-per-slot", type=int, default=8, help="completions per point = this x k (>= 16)")
    parser.add_argument("--naive-rollouts", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.latency)
        return
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    process, url = start_server(args.latency)
    try:
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if k <= args.max_in_flight]
        rows = []
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("naive loop", total=len(ks) + 1)
            naive = naive_rate(url, args.naive_rollouts)
            progress.advance(task)
            for k in ks:
                progress.update(task, description=f"{k} in flight")
                rate = sapo_rate(url, k, max(16, args.rollouts_per_slot * k))
                ideal = k / args.latency
                rows.append({"in_flight": k, "ideal": ideal, "sapo": rate, "efficiency": rate / ideal, "naive": naive})
                progress.advance(task)
    finally:
        process.terminate()
        process.wait()
    if args.json:
        print(json.dumps({"latency_s": args.latency, "cpus": os.cpu_count(), "rows": rows}, indent=2))
        return
    print(f"latency {args.latency} s per request, {os.cpu_count()} CPUs\n")
    print("| in flight | ideal (k / L) rollouts/s | sapo-openai rollouts/s | of ideal | one-at-a-time rollouts/s |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['in_flight']} | {row['ideal']:.1f} | {row['sapo']:.1f} | {row['efficiency']:.0%} | {row['naive']:.2f} |"
        )


if __name__ == "__main__":
    main()
