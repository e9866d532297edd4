"""GRPO steps on a tiny model with the optimizer sharded or not, run by test_optimizer_sharding.py under `accelerate launch`.

    sharded_steps.py OUT SHARD STEPS [--load CHECKPOINT] [--save CHECKPOINT]

Each process writes its weights after the steps (<OUT>/rank<R>.safetensors) and what its
optimizer holds (<OUT>/rank<R>.json: bytes of the AdamW state on this process, and in all).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddp_step import groups, tiny_policy
from safetensors.torch import save_file

from sapo_local.activation_checkpointing import tensor_bytes
from sapo_local.learner import GRPOLearner
from sapo_local.optimizer_sharding import local_optimizer
from sapo_local.settings import GRPOSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("shard", choices=("true", "false"))
    parser.add_argument("steps", type=int)
    parser.add_argument("--load", type=Path)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    policy = tiny_policy()
    settings = GRPOSettings(lr=1e-3, micro_batch_tokens=256, shard_optimizer=args.shard == "true", schedule="linear")
    learner = GRPOLearner(policy, settings, total_steps=10, max_completion_length=16, node="me")
    if args.load:
        learner.load(args.load)
    for step in range(args.steps):
        learner.train(groups(), step)
    if args.save:
        args.save.mkdir(exist_ok=True)
        learner.save(args.save)
    rank = learner.accelerator.process_index
    state = {
        k: v.detach().contiguous() for k, v in policy.model.state_dict().items() if not k.endswith("lm_head.weight")
    }
    save_file(state, str(args.out / f"rank{rank}.safetensors"))
    held = [t for entry in local_optimizer(learner.optimizer).state.values() for t in entry.values()]
    report = {
        "world": learner.accelerator.num_processes,
        "sharded": learner.sharded,
        "state_bytes": tensor_bytes(held),
        "parameter_bytes": tensor_bytes(learner.trainable),
        "lr": learner.scheduler.get_last_lr()[0],
    }
    (args.out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
