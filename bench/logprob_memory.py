"""Memory of the completion tokens' log-probs: sapo's chunked computation against a plain full log-softmax.

    python bench/logprob_memory.py --tokens 8192 --vocab 151936 --hidden 896           # a GPU, bf16
    python bench/logprob_memory.py --tokens 1024 --vocab 151936 --hidden 576           # the CPU variant, fp32

Forward and backward of ``sum(log p(target))`` over N tokens, from hidden states [N, H] and an
LM head [V, H] (both trainable, random): ``full`` is ``log_softmax(hidden @ W.T).gather(...)``
with the logits in float32, as a plain implementation writes it; ``chunked`` is
`sapo_local.logprobs.selected_logprobs` (``--chunk-size`` rows at a time, recomputed in
backward). Each runs in its own process. "extra" is the peak above what the inputs already
hold (hidden, weight, targets), which is what the computation costs; the ratio is taken on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402

VARIANTS = ("full", "chunked")


def worker(args: argparse.Namespace) -> None:
    import torch

    from sapo_local.logprobs import selected_logprobs

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = measure.device(args.device)
    dtype = {"auto": torch.bfloat16 if dev.type == "cuda" else torch.float32, "bf16": torch.bfloat16,
             "fp32": torch.float32}[args.dtype]
    generator = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=generator).to(dev, dtype).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=generator) * 0.02).to(dev, dtype).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=generator).to(dev)

    def full() -> torch.Tensor:
        logits = (hidden @ weight.T).float()
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)

    def chunked() -> torch.Tensor:
        return selected_logprobs(hidden, weight, targets, chunk_size=args.chunk_size)

    compute = {"full": full, "chunked": chunked}[args.worker]
    times: list[float] = []
    peaks: list[float] = []
    for repeat in range(args.warmup + args.repeats):
        hidden.grad = weight.grad = None
        measure.sync(dev)
        baseline = torch.cuda.memory_allocated(dev) / 2**20 if dev.type == "cuda" else measure.peak_mib(dev)
        measure.reset_peak(dev)
        baseline = baseline if dev.type == "cuda" else measure.peak_mib(dev)  # RSS right after the reset
        with measure.timed(dev, times if repeat >= args.warmup else []):
            value = compute().sum()
            value.backward()
        if repeat >= args.warmup:
            peaks.append(measure.peak_mib(dev) - baseline)
        checksum = float(value)
    measure.emit({"variant": args.worker, "device": measure.device_name(dev), "dtype": str(dtype).removeprefix("torch."),
                  "extra_mib": max(peaks), "seconds": median(times), "sum": checksum})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    measure.add_arguments(parser)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--chunk-size", type=int, default=1024, help="sapo's train.logprob_chunk_size")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on a GPU, else fp32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    results = {v: measure.run_worker(__file__, [v, *sys.argv[1:]], timeout=args.timeout) for v in VARIANTS}
    for variant, result in results.items():
        print(f"{variant}: {result}", flush=True)
    ok = {k: r for k, r in results.items() if "error" not in r}
    if not ok:
        raise SystemExit("no variant ran")
    any_result = next(iter(ok.values()))
    print(f"\n{args.tokens} tokens, vocabulary {args.vocab}, hidden {args.hidden}, {any_result['dtype']}, "
          f"chunk {args.chunk_size}, {any_result['device']}")
    print(measure.table(("log-probs", "extra peak MiB", "fwd+bwd s"), [(k, r["extra_mib"], r["seconds"]) for k, r in ok.items()]))
    if len(ok) == 2:
        print(f"chunked / full: memory x{ok['chunked']['extra_mib'] / ok['full']['extra_mib']:.3f} (target <= 0.25), "
              f"time x{ok['chunked']['seconds'] / ok['full']['seconds']:.2f}; sums {ok['chunked']['sum']:.6g} / {ok['full']['sum']:.6g}")


if __name__ == "__main__":
    main()
