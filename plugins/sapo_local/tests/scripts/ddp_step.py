"""One GRPO step on a tiny model, run by test_distributed.py under `accelerate launch`.

Each process saves its weights after the step as <out>/rank<R>.safetensors (safetensors, not
pickle) so the test can check that every rank holds the same weights, and that they match
the same step taken by a single process on the whole batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import attrs
import torch
from safetensors.torch import save_file

from sapo_core.records import Completion, Group
from sapo_core.tasks.arithmetic import ArithmeticTask
from sapo_local.learner import GRPOLearner
from sapo_local.models import load_tokenizer, tiny_llama
from sapo_local.policy import Policy
from sapo_local.settings import GRPOSettings


def groups() -> list[Group]:
    out = []
    for seed in range(4):
        problem = ArithmeticTask().generate(seed)
        texts = [f"<answer>{problem.answer}</answer>", "<answer>0</answer>", "maybe 12", "I do not know the answer"]
        out.append(
            Group(
                problem=problem,
                completions=[Completion(text=t) for t in texts],
                rewards=[1.0, 0.0, 0.0, 0.0],
                advantages=[1.5, -0.5, -0.5, -0.5],
                node="me",
            )
        )
    return out


def tiny_policy() -> Policy:
    """The tiny model (seed 0) with the bundled tokenizer, on the CPU in fp32: the same on every process."""
    tokenizer = load_tokenizer("smollm2-135m")
    model = tiny_llama(len(tokenizer), seed=0)
    return Policy(spec="tiny", model=model, tokenizer=tokenizer, device=torch.device("cpu"), dtype=torch.float32)


def main(out: Path, loss_type: str, completions: int | None = None) -> None:
    policy = tiny_policy()
    learner = GRPOLearner(
        policy,
        GRPOSettings(lr=1e-3, loss_type=loss_type, micro_batch_tokens=256),
        total_steps=1,
        max_completion_length=16,
        node="me",
    )
    batch = groups()
    if completions is not None:  # fewer completions than processes: some rank has no share
        first = batch[0]
        batch = [
            attrs.evolve(
                first,
                completions=first.completions[:completions],
                rewards=first.rewards[:completions],
                advantages=first.advantages[:completions],
            )
        ]
    metrics = learner.train(batch, 0)
    rank = learner.accelerator.process_index
    state = {
        k: v.detach().contiguous() for k, v in policy.model.state_dict().items() if not k.endswith("lm_head.weight")
    }
    save_file(state, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"world": learner.accelerator.num_processes, **metrics}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
