"""A GRPO learner on a tiny model built from a config, and groups for it to train on: the learner tests' helpers.

Loaded by conftest.py as the module ``sapo_local_tiny_learner`` (the tests run with --import-mode=importlib).
"""

from __future__ import annotations

import torch

from sapo_core.records import Completion, Group
from sapo_core.tasks.arithmetic import ArithmeticTask
from sapo_local.learner import GRPOLearner
from sapo_local.models import tiny_llama
from sapo_local.policy import Policy
from sapo_local.settings import GRPOSettings


def make_learner(tokenizer, seed=0, **settings) -> GRPOLearner:
    model = tiny_llama(len(tokenizer), seed=seed)
    policy = Policy(spec="tiny", model=model, tokenizer=tokenizer, device=torch.device("cpu"), dtype=torch.float32)
    defaults = {"lr": 1e-3, "micro_batch_tokens": 100_000}
    return GRPOLearner(
        policy, GRPOSettings(**{**defaults, **settings}), total_steps=10, max_completion_length=32, node="me"
    )


def groups(node="me", count=3) -> list[Group]:
    task = ArithmeticTask()
    out = []
    for seed in range(count):
        problem = task.generate(seed)
        texts = [
            f"<think>sum</think>\n<answer>{problem.answer}</answer>",
            "<answer>0</answer>",
            f"I think it is {problem.answer}",
            "no idea, sorry, this is hard",
        ]
        completions = [
            Completion(text=t, finish_reason="stop" if i % 2 == 0 else "length") for i, t in enumerate(texts)
        ]
        out.append(
            Group(
                problem=problem,
                completions=completions,
                rewards=[1.0, 0.0, 0.5, 0.0],
                advantages=[1.4, -0.8, 0.4, -1.0],
                node=node,
            )
        )
    return out


def weights(learner: GRPOLearner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.policy.model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol=1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)
