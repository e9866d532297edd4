"""One whole offline node round (generate, score, train), timed by phase.

    python bench/node_round.py --model random:smollm2-135m --problems 8 --completions 8 --tokens 256
    python bench/node_round.py ... --variant full --variant lora --variant kl --variant checkpointing

A model with random weights (``random:<spec>``, same shape, same speed) scores 0 on every
task, and a group whose rewards are all equal carries no gradient, so the learner would skip
it. For throughput only, this script adds the reward ``bench-hash``: a fixed pseudo-random
score per completion text, so every group trains, as groups of a real run that learns do.
Prints a table of seconds per phase and tokens/s, and the JSON of each variant's metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections.abc import Sequence

from sapo_core import hookimpl
from sapo_core.config import Config, load_config
from sapo_core.node import Node
from sapo_core.plugins import Plugins

VARIANTS = {
    "full": [],
    "lora": ["train.lora=true"],
    "kl": ["train.beta=0.04", "train.loss_type=dapo"],
    "checkpointing": ["train.gradient_checkpointing=true"],
    "static": ["inference.cache_implementation=static"],
    "master-weights": ["inference.generation_dtype=master"],
    "static-master-weights": ["inference.cache_implementation=static", "inference.generation_dtype=master"],
}


class HashReward:
    """A fixed score in [0, 1) per completion text: variance without meaning (benchmarks only)."""

    def score(self, problem, completions) -> list[float]:
        return [hash_score(c.text) for c in completions]


def hash_score(text: str) -> float:
    """The benchmark reward of one completion's text: its SHA-256 read as a fraction in [0, 1)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32


class BenchPlugin:
    @hookimpl
    def register_rewards(self, register) -> None:
        register("bench-hash", lambda settings, context: HashReward(), description="benchmarks only")


def bench_config(
    args: argparse.Namespace, sets: Sequence[str], workdir: str, *, rounds: int = 1
) -> tuple[Config, Plugins]:
    """The config of an offline run of ``rounds`` rounds with the hash reward (``sets`` applied last); its plugins.

    ``args`` gives ``model``, ``problems``, ``completions``, ``tokens`` and ``micro_batch_tokens``.
    """
    plugins = Plugins()
    plugins.load()
    plugins.register(BenchPlugin(), name="bench")
    config = load_config(
        env={},
        sets=[
            f"model.name={args.model}",
            f"run.rounds={rounds}",
            f"run.workdir={workdir}",
            "swarm.transport=none",
            f"tasks.problems_per_round={args.problems}",
            f"inference.num_completions={args.completions}",
            f"inference.max_new_tokens={args.tokens}",
            "rewards.weights={bench-hash=1.0}",
            "eval.every=0",
            "checkpoint.every=1000",
            f"train.micro_batch_tokens={args.micro_batch_tokens}",
            *sets,
        ],
    )
    return config, plugins


def run_variant(args: argparse.Namespace, sets: Sequence[str], workdir: str) -> dict:
    config, plugins = bench_config(args, sets, workdir, rounds=args.rounds)
    started = time.perf_counter()
    metrics = Node.from_config(config, plugins).run()
    metrics["time/total_with_setup"] = time.perf_counter() - started
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:smollm2-135m")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--micro-batch-tokens", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=1, help="rounds per variant; the table shows the last")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="extra config, e.g. inference.batch_size=32"
    )
    args = parser.parse_args()
    rows = []
    for variant in args.variant or ["full"]:
        with tempfile.TemporaryDirectory() as workdir:
            metrics = run_variant(args, [*VARIANTS[variant], *args.sets], workdir)
        print(json.dumps({"variant": variant, **metrics}, sort_keys=True, default=str))
        rows.append((variant, metrics))
    header = ("variant", "generate s", "gen tok/s", "score s", "train s", "train tok/s", "trained", "round s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for variant, m in rows:
        cells = [
            variant,
            f"{m.get('time/generate', 0):.2f}",
            f"{m.get('inference/tokens_per_second', 0):.0f}",
            f"{m.get('time/score', 0):.3f}",
            f"{m.get('time/train', 0):.2f}",
            f"{m.get('train/tokens_per_second', 0):.0f}",
            f"{m.get('train/completions', 0):.0f}",
            f"{m.get('time/round', 0):.2f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
