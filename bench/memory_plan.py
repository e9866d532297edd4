"""The learner's memory plan (``train.gradient_checkpointing = "auto"``) against the peak its steps reach.

    python bench/memory_plan.py --shape qwen2-0.5b --tokenizer build/smollm2-shape            # a GPU
    python bench/memory_plan.py --shape smollm2-135m --problems 2 --tokens 64 --threads 2     # the CPU

sapo's learner on the shape's random weights and learner_step.py's batch, ``--micro-rows``
completions per micro-batch, planned for a budget (`sapo_local.activation_checkpointing`).
First a roomy budget (no layer needs to recompute), whose plan gives the estimated peak for any
number of checkpointed layers; then budgets between those estimates, so that half and all of the
layers checkpoint (or ``--budget`` GiB, repeated). Each budget in a process of its own: ``--steps``
steps, the peak measured over the last (it holds AdamW's moments through its backward). On a GPU
the CUDA allocator's peak; on the CPU the live tensors, from the profiler's memory events, on top
of the weights and optimizer state (the process's resident set would count the libraries and
malloc's holes too). A ratio planned / measured >= 1 is a plan that errs on the side of memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learner_step  # noqa: E402
import measure  # noqa: E402
import shapes  # noqa: E402

ROOMY_GIB = 1e6


def live_peak_above(step: Any) -> int:
    """Bytes of CPU tensors ``step()`` holds at its peak beyond those live before it (profiler memory events)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return peak


def worker(args: argparse.Namespace) -> None:
    import torch

    from sapo_local.activation_checkpointing import tensor_bytes
    from sapo_local.learner import GRPOLearner
    from sapo_local.models import load_model, load_tokenizer
    from sapo_local.policy import Policy, prompt_ids
    from sapo_local.settings import GRPOSettings

    dev = measure.worker_device(args)
    spec = f"random:{shapes.from_arguments(args)}"
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, device=dev, dtype=torch.float32)
    policy = Policy(spec=spec, model=model, tokenizer=tokenizer, device=dev, dtype=torch.float32)
    groups = learner_step.rollouts(tokenizer, args)
    widest = max(len(prompt_ids(tokenizer, g.problem)) for g in groups) + args.tokens
    settings = GRPOSettings(
        micro_batch_tokens=args.micro_rows * widest,
        memory_budget_gib=float(args.worker),
        compile_layers=args.compile_layers,
    )
    learner = GRPOLearner(policy, settings, total_steps=args.steps, max_completion_length=args.tokens, node="bench")
    for step in range(args.steps - 1):
        learner.train(groups, round=step)
    measure.sync(dev)
    started = time.perf_counter()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        learner.train(groups, round=args.steps - 1)
        measure.sync(dev)
        measured = torch.cuda.max_memory_allocated(dev)
    else:
        state = [t for entry in learner.optimizer.state.values() for t in entry.values() if torch.is_tensor(t)]
        before = tensor_bytes([*model.parameters(), *model.buffers(), *state])
        measured = before + live_peak_above(lambda: learner.train(groups, round=args.steps - 1))
    seconds = time.perf_counter() - started
    plan = learner.memory_plan
    if plan is None:
        raise SystemExit("the learner made no memory plan (see its log)")
    measure.emit(
        {
            "budget_gib": float(args.worker),
            "checkpointed": plan.checkpointed,
            "layers": plan.footprint.layers,
            "planned_mib": plan.peak() / 2**20,
            "measured_mib": measured / 2**20,
            "peaks_mib": [plan.peak(k) / 2**20 for k in range(plan.footprint.layers + 1)],
            "step_s": seconds,
            "device": measure.device_name(dev),
        }
    )


def budgets_between(peaks_mib: list[float]) -> list[float]:
    """Budgets (GiB) in which the plan checkpoints half, then all, of the layers (`activation_checkpointing.USABLE`)."""
    from sapo_local.activation_checkpointing import USABLE

    layers = len(peaks_mib) - 1
    out = []
    for count in sorted({layers // 2, layers}):
        if count:
            fits, short = peaks_mib[count], peaks_mib[count - 1]
            out.append((fits + short) / 2 / USABLE / 1024)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shapes.add_arguments(parser, tokens_help="completion length (every completion)")
    measure.add_arguments(parser)
    parser.add_argument("--micro-rows", type=int, default=16, help="completions per micro-batch")
    parser.add_argument("--steps", type=int, default=2, help="the peak is measured over the last")
    parser.add_argument("--budget", type=float, action="append", help="GiB; default: from a roomy plan")
    parser.add_argument("--compile-layers", action="store_true", help="train.compile_layers (the plan measures eager)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be 2 or more: the last step's peak is measured with AdamW's moments held")
    if args.worker:
        return worker(args)
    forwarded = measure.arguments_without("--budget")
    results = []
    for budget in args.budget or [ROOMY_GIB]:
        results.append(measure.run_worker(__file__, [str(budget), *forwarded], timeout=args.timeout))
        print(f"{budget:g}: {results[-1]}", flush=True)
    if not args.budget and "error" not in results[0]:
        for budget in budgets_between(results[0]["peaks_mib"]):
            results.append(measure.run_worker(__file__, [str(budget), *forwarded], timeout=args.timeout))
            print(f"{budget:g}: {results[-1]}", flush=True)
    ok = [r for r in results if "error" not in r]
    if not ok:
        raise SystemExit("no plan ran")
    header = ("budget GiB", "layers checkpointed", "planned MiB", "measured MiB", "planned / measured", "step s")
    body = [
        (
            "roomy" if r["budget_gib"] == ROOMY_GIB else r["budget_gib"],
            f"{r['checkpointed']} of {r['layers']}",
            r["planned_mib"],
            r["measured_mib"],
            f"x{r['planned_mib'] / r['measured_mib']:.2f}",
            r["step_s"],
        )
        for r in ok
    ]
    print(
        f"\n{args.shape}, {args.problems}x{args.completions}x{args.tokens} tokens, {args.micro_rows} rows per "
        f"micro-batch, compiled layers {'on' if args.compile_layers else 'off'}, {ok[0]['device']}"
    )
    print(measure.table(header, body))


if __name__ == "__main__":
    main()
