"""One learner step (forward, backward, optimizer update) of sapo's ``grpo`` learner against TRL's GRPOTrainer.

    python bench/learner_step.py --shape smollm2-135m --problems 8 --completions 8 --tokens 256
    python bench/learner_step.py --shape tiny --tokens 64 --steps 2            # the CPU variant

Both train the same randomly initialised model (the shape's architecture, seeded) on the same
rollouts: the prompts of real arithmetic problems rendered with the chat template, and
completions of exactly ``--tokens`` random token ids each, with group-normalised advantages of
random rewards. Equal settings: loss type, clip range (0.2 / 0.28), beta 0 (no reference
model), one update per batch, AdamW (lr 1e-5, betas 0.9 / 0.99), gradient clipping at 1.0,
``--micro-rows`` completions per micro-batch (gradient accumulation over the rest), gradient
checkpointing on or off for both, and the precision: fp32 master weights with bf16 autocast on
a GPU, plain fp32 on the CPU.

TRL runs its own training loop (``trainer.train()``); only its rollout step is replaced by one
that returns the fixed batch, so generation and rewards are not timed (the learner is). sapo
runs ``GRPOLearner.train`` on the same groups. Each runs in its own process; a step's time is
measured after ``--warmup`` steps, peak memory over the timed steps. MFU counts the model's
FLOPs: 6 x trunk parameters x every (unpadded) token, 6 x hidden x vocabulary x completion
tokens for the LM head, and causal attention, against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402
import shapes  # noqa: E402
import trl_reference  # noqa: E402

IMPLEMENTATIONS = ("sapo", "trl")
# Run only when asked: sapo with its log-prob pass before the fused chunk kernels (`previous_logprobs`),
# sapo with those kernels torch.compile'd on any device (the default compiles them on CUDA only),
# and sapo with its decoder layers compiled on any device (``train.compile_layers``, on CUDA by default) or
# on none: `sapo-eager`, the step before `sapo_local.compiled_layers`.
VARIANTS = ("sapo-previous", "sapo-compiled", "sapo-layers", "sapo-eager")


def rollouts(tokenizer: Any, args: argparse.Namespace) -> list[Any]:
    """The batch both learners train on, as sapo's Groups (own rollouts: exact token ids)."""
    from sapo_core.advantages import group_advantages
    from sapo_core.records import Completion, Group
    from sapo_core.tasks.arithmetic import ArithmeticTask

    rng = random.Random(args.seed)
    task = ArithmeticTask()
    # Ids of ordinary tokens: past the tokenizer's specials, below its vocabulary.
    low, high = 32, len(tokenizer) - 1
    groups = []
    for p in range(args.problems):
        problem = task.generate(args.seed * 1000 + p)
        completions = [
            Completion(
                text="",
                finish_reason="length",
                num_tokens=args.tokens,
                token_ids=[rng.randint(low, high) for _ in range(args.tokens)],
            )
            for _ in range(args.completions)
        ]
        rewards = [rng.random() for _ in completions]
        groups.append(
            Group(
                problem=problem,
                completions=completions,
                rewards=rewards,
                advantages=group_advantages(rewards),
                node="bench",
            )
        )
    return groups


