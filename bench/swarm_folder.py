"""Publish and collect one swarm round through the real `FolderTransport`, against the swarm's size.

    python bench/swarm_folder.py                       # 1, 2, 4, ..., 256 publishers; local, local+hmac, memory
    python bench/swarm_folder.py --max-nodes 64 --variant local+hmac --markdown
    python bench/swarm_folder.py --max-nodes 64 --variant local --variant s3 --moto   # S3: moto's server on 127.0.0.1
    python bench/swarm_folder.py --variant s3 --s3-root s3://bucket/bench             # any S3 store (AWS_* environment)

For each variant, simulated nodes (one transport each, as separate machines would have) publish
one realistic payload each into a fresh folder, one after another: 8 groups x 8 completions of
~256 tokens of text, with their token ids, as the ``local`` backend publishes them (built with
`sapo_core.records`). Each time N nodes have published (N = 1, 2, 4, ...), a node that just
joined collects the round once
(``collect``: list, read, inflate, validate and, with a secret, check every signature), and
collects it again with nothing changed (``re-collect``: what each poll of a node waiting for
its peers costs, every ``swarm.poll_seconds``).

Growth is stated two ways, both measured in the same run: the exponent k of a least-squares
fit ``time ~ N**k`` over the sizes from 4 up (1 is linear growth), and the per-publisher cost at
the largest N relative to the 1-publisher run of the same variant (1.0 is constant cost).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import fsspec.core
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sapo_core.records import Completion, Group, Message, Problem, RoundPayload
from sapo_gdrive.folder import FolderTransport

EXPERIMENT = "bench"
#: Variant -> (storage, swarm secret).
VARIANTS = {
    "local": ("local", ""),
    "local+hmac": ("local", "bench-secret"),
    "memory": ("memory", ""),
    "memory+hmac": ("memory", "bench-secret"),
    "s3": ("s3", ""),
    "s3+hmac": ("s3", "bench-secret"),
}
# A small model's answers reuse a small vocabulary: text compresses about as well as real output.
_WORDS = (
    "the of and to in is it that for on with as was at by be this are from or an have not we so then "
    "first add subtract multiply total answer step number result sum equals therefore let us check carry "
    "0 1 2 3 4 5 6 7 8 9 10 12 15 20 24 30 42 48 64 100 + - * = <think> </think> <answer> </answer>"
).split()
_VOCAB = 49_152  # SmolLM2's vocabulary size


@attrs.frozen
class Shape:
    groups: int
    completions: int
    tokens: int


def build_payload(node: str, shape: Shape, rng: random.Random) -> RoundPayload:
    """One node's round: distinct problems, texts and token ids per node (nothing dedupes across files)."""
    groups = []
    for g in range(shape.groups):
        a, b = rng.randrange(1000), rng.randrange(1000)
        problem = Problem(
            task="arithmetic",
            id=f"arithmetic-{node}-{g}-{rng.randrange(10**9)}",
            messages=[Message("user", f"What is {a} + {b}? Think, then answer in <answer> tags.")],
            answer=a + b,
        )
        completions = [
            Completion(
                " ".join(rng.choices(_WORDS, k=shape.tokens)),
                num_tokens=shape.tokens,
                token_ids=rng.choices(range(_VOCAB), k=shape.tokens),
            )
            for _ in range(shape.completions)
        ]
        rewards = [float(rng.random() < 0.5) for _ in completions]
        mean = statistics.fmean(rewards)
        groups.append(
            Group(
                problem=problem,
                completions=completions,
                rewards=rewards,
                advantages=[r - mean for r in rewards],
                node=node,
            )
        )
    return RoundPayload(experiment=EXPERIMENT, round=0, node=node, groups=groups, model="bench", created_at=time.time())


