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


def scored_groups() -> list[Group]:
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
    return groups


def test_a_learner_step_in_bf16_autocast_keeps_fp32_weights_and_changes_them():
    policy = policy_for("worker")
    assert policy.dtype == torch.float32, "a training node keeps fp32 master weights"
    learner = GRPOLearner(
        policy, GRPOSettings(lr=1e-4, micro_batch_tokens=2048), total_steps=4, max_completion_length=32
    )
    assert learner.accelerator.mixed_precision == "bf16"
    groups = scored_groups()
    before = {k: v.detach().clone() for k, v in policy.model.named_parameters()}
    metrics = learner.train(groups, 0)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["grad_norm"] > 0
    changed = sum(not torch.equal(before[k], v) for k, v in policy.model.named_parameters())
    assert changed > 0
    assert all(v.dtype == torch.float32 for v in policy.model.parameters())


def test_the_cuda_default_fast_path_samples_on_policy_across_learner_steps():
    """On CUDA a training node generates from a bf16 copy of its fp32 weights with the static cache
    (both defaults); the log-probs it samples with stay those of the learner's bf16-autocast forward
    after each step, so the rollouts are on-policy up to bf16 rounding."""
    from sapo_local.batching import micro_batches

    policy = policy_for("worker")
    inference = LocalInference(policy, LocalInferenceSettings())
    assert inference.static_cache and inference.weights.dtype == torch.bfloat16
    learner = GRPOLearner(
        policy, GRPOSettings(lr=1e-4, micro_batch_tokens=8192), total_steps=8, max_completion_length=32, node="me"
    )
    gaps = []
    for round in range(3):
        out = inference.generate(problems(), 4, SamplingParams(temperature=1.0, max_new_tokens=32, seed=round))
        groups = [
            Group(problem=p, completions=cs, rewards=[0.0] * 4, advantages=[1.0, -1.0, 0.5, -0.5], node="me")
            for p, cs in zip(problems(), out)
        ]
        examples = learner.examples(groups)
        assert all(e.sampler_logprobs is not None for e in examples)
        batches = micro_batches(examples, 8192, policy.tokenizer.pad_token_id, policy.device)
        recomputed = learner._logprobs(batches)
        sampler = torch.cat([b.sampler[b.known.bool()] for b in batches])
        ours = torch.cat([lp[b.known.bool()] for b, lp in zip(batches, recomputed)]).float()
        gap = (sampler - ours).abs()
        gaps.append((float(gap.mean()), float(gap.quantile(0.99))))
        learner.train(groups, round)
    # bf16 rounding on both sides: a mean gap of hundredths; a stale copy (one step behind) is far off.
    assert all(mean < 0.02 and p99 < 0.1 for mean, p99 in gaps), gaps
    assert inference.weights.refreshes >= 2


def test_the_memory_plan_is_not_below_the_peak_a_step_reaches():
    """gradient_checkpointing "auto" on CUDA plans before the first step (sapo_local.activation_checkpointing):
    its estimate errs on the side of memory, but not by multiples. Eager layers and log-prob kernels, the
    ones measured; one completion per micro-batch, so that the planned micro-batch is the largest one."""
    policy = policy_for("worker")
    settings = GRPOSettings(lr=1e-4, micro_batch_tokens=1, compile_layers=False, compile_logprobs=False)
    learner = GRPOLearner(policy, settings, total_steps=4, max_completion_length=32)
    assert learner.plans_memory
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for round in range(2):  # the second holds AdamW's moments through its backward
        learner.train(scored_groups(), round)
    measured = torch.cuda.max_memory_allocated()
    plan = learner.memory_plan
    assert plan is not None and plan.checkpointed == 0, plan.describe()  # a GPU's free memory holds 135M
    assert measured <= plan.peak() <= 3 * measured, (measured, plan)