def flops_per_step(config: dict, lengths: list[tuple[int, int]]) -> float:
    """Model FLOPs of one update on rows of (prompt, completion) lengths (see the module's docstring)."""
    _, trunk = shapes.parameters(config)
    heads = config["num_attention_heads"]
    attention_width = heads * (config.get("head_dim") or config["hidden_size"] // heads)
    tokens = sum(p + c for p, c in lengths)
    completion = sum(c for _, c in lengths)
    attention = 6 * config["num_hidden_layers"] * attention_width * sum((p + c) ** 2 for p, c in lengths)
    return 6.0 * trunk * tokens + 6.0 * config["hidden_size"] * config["vocab_size"] * completion + attention


@contextmanager
def profiled(dev: Any) -> Iterator[Callable[[], str]]:
    """torch.profiler around the block; yields a function giving its table of the costliest ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        yield lambda: prof.key_averages().table(
            sort_by="self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total", row_limit=30
        )
        measure.sync(dev)


def run_sapo(args: argparse.Namespace, folder: Path, dev: Any) -> tuple[list[float], float, dict]:
    import torch

    from sapo_local.learner import GRPOLearner
    from sapo_local.models import load_model, load_tokenizer
    from sapo_local.policy import Policy, prompt_ids
    from sapo_local.settings import GRPOSettings

    if args.worker == "sapo-previous":
        import previous_logprobs

        import sapo_local.learner

        sapo_local.learner.selected_logprobs = previous_logprobs.selected_logprobs
    spec = f"random:{folder}"
    tokenizer = load_tokenizer(spec)
    policy = Policy(
        spec=spec,
        model=load_model(spec, device=dev, dtype=torch.float32),
        tokenizer=tokenizer,
        device=dev,
        dtype=torch.float32,
    )
    groups = rollouts(tokenizer, args)
    widest = max(len(prompt_ids(tokenizer, g.problem)) for g in groups) + args.tokens
    settings = GRPOSettings(
        loss_type=args.loss_type,
        micro_batch_tokens=args.micro_rows * widest,
        gradient_checkpointing=sapo_checkpointing(args),
        checkpoint_layers=1.0 if args.checkpoint_layers is None else args.checkpoint_layers,
        memory_budget_gib=args.memory_budget_gib or 0.0,
        logprob_chunk_size=args.logprob_chunk_size,
        compile_layers={"sapo-layers": True, "sapo-eager": False}.get(args.worker, "auto"),
    )
    learner = GRPOLearner(
        policy, settings, total_steps=args.warmup + args.steps, max_completion_length=args.tokens, seed=0, node="bench"
    )
    if args.worker == "sapo-compiled":
        learner.accelerator.unwrap_model(learner.module).compile = True
    times: list[float] = []
    metrics: dict = {}
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            measure.reset_peak(dev)
        into = times if step >= args.warmup else []
        with measure.timed(dev, into):
            metrics = learner.train(groups, round=step)
    extra = {"micro_batches": metrics.get("micro_batches"), "checkpointed_layers": learner.checkpointed_layers}
    if learner.memory_plan is not None:
        extra["planned_mib"] = learner.memory_plan.peak() / 2**20
    peak = measure.peak_mib(dev)
    if args.profile:
        with profiled(dev) as report:
            learner.train(groups, round=args.warmup + args.steps)
        extra["profile"] = report()
    if args.sync_report and dev.type == "cuda":
        extra["syncs"] = synchronisations(lambda: learner.train(groups, round=args.warmup + args.steps + 1))
    return times, peak, extra


def synchronisations(step: Callable[[], Any]) -> dict[str, int]:
    """Where one step makes the CPU wait for the GPU: warning location -> count (torch's sync debug mode)."""
    import warnings

    import torch

    counts: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for warning in caught:
        if "synchroniz" in str(warning.message):
            where = f"{Path(warning.filename).name}:{warning.lineno}"
            counts[where] = counts.get(where, 0) + 1
    return counts


def fixed_batch(tokenizer: Any, groups: list, args: argparse.Namespace, dev: Any) -> dict[str, Any]:
    """The rollouts as the batch TRL's ``_generate_and_score_completions`` returns: prompts left-padded."""
    import torch

    from sapo_local.policy import prompt_ids

    rows = args.problems * args.completions
    prompts = [prompt_ids(tokenizer, g.problem) for g in groups]
    width = max(len(p) for p in prompts)
    prompt_ids_t = torch.full((rows, width), tokenizer.pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((rows, width), dtype=torch.long)
    completion_ids, advantages = [], []
    for g, (group, prompt) in enumerate(zip(groups, prompts)):
        for c, (completion, advantage) in enumerate(zip(group.completions, group.advantages)):
            row = g * args.completions + c
            prompt_ids_t[row, width - len(prompt) :] = torch.tensor(prompt)  # TRL left-pads prompts
            prompt_mask[row, width - len(prompt) :] = 1
            completion_ids.append(list(completion.token_ids))
            advantages.append(advantage)
    return {
        "prompt_ids": prompt_ids_t.to(dev),
        "prompt_mask": prompt_mask.to(dev),
        "completion_ids": torch.tensor(completion_ids, device=dev),
        "completion_mask": torch.ones((rows, args.tokens), dtype=torch.long, device=dev),
        "advantages": torch.tensor(advantages, dtype=torch.float32, device=dev),
        "num_items_in_batch": torch.tensor(float(rows * args.tokens), device=dev),
    }


def run_trl(args: argparse.Namespace, folder: Path, dev: Any) -> tuple[list[float], float, dict]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sapo_local.models import load_model, load_tokenizer

    spec = f"random:{folder}"
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, device=dev, dtype=torch.float32)
    rows = args.problems * args.completions
    batch = fixed_batch(tokenizer, rollouts(tokenizer, args), args, dev)

    class FixedRollouts(GRPOTrainer):
        """TRL's trainer with its rollout step (generate + score) replaced by the fixed batch."""

        def _generate_and_score_completions(self, inputs: Any) -> dict:
            return dict(batch)

    times: list[float] = []
    profiler: dict[str, Any] = {}

    class StepClock(TrainerCallback):
        """Times the steps after the warm-up; profiles one more step after them when asked."""

        def on_step_begin(self, args_, state, control, **kwargs):
            if state.global_step == args.warmup:
                measure.reset_peak(dev)
            if state.global_step == args.warmup + args.steps:
                profiler["peak"] = measure.peak_mib(dev)
                profiler["context"] = profiled(dev)
                profiler["report"] = profiler["context"].__enter__()
            measure.sync(dev)
            self.started = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            measure.sync(dev)
            if args.warmup < state.global_step <= args.warmup + args.steps:  # global_step counts this step already
                times.append(time.perf_counter() - self.started)
            elif "context" in profiler:
                profiler.pop("context").__exit__(None, None, None)

    def never_called(completions: list, **kwargs: Any) -> list[float]:
        raise AssertionError("the fixed rollouts come with their advantages")

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            **trl_reference.equal_settings(out, dev.type, loss_type=args.loss_type),
            per_device_train_batch_size=args.micro_rows,
            gradient_accumulation_steps=rows // args.micro_rows,
            num_generations=args.completions,
            max_completion_length=args.tokens,
            max_steps=args.warmup + args.steps + bool(args.profile),
            temperature=1.0,
            gradient_checkpointing=args.gradient_checkpointing,
        )
        dataset = Dataset.from_dict({"prompt": [f"problem {i}" for i in range(args.problems)]})
        trainer = FixedRollouts(
            model=model,
            reward_funcs=never_called,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        trainer.train()
    extra = {"micro_batches": rows // args.micro_rows}
    if args.profile:
        extra["profile"] = profiler["report"]()
    return times, profiler.get("peak", measure.peak_mib(dev)), extra


def worker(args: argparse.Namespace) -> None:
    import torch

    from sapo_local.policy import prompt_ids

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = measure.device(args.device)
    folder = shapes.from_arguments(args)
    run = run_trl if args.worker == "trl" else run_sapo
    if args.profile:
        args.profile = f"{args.profile}.{args.worker}.txt"
    times, peak, extra = run(args, folder, dev)
    if args.profile:
        # Where the time of one more step goes, by kernel (sapo) or by op (both), for the report.
        Path(args.profile).write_text(extra.pop("profile"))
    from sapo_local.models import load_tokenizer

    tokenizer = load_tokenizer(f"random:{folder}")
    groups = rollouts(tokenizer, args)
    lengths = [(len(prompt_ids(tokenizer, g.problem)), args.tokens) for g in groups for _ in g.completions]
    seconds = median(times)
    flops = flops_per_step(shapes.SHAPES[args.shape], lengths)
    peak_tflops = measure.bf16_peak_tflops(dev)
    measure.emit(
        {
            "impl": args.worker,
            "shape": args.shape,
            "device": measure.device_name(dev),
            "step_s": seconds,
            "steps_s": times,
            "completion_tok_s": sum(c for _, c in lengths) / seconds,
            "all_tok_s": sum(p + c for p, c in lengths) / seconds,
            "peak_mib": peak,
            "tflops": flops / seconds / 1e12,
            "mfu": flops / seconds / 1e12 / peak_tflops if peak_tflops else None,
            **extra,
        }
    )


def sapo_checkpointing(args: argparse.Namespace) -> bool | str:
    """sapo's train.gradient_checkpointing: "auto" plans by --memory-budget-gib; else as the flags say."""
    if args.memory_budget_gib is not None:
        return "auto"
    return args.gradient_checkpointing or args.checkpoint_layers is not None


def checkpointing(args: argparse.Namespace) -> str:
    both = "on" if args.gradient_checkpointing else "off"
    if args.memory_budget_gib is not None:
        return f"sapo: the fewest layers that fit {args.memory_budget_gib:g} GiB, TRL: {both}"
    if args.checkpoint_layers is None:
        return both
    return f"sapo: {args.checkpoint_layers:.0%} of the layers, TRL: {both}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shapes.add_arguments(parser, tokens_help="completion length (every completion)")
    measure.add_arguments(parser)
    parser.add_argument("--impl", action="append", choices=IMPLEMENTATIONS + VARIANTS, help="default: sapo and trl")
    parser.add_argument("--micro-rows", type=int, default=16, help="completions per micro-batch, both learners")
    parser.add_argument("--loss-type", default="grpo", choices=("grpo", "dr_grpo", "dapo"))
    parser.add_argument("--gradient-checkpointing", action="store_true", help="every layer, both learners")
    parser.add_argument(
        "--checkpoint-layers",
        type=float,
        help="sapo alone checkpoints this fraction of its layers (train.checkpoint_layers); TRL as --gradient-checkpointing says",
    )
    parser.add_argument(
        "--memory-budget-gib",
        type=float,
        help="sapo alone checkpoints the fewest layers that fit this budget (train.memory_budget_gib, "
        "gradient_checkpointing auto); TRL as --gradient-checkpointing says",
    )
    parser.add_argument("--logprob-chunk-size", type=int, default=1024, help="sapo's train.logprob_chunk_size")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--profile", help="write a torch.profiler table of one more step to PROFILE.<learner>.txt")
    parser.add_argument(
        "--sync-report",
        action="store_true",
        help="sapo on a GPU: count where one more step makes the CPU wait for the GPU",
    )
    parser.add_argument("--worker", choices=IMPLEMENTATIONS + VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = args.problems * args.completions
    if args.micro_rows < 1 or rows % args.micro_rows:
        parser.error(f"--micro-rows must divide problems x completions ({rows}); got {args.micro_rows}")
    if args.worker:
        return worker(args)
    ok = measure.run_each(__file__, "--impl", args.impl or IMPLEMENTATIONS, timeout=args.timeout, what="learner")
    header = (
        "learner",
        "step s",
        "completion tok/s",
        "peak MiB",
        "planned MiB",
        "TFLOP/s",
        "MFU",
        "micro-batches",
        "layers checkpointed",
    )
    body = [
        (
            k,
            r["step_s"],
            r["completion_tok_s"],
            r["peak_mib"],
            r.get("planned_mib", "-"),
            r["tflops"],
            f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a",
            r["micro_batches"],
            r.get("checkpointed_layers", "-"),
        )
        for k, r in ok.items()
    ]
    print(
        f"\n{args.shape}, {args.problems}x{args.completions}x{args.tokens} tokens, {args.micro_rows} rows per "
        f"micro-batch, loss {args.loss_type}, checkpointing {checkpointing(args)}, "
        f"{next(iter(ok.values()))['device']}"
    )
    print(measure.table(header, body))
    if "sapo" in ok and "trl" in ok:
        s, t = ok["sapo"], ok["trl"]
        print(
            f"sapo / TRL: tokens/s x{s['completion_tok_s'] / t['completion_tok_s']:.2f} (target >= 1.5), "
            f"peak memory x{s['peak_mib'] / t['peak_mib']:.2f} (target <= 0.6)"
        )
    for variant in ("sapo", "sapo-compiled"):
        if variant in ok and "sapo-previous" in ok:
            s, p = ok[variant], ok["sapo-previous"]
            print(
                f"{variant} / sapo-previous: tokens/s x{s['completion_tok_s'] / p['completion_tok_s']:.2f}, "
                f"peak memory x{s['peak_mib'] / p['peak_mib']:.2f}"
            )


if __name__ == "__main__":
    main()
