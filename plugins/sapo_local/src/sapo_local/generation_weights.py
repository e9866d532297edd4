"""The weights local generation runs on: the policy's own, or a lower-precision copy of them.

A node that trains keeps fp32 master weights (bf16 weights would swallow small updates), but
decoding a small model on a GPU is bound by launches and by reading the weights, and the
learner computes in bf16 under autocast anyway: generating from a bf16 copy reads half the
bytes and samples from (nearly) the distribution the learner's forward sees. The difference
that remains is bf16 rounding, which the sampler's recorded log-probs and the learner's
truncated importance sampling account for (`sapo_local.loss.truncated_is_weights`).

The copy is made once, with its parameters cast straight from the master's (never a second
fp32 model), and is refreshed in place, without reallocating, whenever ``Policy.revision``
says the master weights have changed since: after every optimizer update and every checkpoint
load (the learner bumps it). It belongs to the inference backend, not to the model the
learner saves, so checkpoints never hold it. A model object replaced under it (LoRA wraps
``policy.model``) makes it build anew.

``inference.generation_dtype``: ``auto`` is a bf16 copy on CUDA when the master weights are
fp32 and the GPU has bf16, and no copy elsewhere (the CPU generates with the fp32 weights, as
before); ``master`` never copies; a dtype name copies in that dtype unless it is the master's.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from sapo_local.policy import Policy

log = logging.getLogger("sapo.local")

__all__ = ["GenerationWeights", "generation_dtype"]


def generation_dtype(preference: str, policy: Policy) -> torch.dtype | None:
    """The dtype of the copy ``preference`` asks for with this policy, or None: generate with the master weights."""
    from sapo_local.models import choose_dtype

    if preference == "master":
        return None
    if preference == "auto":
        on_cuda = policy.device.type == "cuda"
        wanted = policy.dtype == torch.float32 and on_cuda and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if wanted else None
    dtype = choose_dtype(preference, policy.device)
    return None if dtype == policy.dtype else dtype


class GenerationWeights:
    """The model to generate with: ``policy.model``, or its copy in ``dtype``, kept up to date."""

    def __init__(self, policy: Policy, dtype: torch.dtype | None) -> None:
        self.policy = policy
        self.dtype = dtype
        self.copy: Any = None
        self._source: Any = None  # the master model the copy was made from
        self._revision = -1  # the policy's revision the copy holds
        self.refreshes = 0  # in-place refreshes since the copy was made (tests, diagnostics)

    def model(self) -> Any:
        """The model to generate with now: the copy, made or refreshed first if the master moved on."""
        if self.dtype is None:
            return self.policy.model
        if self.copy is None or self._source is not self.policy.model:
            self._build()
        elif self._revision != self.policy.revision:
            self.refresh()
        return self.copy

    @torch.no_grad()
    def _build(self) -> None:
        master = self.policy.model
        # deepcopy takes a memoised object as is: each parameter is cast once (tied ones stay
        # tied), so no second full-precision model exists, even for a moment.
        memo: dict[int, Any] = {
            id(p): torch.nn.Parameter(p.detach().to(self.dtype), requires_grad=False)
            for p in master.parameters()
            if p.is_floating_point()
        }
        self.copy = copy.deepcopy(master, memo).eval().requires_grad_(False)
        self._source = master
        self._revision = self.policy.revision
        self.refreshes = 0
        log.debug("generating with a %s copy of the %s weights", self.dtype, self.policy.dtype)

    @torch.no_grad()
    def refresh(self) -> None:
        """The master's current values into the copy, tensor by tensor, in place."""
        if self.copy is None:
            return
        targets = [*self.copy.parameters(), *self.copy.buffers()]
        sources = [*self._source.parameters(), *self._source.buffers()]
        if len(targets) != len(sources) or any(t.shape != s.shape for t, s in zip(targets, sources)):
            self._build()  # the master's layout changed under us (tensors added or resized): copied anew
            return
        pairs = zip(targets, sources)
        for target, source in pairs:
            target.copy_(source)
        self._revision = self.policy.revision
        self.refreshes += 1
