"""How much learning signal does the untrained model give each task? No training, just one round's sampling.

For each task, curriculum level and temperature: ``--problems`` problems x ``--completions`` completions of
up to ``--tokens`` tokens from the model, scored as a round scores them (the ``correctness`` reward, the
answer tags' content or else the task's untagged reading). Printed per row: mean correctness; the share of
completions with answer tags, of those scored through the untagged reading, of truncated ones; and the share
of groups whose correctness varies, which are the only groups GRPO learns from under the default gate
(``rewards.gate = "correctness"``). A task whose groups never vary cannot be learned at that setting.

    python bench/learning_signal.py                                          # built-in tasks, levels 1 and default
    python bench/learning_signal.py --tasks sort --levels 1,2,3 --temperatures 0.7,1.0 --tokens 128
    python bench/learning_signal.py --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda --problems 64

Writes ``--out`` (JSON rows) when given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from sapo_core.answers import extract_answer
from sapo_core.curriculum import task_level, task_variants
from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.rewards import CorrectnessReward
from sapo_core.tasks.arithmetic import ArithmeticTask
from sapo_core.tasks.countdown import CountdownTask
from sapo_core.tasks.sat import SatTask
from sapo_core.tasks.sort import SortTask

TASKS = {task.name: task for task in (ArithmeticTask, SortTask, SatTask, CountdownTask)}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="model.name: the bundled model, a path or random:")
    parser.add_argument(
        "--tasks",
        default=",".join(TASKS),
        help="comma-separated task names (any registered task, e.g. rg:bf) or preset:<mix>",
    )
    parser.add_argument(
        "--levels", default="1,default", help="comma-separated ladder levels; 'default': the task's own"
    )
    parser.add_argument("--temperatures", default="0.7,1.0")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="problems are seeds seed*1000 .. +problems")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64, help="rows generated at once")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    return parser.parse_args(argv)


def levels_of(task: object, spec: str) -> list[tuple[int | str, object]]:
    """The levels named by ``spec`` ("1,default") that the task has, in order, without repeats, each
    with the task at that level. A task off its ladder (a plugin's at its configured settings, such
    as an rg: task at level 0) is "default" as it is, and its numbered levels come from ``at_level``."""
    variants, default = task_variants(task), task_level(task)  # type: ignore[arg-type]
    found: dict[int | str, object] = {}
    for part in filter(None, spec.split(",")):
        if part == "default":
            found[default if default is not None else "default"] = variants.get(default, task) if default else task
        elif int(part) in variants:
            found[int(part)] = variants[int(part)]
        elif default is None and 1 <= int(part) <= int(getattr(task, "max_level", 0) or 0):
            found[int(part)] = task.at_level(int(part))  # type: ignore[attr-defined]
    return sorted(found.items(), key=lambda item: (isinstance(item[0], str), item[0]))


def task_names(spec: str) -> list[str]:
    """``--tasks``: names, with ``preset:<mix>`` expanded to the mix's tasks."""
    from sapo_core.tasks.presets import PRESETS

    names: list[str] = []
    for part in filter(None, spec.split(",")):
        names += PRESETS[part.removeprefix("preset:")] if part.startswith("preset:") else [part]
    return names


def build_task(name: str) -> object:
    """A built-in task with its default settings, or any registered task (a plugin's) with its own."""
    if name in TASKS:
        return TASKS[name]()
    from sapo_core.config import backend_settings
    from sapo_core.plugins import get_plugins

    registration = get_plugins().registry.get("task", name)
    settings = backend_settings(registration, {}, f"tasks.{name}")
    return registration.factory(settings, BackendContext())


def measure(
    backend: object, task: object, scorer: CorrectnessReward, args: argparse.Namespace, temperature: float
) -> dict[str, float]:
    """One row: sample the problems, score them, summarise."""
    problems = [task.generate(args.seed * 1000 + index) for index in range(args.problems)]  # type: ignore[attr-defined]
    params = SamplingParams(temperature=temperature, max_new_tokens=args.tokens, seed=args.seed)
    started = time.perf_counter()
    groups = backend.generate(problems, args.completions, params)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - started
    scores, tagged, untagged, truncated, varied = [], 0, 0, 0, 0
    for problem, completions in zip(problems, groups):
        group = scorer.score(problem, completions)
        scores += group
        varied += len(set(group)) > 1
        for completion, score in zip(completions, group):
            has_tags = extract_answer(completion.text) is not None
            tagged += has_tags
            untagged += not has_tags and score > 0
            truncated += completion.finish_reason == "length"
    count = len(scores)
    return {
        "correctness": statistics.fmean(scores),
        "tagged": tagged / count,
        "read_untagged": untagged / count,
        "truncated": truncated / count,
        "groups_with_signal": varied / len(problems),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    import torch

    from sapo_local.generation import LocalInference
    from sapo_local.models import choose_device, choose_dtype, load_model, load_tokenizer
    from sapo_local.policy import Policy
    from sapo_local.settings import LocalInferenceSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    dtype = choose_dtype("auto", device)
    policy = Policy(
        spec=args.model,
        model=load_model(args.model, device=device, dtype=dtype),
        tokenizer=load_tokenizer(args.model),
        device=device,
        dtype=dtype,
    )
    backend = LocalInference(policy, LocalInferenceSettings(batch_size=args.batch_size))
    print(
        f"{args.model}: {args.problems} problems x {args.completions} completions x {args.tokens} tokens, "
        f"seed {args.seed}, {device}\n"
    )
    print("| task | level | temperature | correctness | tagged | read untagged | truncated | groups with signal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name in task_names(args.tasks):
        for level, task in levels_of(build_task(name), args.levels):
            scorer = CorrectnessReward(BackendContext(tasks={name: task}))  # type: ignore[dict-item]
            for temperature in map(float, args.temperatures.split(",")):
                row = {
                    "task": name,
                    "level": level,
                    "temperature": temperature,
                    **measure(backend, task, scorer, args, temperature),
                }
                rows.append(row)
                print(
                    f"| {name} | {level} | {temperature:.2f} | {row['correctness']:.3f} | {row['tagged']:.2f} | "
                    f"{row['read_untagged']:.2f} | {row['truncated']:.2f} | {row['groups_with_signal']:.2f} |",
                    flush=True,
                )
    if args.out:
        args.out.write_text(
            json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
