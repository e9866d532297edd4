"""sapo's learner under ``accelerate launch`` on N processes (one per GPU) against one process, same batch.

    python bench/learner_ddp.py --shape smollm2-135m --processes 1 --processes 2     # one GPU, then two
    python bench/learner_ddp.py --shape tiny --tokens 32 --steps 1 --threads 1       # the CPU variant (gloo)

Every run starts from the same seeded random weights of the shape and takes ``--warmup`` +
``--steps`` offline GRPO updates on the same global batch (``--problems`` x ``--completions``
completions of ``--tokens`` tokens, bench/learner_step.py's rollouts); under N processes each
rank trains on its 1/N share and DDP averages the gradients, so every run takes the same
updates. Timed: the steps after the warm-up, between barriers (the slowest rank counts).

After its steps each rank writes its weights (safetensors, float32) to the work folder; the
parent checks that every rank of a run holds bit-identical weights, and how far the N-process
weights are from the one-process weights (not bit-equal: each rank sums its own micro-batches
in bf16 and DDP's all-reduce adds in its own order; bounded by a few learning rates).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learner_step  # noqa: E402
import measure  # noqa: E402
import shapes  # noqa: E402

from sapo_core.testing import accelerate_launch  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One rank of a run (under accelerate launch): train, time, save the weights, write a JSON."""
    import torch
    from safetensors.torch import save_file

    from sapo_local.learner import GRPOLearner
    from sapo_local.models import choose_device, load_model, load_tokenizer
    from sapo_local.policy import Policy, prompt_ids
    from sapo_local.settings import GRPOSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = choose_device(args.device)  # the GPU of this rank's LOCAL_RANK, or the CPU
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    spec = f"random:{args.folder}"
    tokenizer = load_tokenizer(spec)
    policy = Policy(
        spec=spec,
        model=load_model(spec, device=dev, dtype=torch.float32),
        tokenizer=tokenizer,
        device=dev,
        dtype=torch.float32,
    )
    groups = learner_step.rollouts(tokenizer, args)
    widest = max(len(prompt_ids(tokenizer, g.problem)) for g in groups) + args.tokens
    settings = GRPOSettings(
        micro_batch_tokens=args.micro_rows * widest,
        gradient_checkpointing=args.gradient_checkpointing,
        shard_optimizer={"auto": "auto", "on": True, "off": False}[args.shard_optimizer],
    )
    learner = GRPOLearner(
        policy,
        settings,
        total_steps=args.warmup + args.steps,
        max_completion_length=args.tokens,
        seed=0,
        node="bench",
        optimizer_saved_after=lambda round: False,  # no checkpoints here: a sharded optimizer is never gathered
    )
    accelerator = learner.accelerator
    times: list[float] = []
    metrics: dict = {}
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            measure.reset_peak(dev)
        accelerator.wait_for_everyone()
        with measure.timed(dev, times if step >= args.warmup else []):
            metrics = learner.train(groups, round=step)
            accelerator.wait_for_everyone()
    rank = accelerator.process_index
    state, seen = {}, set()
    for name, tensor in policy.model.state_dict().items():
        if tensor.data_ptr() not in seen:  # tied weights (embeddings = LM head) once
            seen.add(tensor.data_ptr())
            state[name] = tensor.detach().float().cpu().contiguous()
    save_file(state, str(Path(args.out) / f"rank{rank}.safetensors"))
    completion_tokens = args.problems * args.completions * args.tokens
    (Path(args.out) / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world": accelerator.num_processes,
                "rank": rank,
                "device": measure.device_name(dev),
                "step_s": median(times),
                "steps_s": times,
                "completion_tok_s": completion_tokens / median(times),
                "peak_mib": measure.peak_mib(dev),
                "micro_batches": metrics.get("micro_batches"),
                "loss": metrics.get("loss"),
                "grad_norm": metrics.get("grad_norm"),
            }
        )
    )


