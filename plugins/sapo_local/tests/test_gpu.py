"""sapo-local on a CUDA GPU: generation and the learner in bf16. Skipped without a GPU (CI).

The model is ``SAPO_TEST_MODEL`` (default: SmolLM2-135M's shape with random weights, from
the bundled alias), so the GPU machine, which has no GGUF support, can point it at a folder
holding the config and tokenizer: ``SAPO_TEST_MODEL=random:/path/to/folder``.
"""

from __future__ import annotations

import os

import pytest
import torch

from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.records import Completion, Group
from sapo_core.tasks.arithmetic import ArithmeticTask
from sapo_local.generation import LocalInference
from sapo_local.learner import GRPOLearner
from sapo_local.policy import get_policy
from sapo_local.settings import GRPOSettings, LocalInferenceSettings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MODEL = os.environ.get("SAPO_TEST_MODEL", "random:smollm2-135m")


def policy_for(role: str):
    context = BackendContext(model=MODEL, role=role)
    return get_policy(context)


def problems():
    return [ArithmeticTask().generate(seed) for seed in range(3)]


def test_generation_in_bf16_is_reproducible_and_batch_independent():
    policy = policy_for("contributor")
    assert policy.device.type == "cuda" and policy.dtype == torch.bfloat16
    params = SamplingParams(temperature=1.0, max_new_tokens=24, seed=7)
    whole = LocalInference(policy, LocalInferenceSettings(batch_size=64)).generate(problems(), 4, params)
    again = LocalInference(policy, LocalInferenceSettings(batch_size=64)).generate(problems(), 4, params)
    alone = LocalInference(policy, LocalInferenceSettings(batch_size=3)).generate(problems()[1:2], 4, params)
    assert [[c.text for c in cs] for cs in whole] == [[c.text for c in cs] for cs in again]
    # The noise is the same; bf16 logits of a row padded differently may differ in the last bits.
    same = sum(a.token_ids == b.token_ids for a, b in zip(whole[1], alone[0]))
    assert same >= 3, (whole[1], alone[0])


def test_a_learner_step_in_bf16_autocast_keeps_fp32_weights_and_changes_them():
    policy = policy_for("worker")
    assert policy.dtype == torch.float32, "a training node keeps fp32 master weights"
    learner = GRPOLearner(
        policy, GRPOSettings(lr=1e-4, micro_batch_tokens=2048), total_steps=4, max_completion_length=32
    )
    assert learner.accelerator.mixed_precision == "bf16"
    groups = []
    for problem in problems():
        texts = [f"<answer>{problem.answer}</answer>", "<answer>0</answer>", "no idea", "it is 3"]
        groups.append(
            Group(
                problem=problem,
                completions=[Completion(text=t) for t in texts],
                rewards=[1.0, 0.0, 0.0, 0.0],
                advantages=[1.5, -0.5, -0.5, -0.5],
                node="",
            )
        )
    before = {k: v.detach().clone() for k, v in policy.model.named_parameters()}
    metrics = learner.train(groups, 0)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["grad_norm"] > 0
    changed = sum(not torch.equal(before[k], v) for k, v in policy.model.named_parameters())
    assert changed > 0
    assert all(v.dtype == torch.float32 for v in policy.model.parameters())