def growth(sizes: Sequence[int], seconds: Sequence[float]) -> float:
    """The exponent k of the least-squares fit seconds ~ N**k (log-log), over the sizes >= 4."""
    points = [(math.log(n), math.log(s)) for n, s in zip(sizes, seconds) if n >= 4 and s > 0]
    if len(points) < 2:
        return float("nan")
    mx, my = statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def exponent(sizes: Sequence[int], seconds: Sequence[float]) -> str:
    k = growth(sizes, seconds)
    return "n/a (needs --max-nodes 8 or more)" if math.isnan(k) else f"{k:.2f}"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def collect_rows(
    storage: str,
    secret: str,
    payloads: Sequence[RoundPayload],
    sizes: Sequence[int],
    workdir: Path,
    repeat: int,
    advance: Callable[[], None],
    s3_root: str = "",
) -> list[dict[str, float]]:
    """Publish ``payloads`` one node at a time (a transport each) into one fresh root; at each size in
    ``sizes``, collect the round from ``repeat`` newcomers, each collecting twice."""
    if storage == "local":
        root = (workdir / uuid.uuid4().hex).as_posix()
    elif storage == "s3":
        root = f"{s3_root.rstrip('/')}/{uuid.uuid4().hex}"
    else:
        root = f"memory://bench-{uuid.uuid4().hex}"
    # The folder through fsspec itself, not the transport's internals: the same lines then run
    # against an older FolderTransport too (docs/benchmarks.md's before and after).
    fs, base = fsspec.core.url_to_fs(root)
    folder = f"{base.rstrip('/')}/{EXPERIMENT}"
    per_node: list[float] = []
    rows = []
    for payload in payloads:
        publisher = FolderTransport(root, EXPERIMENT, secret=secret)
        per_node.append(timed(functools.partial(publisher.publish, payload))[0])
        n = len(per_node)
        if n not in sizes:
            continue
        # Best of ``repeat``: other processes share this machine's cores, and they only ever add time.
        collect_s, recollect_s = math.inf, math.inf
        for _ in range(repeat):
            reader = FolderTransport(root, EXPERIMENT, secret=secret)
            for attempt in range(2):
                seconds, result = timed(functools.partial(reader.collect, 0))
                if len(result.payloads) != n or result.rejected:  # a benchmark of a broken collect measures nothing
                    raise SystemExit(
                        f"collect returned {len(result.payloads)} of {n} payloads; refused: {result.rejected[:3]}"
                    )
                if attempt == 0:
                    collect_s = min(collect_s, seconds)
                else:
                    recollect_s = min(recollect_s, seconds)
        size = sum(int(entry["size"]) for entry in fs.ls(f"{folder}/rounds/0", detail=True, refresh=True))
        rows.append(
            {
                "nodes": n,
                "publish_s": sum(per_node),
                "publish_node_ms": 1000 * statistics.median(per_node),
                "collect_s": collect_s,
                "recollect_s": recollect_s,
                "bytes": size,
            }
        )
        advance()
    fs.rm(folder, recursive=True)
    return rows


def start_moto() -> str:
    """moto's S3 server on a free port of 127.0.0.1 (a thread of this process), a fresh bucket in it, and
    the environment s3fs reads (as a user's would be); the bucket's s3:// URL."""
    import logging
    import os

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
    )
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/swarm"


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--max-nodes",
        type=int,
        default=256,
        help="largest swarm (sizes double from 1 up to this, rounded down to a power of 2)",
    )
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument(
        "--variant",
        action="append",
        choices=sorted(VARIANTS),
        help="storage[+hmac] (repeatable; default: local, local+hmac, memory)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="collects per size; the fastest counts")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for docs/benchmarks.md)")
    parser.add_argument("--json", dest="json_path", type=Path, help="also write every row as JSON lines here")
    parser.add_argument(
        "--s3-root",
        default="",
        help="s3://bucket/prefix for the s3 variants (credentials and "
        "endpoint from the environment: AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL...)",
    )
    parser.add_argument(
        "--moto",
        action="store_true",
        help="for the s3 variants, start moto's S3 server on "
        "127.0.0.1 with a fresh bucket (pip install -e 'plugins/sapo_gdrive[test]')",
    )
    return parser


