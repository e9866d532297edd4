"""What makes the learner's CUDA peak: the allocator's own count against the tensors alive at that moment.

    SAPO_TEST_MODEL=random:build/smollm2-shape python bench/cuda_peak.py       # a GPU; run from the repository

The setting of the GPU test of the memory plan (plugins/sapo_local/tests/test_gpu.py: one completion per
micro-batch, eager layers and log-prob kernels, two steps), with CUDA's allocator history recorded.
Printed: the plan and its estimated peak; ``torch.cuda.max_memory_allocated``; the peak of the live
tensors replayed from the history, and where those tensors were made; every cuBLAS workspace the steps
allocated, with the Python code that asked for it (none: autograd's backward thread). The allocator's
peak less the tensors' is what `sapo_local.activation_checkpointing.CUDA_SCRATCH` plans for.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "sapo_local" / "tests"))


def site(event: dict[str, Any], count: int = 3) -> str:
    """The Python frames that made an allocation; C++ frames where there are none (autograd's thread)."""
    frames = event.get("frames", [])
    python = [
        f"{f['filename'].split('/')[-1]}:{f['line']} {f['name']}" for f in frames if f["filename"].endswith(".py")
    ]
    if python:
        return " < ".join(python[:count])
    return "(no Python: autograd's thread) " + " < ".join(f["name"][:50] for f in frames[:12])[-160:]


def replay(events: list[dict[str, Any]], start: int) -> tuple[int, dict[int, dict[str, Any]]]:
    """The largest sum of live tensors over the history (from ``start`` bytes), and those tensors then."""
    live: dict[int, dict[str, Any]] = {}
    now, best, at_best = start, start, {}
    for event in events:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            now += event["size"]
        elif event["action"] == "free_requested" and event["addr"] in live:
            now -= live.pop(event["addr"])["size"]
        if now > best:
            best, at_best = now, dict(live)
    return best, at_best


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench/cuda_peak.py reads CUDA's allocator: it needs a GPU")
    import test_gpu

    from sapo_local.learner import GRPOLearner
    from sapo_local.settings import GRPOSettings

    policy = test_gpu.policy_for("worker")
    settings = GRPOSettings(lr=1e-4, micro_batch_tokens=1, compile_layers=False, compile_logprobs=False)
    learner = GRPOLearner(policy, settings, total_steps=4, max_completion_length=32)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=5_000_000)
    for round in range(2):  # the second holds AdamW's moments through its backward
        learner.train(test_gpu.scored_groups(), round)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    plan, allocator = learner.memory_plan, torch.cuda.max_memory_allocated()
    events = snapshot["device_traces"][0]
    tensors, at_peak = replay(events, start)
    print(plan)
    print(f"planned peak {plan.peak():,} B; allocator's peak {allocator:,} B; live tensors' peak {tensors:,} B")
    print(f"the allocator's peak beyond the tensors': {(allocator - tensors) / 2**20:.1f} MiB ({len(events):,} events)")
    sizes: collections.Counter[str] = collections.Counter()
    for event in at_peak.values():
        sizes[site(event)] += event["size"]
    print("tensors alive at their peak, by where they were made:")
    for where, size in sizes.most_common(14):
        print(f"{size / 2**20:9.1f} MiB  {where[:300]}")
    print("cuBLAS workspaces the steps allocated:")
    for index, event in enumerate(events):
        names = " ".join(frame["name"] for frame in event.get("frames", []))
        if event["action"] == "alloc" and ("setWorkspaceForHandle" in names or "BlasLtWorkspace" in names):
            print(f"event {index}: {event['size'] / 2**20:.1f} MiB, {site(event, 5)[:300]}")


if __name__ == "__main__":
    main()
