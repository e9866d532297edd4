"""One process of test_sharded_generation's gloo group (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment).

Usage: shard_worker.py OUT_DIR. Exercises `sapo_local.distributed` and a sharded
`LocalInference.generate`, and writes what it saw to OUT_DIR/rank<r>.json for the test to check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from sapo_core import codec
from sapo_core.interfaces import SamplingParams
from sapo_core.records import Completion, Message, Problem
from sapo_local import distributed
from sapo_local.generation import LocalInference, LocalInferenceSettings
from sapo_local.models import load_tokenizer, tiny_llama
from sapo_local.policy import Policy

# Rows split unevenly and out of order; unicode, empty text, None fields and exact floats.
COMPLETIONS = [
    Completion(
        text='héllo wörld 🌍 中文 \u202e\x00 "quoted" \\ back',
        finish_reason="stop",
        num_tokens=3,
        token_ids=(1, 2, 3),
        logprobs=(-0.1, -1e-300, -12.345678901234567),
    ),
    Completion(text="", finish_reason="length"),
    Completion(text="plain", num_tokens=0, token_ids=(), reasoning="thinking… ✓"),
    Completion(text="\n\t ", finish_reason="stop", num_tokens=None, token_ids=None, logprobs=None, reasoning=None),
    Completion(text="last", finish_reason="length", num_tokens=1, token_ids=(7,), reasoning=""),
]
SHARES = {0: [3, 0], 1: [1, 4, 2]}

PROBLEMS = [
    Problem(task="arithmetic", id="p1-1", messages=[Message("user", "What is 1 + 1?")], answer=2),
    Problem(
        task="arithmetic", id="p2-2", messages=[Message("user", "Compute (17 * 3) - 4 + 12, then add 9.")], answer=0
    ),
    Problem(task="arithmetic", id="p3-3", messages=[Message("user", "2*3?")], answer=6),
]
PARAMS = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=11)


def tiny_backend(batch_size: int) -> LocalInference:
    """The tiny policy of test_generation (tiny_llama's fixed seed: the same weights in every process)."""
    tokenizer = load_tokenizer("smollm2-135m")
    policy = Policy(
        spec="tiny",
        model=tiny_llama(len(tokenizer)),
        tokenizer=tokenizer,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    return LocalInference(policy, LocalInferenceSettings(batch_size=batch_size))


def failure_message(call) -> str:
    try:
        call()
    except distributed.ShardError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 (reported to the test, which checks the type)
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    backend = tiny_backend(batch_size=2)
    report: dict = {"collective_before": backend.collective, "world_before": list(distributed.world())}
    dist.init_process_group("gloo")
    rank, size = distributed.world()
    report.update(world=[rank, size], collective=backend.collective)

    report["gathered"] = distributed.all_gather_json({"rank": rank, "text": "ünïcödé ✓" * rank, "none": None})
    report["gathered_empty"] = distributed.all_gather_json("" if rank == 0 else ["x"])

    mine = {i: COMPLETIONS[i] for i in SHARES[rank]}
    exchanged = distributed.exchange_completions(mine, len(COMPLETIONS), fingerprint="same")
    report["exchanged"] = [codec.to_data(c) for c in exchanged]
    report["exchanged_equal"] = exchanged == COMPLETIONS
    # Fewer rows than processes: rank 1 has none to send.
    report["one_row"] = [
        codec.to_data(c)
        for c in distributed.exchange_completions({0: COMPLETIONS[0]} if rank == 0 else {}, 1, fingerprint="same")
    ]

    report["error"] = failure_message(
        lambda: distributed.exchange_completions(
            {}, 1, fingerprint="same", error="RuntimeError: out of cheese" if rank == 1 else None
        )
    )
    report["mismatch"] = failure_message(
        lambda: distributed.exchange_completions(
            {0: COMPLETIONS[0]} if rank == 0 else {}, 1, fingerprint=f"call-{rank}"
        )
    )
    report["overlap"] = failure_message(
        lambda: distributed.exchange_completions({0: COMPLETIONS[0]}, 1, fingerprint="same")
    )
    report["missing"] = failure_message(lambda: distributed.exchange_completions({}, 2, fingerprint="same"))

    made: list[int] = []
    generate_batch = backend._generate_batch

    def counted(rows, params, *rest):
        made.append(len(rows))
        return generate_batch(rows, params, *rest)

    backend._generate_batch = counted  # type: ignore[method-assign]
    generated = backend.generate(PROBLEMS, 3, PARAMS)
    report["batches_here"] = list(made)  # later calls add to it
    report["generated"] = [[codec.to_data(c) for c in cs] for cs in generated]
    report["meter"] = backend.round_metrics()
    # A process that was given other problems must not receive the others' completions.
    problems = PROBLEMS if rank == 0 else PROBLEMS[::-1]
    report["other_problems"] = failure_message(lambda: backend.generate(problems, 3, PARAMS))
    report["empty_call"] = backend.generate([], 3, PARAMS)
    # A failing process tells the others; it raises its own error.
    if rank == 1:

        def broken(*args, **kwargs):
            raise RuntimeError("the GPU caught fire")

        backend._generate_batch = broken  # type: ignore[method-assign]
    report["failed_call"] = failure_message(lambda: backend.generate(PROBLEMS, 3, PARAMS))
    dist.barrier()
    dist.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    assert os.environ["WORLD_SIZE"] == str(size)


if __name__ == "__main__":
    main()
