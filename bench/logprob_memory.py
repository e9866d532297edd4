"""Memory and time of the completion tokens' log-probs: sapo's chunked computation against a plain full log-softmax.

    python bench/logprob_memory.py --tokens 8192 --vocab 151936 --hidden 896           # a GPU, bf16
    python bench/logprob_memory.py --tokens 1024 --vocab 151936 --hidden 576           # the CPU variant, fp32

Forward and backward of ``sum(w * log p(target))`` (w random: a real upstream gradient) over N
tokens, from hidden states [N, H] and an LM head [V, H] (both trainable, random). Variants:
``full`` is ``log_softmax(hidden @ W.T).gather(...)`` with the logits in float32, as a plain
implementation writes it; ``previous`` is sapo's chunked pass before the fused chunk kernels
(`previous_logprobs`: checkpointed chunks, autograd through them); ``sapo`` and ``sapo-compiled``
are `sapo_local.logprobs.selected_logprobs` with its chunk kernels eager and torch.compile'd
(``--chunk-size`` rows at a time). Each runs in its own process; times are medians over
``--repeats`` after ``--warmup`` untimed runs (which include compiling). "extra" is the peak
above what the inputs already hold (hidden, weight, targets), which is what the computation
costs; the ratios are taken on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402

VARIANTS = ("full", "previous", "sapo", "sapo-compiled")


def worker(args: argparse.Namespace) -> None:
    import previous_logprobs
    import torch

    from sapo_local.logprobs import selected_logprobs

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = measure.device(args.device)
    dtype = {
        "auto": torch.bfloat16 if dev.type == "cuda" else torch.float32,
        "bf16": torch.bfloat16,
        "fp32": torch.float32,
    }[args.dtype]
    generator = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=generator).to(dev, dtype).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=generator) * 0.02).to(dev, dtype).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=generator).to(dev)
    upstream = torch.rand(args.tokens, generator=generator).to(dev)

    def full() -> torch.Tensor:
        logits = (hidden @ weight.T).float()
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)

    def chunked(implementation, **kwargs):
        return lambda: implementation(hidden, weight, targets, chunk_size=args.chunk_size, **kwargs)

    compute = {
        "full": full,
        "previous": chunked(previous_logprobs.selected_logprobs),
        "sapo": chunked(selected_logprobs, compile=False),
        "sapo-compiled": chunked(selected_logprobs, compile=True),
    }[args.worker]
    times: list[float] = []
    peaks: list[float] = []
    for repeat in range(args.warmup + args.repeats):
        hidden.grad = weight.grad = None
        measure.sync(dev)
        baseline = torch.cuda.memory_allocated(dev) / 2**20 if dev.type == "cuda" else measure.peak_mib(dev)
        measure.reset_peak(dev)
        baseline = baseline if dev.type == "cuda" else measure.peak_mib(dev)  # RSS right after the reset
        with measure.timed(dev, times if repeat >= args.warmup else []):
            value = (compute() * upstream).sum()
            value.backward()
        if repeat >= args.warmup:
            peaks.append(measure.peak_mib(dev) - baseline)
        checksum = float(value)
    measure.emit(
        {
            "variant": args.worker,
            "device": measure.device_name(dev),
            "dtype": str(dtype).removeprefix("torch."),
            "extra_mib": max(peaks),
            "seconds": median(times),
            "times": times,
            "sum": checksum,
            "grad_norms": [float(hidden.grad.float().norm()), float(weight.grad.float().norm())],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    measure.add_arguments(parser)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--chunk-size", type=int, default=1024, help="sapo's train.logprob_chunk_size")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on a GPU, else fp32"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="default: all")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    ok = measure.run_each(__file__, "--variant", args.variant or VARIANTS, timeout=args.timeout, what="variant")
    any_result = next(iter(ok.values()))
    print(
        f"\n{args.tokens} tokens, vocabulary {args.vocab}, hidden {args.hidden}, {any_result['dtype']}, "
        f"chunk {args.chunk_size}, {any_result['device']}, median of {args.repeats}"
    )

    def ratio(r: dict, key: str, base: str) -> str:
        return f"x{r[key] / ok[base][key]:.2f}" if base in ok else "n/a"

    print(
        measure.table(
            ("log-probs", "extra peak MiB", "fwd+bwd s", "memory / full", "time / full", "time / previous", "sum"),
            [
                (
                    k,
                    r["extra_mib"],
                    r["seconds"],
                    ratio(r, "extra_mib", "full"),
                    ratio(r, "seconds", "full"),
                    ratio(r, "seconds", "previous"),
                    f"{r['sum']:.6g}",
                )
                for k, r in ok.items()
            ],
        )
    )
    print("memory target: <= 0.25 x full")


if __name__ == "__main__":
    main()
