"""A whole GRPO step, generation included: sapo's node round against TRL's ``GRPOTrainer.train()``, in one run.

    python bench/round_vs_trl.py --shape smollm2-135m                   # sapo, sapo-static (CUDA only) and TRL
    python bench/round_vs_trl.py --shape qwen2-0.5b --out round.json    # the table's figures as JSON too
    python bench/round_vs_trl.py --shape tiny --tokens 32 --problems 2 --completions 4 --micro-rows 4   # the CPU

What a step is. sapo: one round of an offline ``sapo run`` through ``sapo_core.node.Node``
(``bench/node_round.py``'s config: sample the problems, generate with the ``local`` backend,
score, one ``grpo`` learner step), timed from the start of ``Node.step`` to its end; the
checkpoint and the metrics file written after it are not part of it. TRL: one optimizer step of
``trainer.train()``, timed from ``on_step_begin`` to ``on_step_end``, in which TRL generates its
batch with transformers' ``generate`` (``use_vllm=False``), scores it and trains on it. Each
variant runs in its own process (``bench/measure.py``), on the same machine, one after the other.

Equal settings, both sides:

* model and initial weights: ``random:<shape>`` (``bench/shapes.py``: ``smollm2-135m``,
  ``qwen2-0.5b``, ``tiny`` for the CPU), built by ``sapo_local.models.load_model`` (seed 0) as
  fp32 master weights;
* prompts: the same rendered prompts. Each step draws ``--problems`` arithmetic problems the way
  the node does (``tasks.names = ["arithmetic"]``, ``tasks.curriculum = false`` so the draw is a pure
  function of the seed and the round), rendered with the chat template (``sapo_local.policy.prompt_ids``);
  TRL gets the rendered text of the same problems, in the same order, one step's worth per step
  (``shuffle_dataset=False``), and re-tokenises it to the same ids (every variant reports a hash
  of the prompt ids it generated from; the parent checks they agree);
* G = ``--completions`` completions per prompt (default 8): ``inference.num_completions`` /
  ``num_generations``; all rows of a step in one ``generate`` call (``inference.batch_size`` = rows;
  TRL's ``generation_batch_size`` = rows);
* N = ``--tokens`` new tokens per completion (default 256), every completion exactly N tokens:
  EOS is disabled by ``min_new_tokens = N`` in both (TRL's ``generation_kwargs``; sapo's local
  backend gets it through its generation config, patched here for the benchmark only);
* sampling: temperature 1, top-p 1, top-k off;
* reward: the benchmark-only hash of the completion's text (``bench/node_round.py``'s
  ``hash_score``), so every group has a learning signal; group-normalised advantages (std scaling on);
* loss ``grpo``, clip 0.2 / 0.28, beta 0 (no reference model), one update per generation batch
  (``num_iterations = 1``, ``steps_per_generation`` = gradient accumulation steps), AdamW lr 1e-5,
  betas 0.9 / 0.99, no weight decay, constant schedule, gradient clipping at 1.0;
* micro-batching: ``--micro-rows`` completions per micro-batch (default 16: 4 micro-batches of a
  64-row step): TRL's ``per_device_train_batch_size``; sapo's ``train.micro_batch_tokens`` =
  micro-rows x the widest row of the run (prompt + N);
* precision: fp32 master weights, trained under bf16 autocast on CUDA (sapo's learner on a GPU;
  TRL's ``bf16=True``), plain fp32 on the CPU. Each side generates as it does by default: on CUDA
  TRL under its bf16 autocast, sapo from a bf16 copy of its fp32 weights (``inference.generation_dtype
  = auto``); on the CPU both in fp32;
* gradient checkpointing off in both (sapo's ``auto`` turns it on on the CPU; TRL's own default is on).

Variants: ``sapo`` (the node's defaults for everything not listed above: on CUDA that is the static
cache, ``inference.cache_implementation = auto``), ``sapo-static`` (``static`` forced: transformers
compiles the decode step with CUDA graphs; on the CPU it runs eagerly and buys nothing, so it runs
there only when asked), ``sapo-dynamic`` (``dynamic`` forced, the pre-issue-16 default),
``sapo-eager`` (``train.compile_layers=false``: the learner's decoder layers not compiled, the CUDA default
before 2026-12-07), ``sapo-layers`` (``true``: compiled on the CPU too) and ``trl``.

Reported per variant: the first step apart (compilation, CUDA graphs, allocator warm-up), the
median of ``--steps`` steps after ``--warmup`` steps, its generation part (sapo's ``time/generate``;
TRL's ``generate`` call) and the rest (scoring, log-probs, update), completion tokens per second
(generated and trained, per step), peak memory over the timed steps (``torch.cuda.max_memory_allocated``;
on the CPU the process's peak resident set) and TRL's step over the variant's step, measured in the
same run. Target: sapo's round >= 3x faster than TRL's step. ``--out`` writes it all as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402
import shapes  # noqa: E402
import trl_reference  # noqa: E402

SAPO_VARIANTS = {
    "sapo": [],
    "sapo-static": ["inference.cache_implementation=static"],
    "sapo-dynamic": ["inference.cache_implementation=dynamic"],
    "sapo-eager": ["train.compile_layers=false"],
    "sapo-layers": ["train.compile_layers=true"],
}
VARIANTS = (*SAPO_VARIANTS, "trl")
TARGET = 3.0


def node_arguments(args: argparse.Namespace, folder: Path, micro_batch_tokens: int) -> argparse.Namespace:
    """What ``node_round.bench_config`` reads."""
    return argparse.Namespace(
        model=f"random:{folder}",
        problems=args.problems,
        completions=args.completions,
        tokens=args.tokens,
        micro_batch_tokens=micro_batch_tokens,
    )


def equal_settings(args: argparse.Namespace) -> list[str]:
    """sapo's config keys of the settings held equal with TRL's (see the module's docstring)."""
    sets = [
        'tasks.names=["arithmetic"]',
        "tasks.curriculum=false",
        f"run.seed={args.seed}",
        "inference.temperature=1.0",
        "inference.top_p=1.0",
        "inference.top_k=0",
        f"inference.batch_size={args.problems * args.completions}",
        "advantages.scale_by_std=true",
        "train.loss_type=grpo",
        "train.beta=0.0",
        "train.num_iterations=1",
        "train.gradient_checkpointing=false",
    ]
    if args.device != "auto":
        sets += [f"inference.device={args.device}", f"train.device={args.device}"]
    return sets


def step_problems(config: Any, plugins: Any, rounds: int) -> list[list[Any]]:
    """The problems each of the first ``rounds`` rounds of the config's node draws, as ``Node.generate`` draws them."""
    from sapo_core.config import backend_settings
    from sapo_core.interfaces import BackendContext
    from sapo_core.sampling import sample_problems

    context = BackendContext(node=config.run.node_id, model=config.model.name, seed=config.run.seed)
    tasks = {}
    for name in config.tasks.names:
        registration = plugins.registry.get("task", name)
        tasks[name] = registration.factory(
            backend_settings(registration, config.extras("tasks", name), f"tasks.{name}"), context
        )
    return [
        sample_problems(
            tasks,
            config.tasks.weights,
            config.tasks.problems_per_round,
            seed=config.run.seed,
            node=config.run.node_id,
            round=r,
        )
        for r in range(rounds)
    ]


def step_prompts(args: argparse.Namespace, folder: Path, tokenizer: Any, workdir: str) -> list[list[list[int]]]:
    """The rendered prompt ids of each step's problems (``--set`` included: it may choose the tasks)."""
    import node_round

    from sapo_local.policy import prompt_ids

    config, plugins = node_round.bench_config(
        node_arguments(args, folder, 1), [*equal_settings(args), *args.sets], workdir, rounds=args.warmup + args.steps
    )
    return [
        [prompt_ids(tokenizer, p) for p in problems]
        for problems in step_problems(config, plugins, args.warmup + args.steps)
    ]


def fingerprint(prompts: list[list[list[int]]]) -> str:
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


def run_sapo(args: argparse.Namespace, folder: Path, dev: Any) -> dict[str, Any]:
    import node_round

    from sapo_core.node import Node
    from sapo_local.models import load_tokenizer
    from sapo_local.policy import prompt_ids

    rounds = args.warmup + args.steps
    tokenizer = load_tokenizer(f"random:{folder}")
    times: list[float] = []
    per_round: list[dict[str, Any]] = []
    seen: list[list[list[int]]] = []
    peak: list[float] = []

    class TimedNode(Node):
        """The node, its rounds timed (device work included) and its peak memory read over the timed ones."""

        def step(self, round: int) -> dict[str, Any]:
            if round == args.warmup:
                measure.reset_peak(dev)
            with measure.timed(dev, times):
                metrics = super().step(round)
            per_round.append(metrics)
            if round == rounds - 1:
                peak.append(measure.peak_mib(dev))
            return metrics

    with tempfile.TemporaryDirectory() as workdir:
        prompts = step_prompts(args, folder, tokenizer, workdir)
        widest = max(len(p) for step in prompts for p in step) + args.tokens
        sets = [*equal_settings(args), *SAPO_VARIANTS[args.worker], *args.sets]
        config, plugins = node_round.bench_config(
            node_arguments(args, folder, args.micro_rows * widest), sets, workdir, rounds=rounds
        )
        node = TimedNode.from_config(config, plugins)
        inference = node.inference
        generation_config, generate = inference.generation_config, inference.generate

        def full_length(max_new_tokens: int) -> Any:  # EOS off: every completion has max_new_tokens tokens
            generation = generation_config(max_new_tokens)
            generation.min_new_tokens = max_new_tokens
            return generation

        def recorded(problems: Any, n: int, params: Any) -> Any:
            seen.append([prompt_ids(tokenizer, p) for p in problems])
            return generate(problems, n, params)

        inference.generation_config, inference.generate = full_length, recorded
        node.run()
    timed = per_round[args.warmup :]
    return {
        "times": times,
        "peak_mib": peak[0],
        "prompts": seen,
        "generate_s": median(m["time/generate"] for m in timed),
        "tokens": [int(m.get("inference/tokens", 0)) for m in per_round],
        "micro_batches": [m.get("train/micro_batches") for m in per_round],
        "cache_implementation": "static" if inference.static_cache else "dynamic",
    }


def run_trl(args: argparse.Namespace, folder: Path, dev: Any) -> dict[str, Any]:
    import node_round
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sapo_local.models import load_model, load_tokenizer

    rounds = args.warmup + args.steps
    rows = args.problems * args.completions
    spec = f"random:{folder}"
    tokenizer = load_tokenizer(spec)
    times: list[float] = []
    generate_times: list[float] = []
    seen: list[list[list[int]]] = []
    tokens: list[int] = []
    peak: list[float] = []

    class TimedGeneration(GRPOTrainer):
        """TRL's trainer as it is, its generation call timed and the prompts it generates from recorded."""

        def _generate_single_turn(self, prompt_ids: Any, *rest: Any, **kwargs: Any) -> Any:
            seen.append([list(p) for p in prompt_ids[:: args.completions]])  # each prompt comes G times in a row
            with measure.timed(dev, generate_times):
                return super()._generate_single_turn(prompt_ids, *rest, **kwargs)

    class StepClock(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            if state.global_step == args.warmup:
                measure.reset_peak(dev)
            measure.sync(dev)
            self.started = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            measure.sync(dev)
            times.append(time.perf_counter() - self.started)
            if state.global_step == rounds:  # counts this step already
                peak.append(measure.peak_mib(dev))

    def hash_reward(completions: list[str], completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        tokens.append(sum(len(ids) for ids in completion_ids))
        return [node_round.hash_score(text) for text in completions]

    with tempfile.TemporaryDirectory() as out:
        prompts = step_prompts(args, folder, tokenizer, out)
        texts = [tokenizer.decode(ids, skip_special_tokens=False) for step in prompts for ids in step]
        config = GRPOConfig(
            **trl_reference.equal_settings(out, dev.type, seed=args.seed),
            use_vllm=False,
            num_generations=args.completions,
            max_completion_length=args.tokens,
            generation_kwargs={"min_new_tokens": args.tokens},
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            per_device_train_batch_size=args.micro_rows,
            gradient_accumulation_steps=rows // args.micro_rows,
            steps_per_generation=rows // args.micro_rows,
            max_steps=rounds,
            scale_rewards="group",
            gradient_checkpointing=False,
        )
        trainer = TimedGeneration(
            model=load_model(spec, device=dev, dtype=torch.float32),
            reward_funcs=hash_reward,
            args=config,
            train_dataset=Dataset.from_dict({"prompt": texts}),
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        trainer.train()
    return {
        "times": times,
        "peak_mib": peak[0],
        "prompts": seen,
        "generate_s": median(generate_times[args.warmup :]),
        "tokens": tokens,
        "micro_batches": [rows // args.micro_rows] * rounds,
    }


def worker(args: argparse.Namespace) -> None:
    dev = measure.worker_device(args)
    got = (run_trl if args.worker == "trl" else run_sapo)(args, shapes.from_arguments(args), dev)
    times, prompts = got.pop("times"), got.pop("prompts")
    step = median(times[args.warmup :])
    tokens = median(got["tokens"][args.warmup :])
    measure.emit(
        {
            "variant": args.worker,
            "shape": args.shape,
            "device": measure.device_name(dev),
            "first_step_s": times[0],
            "step_s": step,
            "steps_s": times,
            "rest_s": step - got["generate_s"],
            "completion_tok_s": tokens / step,
            "full_length": all(t == args.problems * args.completions * args.tokens for t in got["tokens"]),
            "prompt_tokens": sum(len(p) for p in prompts[0]),
            "prompts_sha": fingerprint(prompts),
            **got,
        }
    )


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shapes.add_arguments(parser, tokens_help="new tokens of every completion (EOS disabled)")
    measure.add_arguments(parser)
    parser.add_argument(
        "--variant", action="append", choices=VARIANTS, help="default: sapo, sapo-static (on CUDA) and trl"
    )
    parser.add_argument("--micro-rows", type=int, default=16, help="completions per micro-batch, both")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after --warmup")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        help="more config of the sapo variants, e.g. train.logprob_chunk_size=256",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser


def report(args: argparse.Namespace, ok: dict[str, Any], notes: list[str]) -> dict[str, float]:
    """Print the table, the verdicts and the notes (adding the checks' own); returns TRL's step over each variant's."""
    trl = ok.get("trl")
    speedups = {name: trl["step_s"] / r["step_s"] for name, r in ok.items() if trl and name != "trl"}
    header = (
        "variant",
        "first step s",
        "step s",
        "generate s",
        "rest s",
        "completion tok/s",
        "peak MiB",
        "TRL step / step",
    )
    body = [
        (
            name,
            r["first_step_s"],
            r["step_s"],
            r["generate_s"],
            r["rest_s"],
            r["completion_tok_s"],
            r["peak_mib"],
            f"x{trl['step_s'] / r['step_s']:.2f}" if trl else "n/a",
        )
        for name, r in ok.items()
    ]
    any_result = next(iter(ok.values()))
    print(
        f"\n{args.shape}, {args.problems} prompts x {args.completions} completions x {args.tokens} new tokens, "
        f"{args.micro_rows} rows per micro-batch, median of {args.steps} steps after {args.warmup}, "
        f"{any_result['device']}"
    )
    print(measure.table(header, body))
    for name, speedup in speedups.items():
        verdict = "met" if speedup >= TARGET else f"missed by {1 - speedup / TARGET:.0%}"
        print(f"{name} / TRL: round x{speedup:.2f} faster than TRL's step (target >= {TARGET:g}: {verdict})")
    if "sapo-static" in ok and ok["sapo-static"]["device"].startswith("CPU"):
        notes.append("sapo-static on the CPU: transformers runs the static cache eagerly there (not the fast path)")
    if len({r["prompts_sha"] for r in ok.values()}) > 1:
        notes.append(
            "the variants generated from different prompts: "
            + ", ".join(f"{name} {r['prompts_sha']}" for name, r in ok.items())
        )
    else:
        print(
            f"prompts: the same in every variant (ids hash {any_result['prompts_sha']}, "
            f"{any_result['prompt_tokens']} prompt tokens in the first step)"
        )
    notes += [
        f"{name}: not every completion had {args.tokens} tokens ({r['tokens']})"
        for name, r in ok.items()
        if not r["full_length"]
    ]
    for note in notes:
        print(f"note: {note}")
    return speedups


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    rows = args.problems * args.completions
    if args.micro_rows < 1 or rows % args.micro_rows:
        parser.error(f"--micro-rows must divide problems x completions ({rows}); got {args.micro_rows}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    if args.worker:
        return worker(args)
    chosen = args.variant
    notes = []
    if chosen is None:
        cuda = measure.device(args.device).type == "cuda"
        chosen = ["sapo", "sapo-static", "trl"] if cuda else ["sapo", "trl"]
        if not cuda:
            notes.append(
                "sapo-static not run: on the CPU transformers runs the static cache eagerly "
                "(no compiled step, no CUDA graphs); ask for it with --variant sapo-static"
            )
    ok = measure.run_each(__file__, "--variant", chosen, timeout=args.timeout, what="variant")
    speedups = report(args, ok, notes)
    if args.out:
        settings = {key: value for key, value in vars(args).items() if key not in ("worker", "out")}
        Path(args.out).write_text(
            json.dumps(
                {"settings": settings, "results": ok, "trl_step_over_step": speedups, "target": TARGET, "notes": notes},
                indent=1,
                sort_keys=True,
            )
        )


if __name__ == "__main__":
    main()