def print_results(console: Console, rows: dict[str, list[dict[str, float]]], shape: Shape, *, markdown: bool) -> None:
    """The table of every variant and size, then how each cost grows with the swarm."""
    console.print(
        f"{shape.groups} groups x {shape.completions} completions x {shape.tokens} tokens per payload; "
        f"one payload per node; the collecting node is a newcomer (cold), then polls again (re-collect)"
    )
    table = Table(box=box.MARKDOWN if markdown else box.SIMPLE_HEAD)
    for header in (
        "variant",
        "nodes",
        "publish ms/node",
        "publish s (all)",
        "collect s",
        "collect ms/node",
        "re-collect s",
        "MiB",
    ):
        table.add_column(header, justify="left" if header == "variant" else "right")
    summary = []
    for variant, measured in rows.items():
        for m in measured:
            n = m["nodes"]
            table.add_row(
                variant,
                f"{n:.0f}",
                f"{m['publish_node_ms']:.1f}",
                f"{m['publish_s']:.3f}",
                f"{m['collect_s']:.3f}",
                f"{1000 * m['collect_s'] / n:.2f}",
                f"{m['recollect_s']:.4f}",
                f"{m['bytes'] / 2**20:.2f}",
                end_section=m is measured[-1],
            )
        ns = [m["nodes"] for m in measured]
        last, first = measured[-1], measured[0]
        # max(): a listing of one file can take less than the clock's resolution
        per_node = (last["collect_s"] / last["nodes"]) / max(first["collect_s"], 1e-9)
        re_per_node = (last["recollect_s"] / last["nodes"]) / max(first["recollect_s"], 1e-9)
        summary.append(
            f"{variant}: collect ~ N^{exponent(ns, [m['collect_s'] for m in measured])}, "
            f"re-collect ~ N^{exponent(ns, [m['recollect_s'] for m in measured])}, "
            f"publish (all) ~ N^{exponent(ns, [m['publish_s'] for m in measured])}; "
            f"per-publisher cost at {last['nodes']:.0f} nodes vs 1: collect x{per_node:.2f}, re-collect x{re_per_node:.2f}"
        )
    console.print(table)
    console.print("\n".join(summary))


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    if args.max_nodes < 1 or args.repeat < 1:
        parser.error("--max-nodes and --repeat must be at least 1")
    variants = args.variant or ["local", "local+hmac", "memory"]
    if any(VARIANTS[v][0] == "s3" for v in variants) and not (args.s3_root or args.moto):
        parser.error("the s3 variants need --s3-root s3://bucket/prefix or --moto")
    if args.moto:
        args.s3_root = start_moto()
    sizes = [2**i for i in range(int(math.log2(args.max_nodes)) + 1)]
    shape = Shape(args.groups, args.completions, args.tokens)
    # Wide enough for the table when the output is a file or a pipe.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    rng = random.Random(0)
    rows: dict[str, list[dict[str, float]]] = {}
    with Progress(console=console, transient=True) as progress, tempfile.TemporaryDirectory() as tmp:
        building = progress.add_task("building payloads", total=sizes[-1])
        payloads = []
        for i in range(sizes[-1]):
            payloads.append(build_payload(f"node-{i:03d}", shape, rng))
            progress.advance(building)
        running = progress.add_task("publish + collect", total=len(variants) * len(sizes))
        for variant in variants:
            storage, secret = VARIANTS[variant]
            progress.update(running, description=variant)
            rows[variant] = collect_rows(
                storage,
                secret,
                payloads,
                sizes,
                Path(tmp),
                args.repeat,
                lambda: progress.advance(running),
                args.s3_root,
            )

    print_results(console, rows, shape, markdown=args.markdown)
    if args.json_path:
        with args.json_path.open("w", encoding="utf-8") as fh:
            for variant, measured in rows.items():
                for m in measured:
                    fh.write(json.dumps({"variant": variant, **m}, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
