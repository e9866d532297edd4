"""Generation: sapo's ``local`` backend against plain ``model.generate`` on the same batch.

    python bench/generation.py --shape smollm2-135m --problems 8 --completions 8 --tokens 256
    python bench/generation.py --shape tiny --tokens 64                       # the CPU variant
    python bench/generation.py ... --variant plain --variant sapo --variant plain-static --variant sapo-static

The batch: ``--problems`` arithmetic problems rendered with the chat template, each
``--completions`` times, left-padded into one batch of problems x completions rows, up to
``--tokens`` new tokens each, temperature 1, no top-k / top-p, the model's EOS ids stop a row.
With random weights a row almost never stops early, so every variant decodes about the same
tokens; the table counts the tokens each really generated.

Variants, each in its own process, timed after one warm-up call (compilation, CUDA graphs):
``plain``: ``model.generate(do_sample=True)``, the reference; ``sapo``: `LocalInference`
(per-completion seeded sampler); ``*-static``: the same with a static KV cache, which
transformers compiles (CUDA graphs) on a GPU and runs eagerly on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402
import shapes  # noqa: E402

VARIANTS = ("plain", "sapo", "plain-static", "sapo-static")


def worker(args: argparse.Namespace) -> None:
    import torch

    from sapo_core.interfaces import SamplingParams
    from sapo_core.tasks.arithmetic import ArithmeticTask
    from sapo_local.generation import LocalInference
    from sapo_local.models import choose_dtype, load_model, load_tokenizer
    from sapo_local.policy import Policy, prompt_ids
    from sapo_local.settings import LocalInferenceSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = measure.device(args.device)
    folder = shapes.from_arguments(args)
    spec = f"random:{folder}"
    dtype = choose_dtype(args.dtype, dev)
    tokenizer = load_tokenizer(spec)
    policy = Policy(
        spec=spec, model=load_model(spec, device=dev, dtype=dtype), tokenizer=tokenizer, device=dev, dtype=dtype
    )
    task = ArithmeticTask()
    problems = [task.generate(args.seed * 1000 + p) for p in range(args.problems)]
    static = args.worker.endswith("-static")
    rows = args.problems * args.completions

    if args.worker.startswith("sapo"):
        settings = LocalInferenceSettings(batch_size=rows, cache_implementation="static" if static else "dynamic")
        backend = LocalInference(policy, settings)

        def generate(call: int) -> int:
            params = SamplingParams(temperature=1.0, max_new_tokens=args.tokens, seed=call)
            return sum(
                c.num_tokens or 0 for group in backend.generate(problems, args.completions, params) for c in group
            )
    else:
        prompts = [prompt_ids(tokenizer, p) for p in problems for _ in range(args.completions)]
        width = max(len(p) for p in prompts)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=dev)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
        eos = set(policy.eos_ids)

        def generate(call: int) -> int:
            torch.manual_seed(call)
            with torch.inference_mode():
                out = policy.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=args.tokens,
                    eos_token_id=sorted(eos),
                    pad_token_id=pad,
                    cache_implementation="static" if static else None,
                )
            return sum(
                next((j + 1 for j, t in enumerate(row) if t in eos), len(row)) for row in out[:, width:].tolist()
            )

    times: list[float] = []
    tokens: list[int] = []
    for call in range(args.warmup + args.repeats):
        into = times if call >= args.warmup else []
        with measure.timed(dev, into):
            count = generate(call)
        if call >= args.warmup:
            tokens.append(count)
    seconds = median(times)
    measure.emit(
        {
            "variant": args.worker,
            "device": measure.device_name(dev),
            "dtype": str(dtype).removeprefix("torch."),
            "seconds": seconds,
            "tokens": median(tokens),
            "tok_s": median(tokens) / seconds,
            "ms_per_step": 1000 * seconds / args.tokens,
            "times": times,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shapes.add_arguments(parser, tokens_help="max new tokens")
    measure.add_arguments(parser)
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="default: plain and sapo")
    parser.add_argument(
        "--dtype", default="auto", help="model weights: auto (bf16 on a GPU, fp32 on the CPU), fp32, bf16"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    ok = measure.run_each(
        __file__, "--variant", args.variant or ("plain", "sapo"), timeout=args.timeout, what="variant"
    )
    base = ok.get("plain")
    any_result = next(iter(ok.values()))
    print(
        f"\n{args.shape}, {args.problems}x{args.completions} rows x {args.tokens} new tokens, {any_result['dtype']}, "
        f"{any_result['device']}"
    )
    header = ("variant", "seconds", "tokens", "tok/s", "ms/step", "vs plain")
    body = [
        (
            k,
            r["seconds"],
            r["tokens"],
            r["tok_s"],
            r["ms_per_step"],
            f"x{r['tok_s'] / base['tok_s']:.2f}" if base else "n/a",
        )
        for k, r in ok.items()
    ]
    print(measure.table(header, body))


if __name__ == "__main__":
    main()
