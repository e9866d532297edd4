"""The policy a node generates with and trains: one model object, shared by both backends.

The ``local`` inference backend and the ``grpo`` learner of one node find the same `Policy`
in ``context.shared``, so the model that generates is the model being trained: no copy, no
reload between rounds. With LoRA the learner wraps ``policy.model`` in place (peft injects
its layers into the model's own modules), so generation sees the adapters too.

``__all__`` is the documented surface other distributions (sapo-vllm) may use; the rest is internal.
"""

from __future__ import annotations

from typing import Any

import attrs

from sapo_core.interfaces import BackendContext
from sapo_core.records import Completion, Problem

__all__ = ["SHARED_KEY", "Policy", "get_policy", "prompt_ids"]

SHARED_KEY = "sapo_local.policy"


@attrs.define
class Policy:
    spec: str
    model: Any  # a transformers causal LM (a peft model once LoRA is on)
    tokenizer: Any
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    version: int = 0  # learner steps taken; generation records it for staleness checks
    # Bumped by whatever changes the weights (each optimizer update, a checkpoint load): a copy of
    # them made for generation (`sapo_local.generation_weights`) is stale when this has moved on.
    # Not `version`, which a resume sets back to a saved value that a stale copy may share.
    revision: int = 0

    def weights_changed(self) -> None:
        self.revision += 1

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end a completion: the tokenizer's EOS and the model's own."""
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)


def get_policy(context: BackendContext, *, device: str = "auto", dtype: str = "auto", model: Any = None) -> Policy:
    """The node's policy, loaded on first use from ``context.model`` (or the ``model`` given)."""
    policy = context.shared.get(SHARED_KEY)
    if policy is not None:
        return policy
    from sapo_local.models import choose_device, choose_dtype, load_model, load_tokenizer

    torch_device = choose_device(device)
    torch_dtype = choose_dtype(dtype, torch_device, trains=context.role == "worker")
    if torch_device.type == "cpu":
        from sapo_local import memory

        memory.tune()  # freed tensors back to the system, not held by malloc (see sapo_local.memory)
    tokenizer = load_tokenizer(context.model)
    if model is None:
        model = load_model(context.model, device=torch_device, dtype=torch_dtype)
    else:
        model = model.to(device=torch_device, dtype=torch_dtype)
    policy = Policy(spec=context.model, model=model, tokenizer=tokenizer, device=torch_device, dtype=torch_dtype)
    context.shared[SHARED_KEY] = policy
    return policy


def prompt_ids(tokenizer: Any, problem: Problem) -> list[int]:
    """The problem's chat, rendered with the model's chat template, ready for the answer."""
    messages = [{"role": m.role, "content": m.content} for m in problem.messages]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def completion_ids(tokenizer: Any, completion: Completion, eos_id: int, *, own: bool) -> list[int]:
    """The tokens to train on for a completion.

    Our own rollouts keep the exact ids the model sampled. A peer's rollout is re-tokenised
    from its text with this node's tokenizer (SAPO trains on external rollouts as if they
    were its own), with EOS appended when it finished by stopping, so the model learns to stop.
    """
    if own and completion.token_ids:
        return list(completion.token_ids)
    ids = tokenizer(completion.text, add_special_tokens=False)["input_ids"]
    return [*ids, eos_id] if completion.finish_reason == "stop" else list(ids)