def launch(args: argparse.Namespace, processes: int, folder: Path, out: Path, forwarded: list[str]) -> dict:
    """One run under accelerate launch; its ranks' reports, or the error that stopped it."""
    import torch

    out.mkdir(parents=True)
    gpus = torch.cuda.device_count() if args.device in ("auto", "cuda") else 0
    if processes > max(gpus, 1) and gpus:
        return {"error": f"{processes} processes need {processes} GPUs; this machine has {gpus}"}
    command = [
        *accelerate_launch(processes, gpus=bool(gpus)),
        __file__,
        "--worker",
        "--folder",
        str(folder),
        "--out",
        str(out),
        *forwarded,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or os.environ.get("OMP_NUM_THREADS", "1"))}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: " + " | ".join(done.stderr.strip().splitlines()[-15:])}
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]
    return {
        "ranks": ranks,
        **ranks[0],
        "step_s": max(r["step_s"] for r in ranks),
        "peak_mib": max(r["peak_mib"] for r in ranks),
    }


def compare_weights(run: Path, processes: int, single: Path | None) -> dict:
    """Whether every rank of a run holds the same weights, and how far they are from one process's."""
    from safetensors import safe_open

    files = [safe_open(str(run / f"rank{r}.safetensors"), "pt") for r in range(processes)]
    identical, largest, base = True, 0.0, None
    if single is not None:
        base = safe_open(str(single / "rank0.safetensors"), "pt")
    for name in files[0].keys():
        first = files[0].get_tensor(name)
        identical &= all(bool((f.get_tensor(name) == first).all()) for f in files[1:])
        if base is not None:
            largest = max(largest, float((first - base.get_tensor(name)).abs().max()))
    return {"ranks_identical": identical, "max_abs_diff_vs_one": largest if base is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shapes.add_arguments(parser, tokens_help="completion length (every completion)")
    measure.add_arguments(parser)
    parser.add_argument("--processes", type=int, action="append", help="processes (GPUs) per run; default 1 and 2")
    parser.add_argument("--micro-rows", type=int, default=16, help="completions per micro-batch on each rank")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--shard-optimizer",
        choices=("auto", "on", "off"),
        default="auto",
        help="train.shard_optimizer: AdamW's moments split over the processes (auto: with several)",
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--keep", help="keep each run's weights and reports under this folder")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    counts = sorted(set(args.processes or (1, 2)))
    if 1 not in counts:
        counts.insert(0, 1)  # the reference every other run is measured against
    rows = args.problems * args.completions
    if any(rows % n for n in counts):
        parser.error(f"every process count must divide problems x completions ({rows})")
    folder = shapes.from_arguments(args)  # built once here, so the ranks do not race to write it
    forwarded = measure.arguments_without("--processes", "--keep")
    with tempfile.TemporaryDirectory(prefix="sapo-ddp-") as scratch:
        work = Path(args.keep) if args.keep else Path(scratch)
        results = {}
        for n in counts:
            results[n] = launch(args, n, folder, work / f"{n}-processes", forwarded)
            if "error" not in results[n]:
                results[n].update(
                    compare_weights(
                        work / f"{n}-processes",
                        n,
                        work / "1-processes" if n > 1 and "error" not in results[1] else None,
                    )
                )
            print(f"{n}: { {k: v for k, v in results[n].items() if k != 'ranks'} }", flush=True)
    ok = {n: r for n, r in results.items() if "error" not in r}
    if 1 not in ok:
        raise SystemExit("the one-process run failed: " + results[1]["error"])
    one = ok[1]
    header = (
        "processes",
        "step s",
        "completion tok/s",
        "vs 1 process",
        "scaling efficiency",
        "peak MiB per rank",
        "ranks identical",
        "max abs diff vs 1 process",
    )
    body = [
        (
            n,
            r["step_s"],
            rows * args.tokens / r["step_s"],
            f"x{one['step_s'] / r['step_s']:.2f}",
            f"{one['step_s'] / r['step_s'] / n:.0%}",
            r["peak_mib"],
            "yes" if r["ranks_identical"] else "NO",
            "-" if r["max_abs_diff_vs_one"] is None else f"{r['max_abs_diff_vs_one']:.2e}",
        )
        for n, r in ok.items()
    ]
    print(
        f"\n{args.shape}, {args.problems}x{args.completions}x{args.tokens} tokens per step (the global batch), "
        f"{args.micro_rows} rows per micro-batch per rank, checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
        f"optimizer sharding {args.shard_optimizer}, {one['device']}"
    )
    print(measure.table(header, body))
    failed = [n for n, r in results.items() if "error" in r]
    if failed or not all(r["ranks_identical"] for r in ok.values()):
        raise SystemExit(f"failed runs: {failed}" if failed else "ranks hold different weights after the step")


if __name__ == "__main__":
    main()
