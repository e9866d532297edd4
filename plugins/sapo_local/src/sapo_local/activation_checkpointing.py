"""Activation checkpointing of the decoder's layers: all of them, the first fraction, or as few as fit a budget.

A layer that checkpoints keeps only its input from the forward pass and recomputes the rest in
backward: the same operations on the same inputs, so the same gradients, for one more forward of
that layer. ``train.gradient_checkpointing = true`` checkpoints the first ``train.checkpoint_layers``
of them. ``"auto"`` on CUDA (and on any device given ``train.memory_budget_gib``) checkpoints the
fewest layers that let the step fit the memory budget: the fastest step that does not run out.

The plan is made before the learner's first step. `measure` runs that step's largest micro-batch
forward once, with no layer checkpointing, and counts what autograd saves for the backward, layer
by layer; `plan` adds what the step allocates besides (gradients, AdamW's two moments, the larger
of the vocabulary projection's backward and a layer's) to what the process already holds, and checkpoints
the fewest layers whose estimated peak stays within `USABLE` of the budget (the rest is for the
allocator's fragmentation). The eager layers are measured; compiled ones keep less
(docs/benchmarks.md), so the estimate errs on the side of memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs
import torch

from sapo_local.optimizer_sharding import local_optimizer

__all__ = [
    "Footprint",
    "MemoryPlan",
    "allocate_backward_workspace",
    "base_model",
    "budget_bytes",
    "checkpoint_first",
    "decoder_layers",
    "enable_activation_checkpointing",
    "measure",
    "plan",
    "plan_step",
    "tensor_bytes",
]

USABLE = 0.9  # of the budget, for live tensors; the allocator's caching and fragmentation take the rest
#: What CUDA's allocator counts at a step's peak beyond the tensors alive then (bench/cuda_peak.py: 36 MiB
#: at 135M on an H100, torch 2.11). Planned on CUDA as part of the workspace.
CUDA_SCRATCH = 64 << 20
GiB = 1 << 30


def base_model(model: Any) -> Any:
    """The causal LM itself, under its LoRA adapters if it has them."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: Any) -> Any:
    """The decoder's ``layers`` of a causal LM, with or without LoRA adapters."""
    return base_model(model).get_decoder().layers


def enable_activation_checkpointing(model: Any, fraction: float = 1.0) -> int:
    """Checkpoint the first ``fraction`` of the decoder's layers; returns how many recompute."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers 4's, deprecated in 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return checkpoint_first(model, round(fraction * len(decoder_layers(model))))


def checkpoint_first(model: Any, count: int) -> int:
    """Make the first ``count`` layers recompute and the others keep their activations; returns ``count``.

    Every layer keeps activations of the same size, so which ones recompute does not change the
    peak; a layer's own flag is what transformers' GradientCheckpointingLayer reads.
    """
    for index, layer in enumerate(decoder_layers(model)):
        layer.gradient_checkpointing = index < count
    return count


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages under ``tensors``, each counted once."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@attrs.frozen
class Footprint:
    """What one micro-batch's forward keeps for the backward, in bytes."""

    layer: int  # a decoder layer that keeps its activations (the largest)
    layer_input: int  # a layer that recomputes: its input alone
    outside: int  # the embedding, the final norm and the vocabulary projection's inputs
    layers: int

    def scaled(self, factor: float) -> Footprint:
        """The footprint of a micro-batch ``factor`` times as many tokens (activations grow with tokens)."""
        return attrs.evolve(
            self,
            layer=round(self.layer * factor),
            layer_input=round(self.layer_input * factor),
            outside=round(self.outside * factor),
        )


@attrs.frozen
class MemoryPlan:
    """A learner step's estimated peak memory, part by part, and the layers checkpointed to fit the budget."""

    budget: int
    held: int  # what the process holds before the step: weights, generation's copy and cache, optimizer state
    step: int  # what the step allocates besides activations: gradients, AdamW's moments not allocated yet
    workspace: int  # transient in backward: the vocabulary projection's, or one layer's activations again;
    # on CUDA also `CUDA_SCRATCH`
    footprint: Footprint
    checkpointed: int

    def activations(self, checkpointed: int | None = None) -> int:
        k = self.checkpointed if checkpointed is None else checkpointed
        f = self.footprint
        return f.outside + (f.layers - k) * f.layer + k * f.layer_input

    def peak(self, checkpointed: int | None = None) -> int:
        return self.held + self.step + self.workspace + self.activations(checkpointed)

    @property
    def fits(self) -> bool:
        return self.peak() <= USABLE * self.budget

    def describe(self) -> str:
        parts = ", ".join(
            f"{name} {value / GiB:.2f}"
            for name, value in (
                ("held", self.held),
                ("gradients and optimizer", self.step),
                ("activations", self.activations()),
                ("workspace", self.workspace),
            )
        )
        return (
            f"checkpointing {self.checkpointed} of {self.footprint.layers} decoder layers: estimated peak "
            f"{self.peak() / GiB:.2f} GiB ({parts}) of a {self.budget / GiB:.2f} GiB budget"
        )


def plan(budget: int, *, held: int, step: int, workspace: int, footprint: Footprint) -> MemoryPlan:
    """The fewest checkpointed layers that fit ``budget``; every layer when even that does not fit."""
    draft = MemoryPlan(budget, held, step, workspace, footprint, checkpointed=0)
    for count in range(footprint.layers + 1):
        candidate = attrs.evolve(draft, checkpointed=count)
        if candidate.fits:
            return candidate
    return attrs.evolve(draft, checkpointed=footprint.layers)


def plan_step(
    budget: int,
    footprint: Footprint,
    *,
    model: Any,
    held_also: Sequence[torch.Tensor],
    optimizer: Any,
    chunk_tokens: int,
    distributed: bool,
) -> MemoryPlan:
    """`plan` for a step of ``model`` under AdamW ``optimizer``: ``footprint`` for its largest micro-batch,
    ``held_also`` the tensors the process holds besides the model's and the optimizer's (a reference
    model), ``chunk_tokens`` the rows of the vocabulary projection's largest chunk."""
    device = next(model.parameters()).device
    trainable = [p for p in model.parameters() if p.requires_grad]
    local = local_optimizer(optimizer)  # a sharded optimizer holds this process's share of the moments
    state = [t for entry in local.state.values() for t in entry.values() if torch.is_tensor(t) and t.dim() > 0]
    updated = [p for group in local.param_groups for p in group["params"]]
    gradients = tensor_bytes(trainable)
    moments = max(0, 2 * tensor_bytes(updated) - tensor_bytes(state))  # AdamW's two, unless loaded already
    if device.type == "cuda":
        allocate_backward_workspace(device)
        held = torch.cuda.memory_allocated(device)  # everything: generation's copy and cache, DDP's buckets
    else:
        held = tensor_bytes([*model.parameters(), *model.buffers(), *held_also, *state])
        held += gradients if distributed else 0  # DDP's buckets: one more copy of the gradients
    vocab, hidden = base_model(model).get_output_embeddings().weight.shape
    # The vocabulary projection's backward (sapo_local.logprobs), before any layer's: a chunk's logits
    # and their gradient with a float32 temporary, and the weight's cast, product and float32 gradient.
    head = 8 * vocab * (chunk_tokens + hidden)
    # Then each layer's backward in turn: its activations once more (recomputed, or their gradients).
    workspace = max(head, footprint.layer) + (CUDA_SCRATCH if device.type == "cuda" else 0)
    return plan(budget, held=held, step=gradients + moments, workspace=workspace, footprint=footprint)


def allocate_backward_workspace(device: torch.device) -> None:
    """Run a tiny linear layer's backward, so that the thread autograd runs CUDA backwards on has its cuBLAS
    handle and workspace (32 MiB on an H100) before ``held`` is read, rather than during the step."""
    inputs = torch.ones(8, 8, device=device, requires_grad=True)
    weight = torch.ones(8, 8, device=device, requires_grad=True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        output = torch.nn.functional.linear(inputs, weight, torch.zeros(8, device=device))
    output.float().sum().backward()


def budget_bytes(gib: float, device: torch.device) -> int | None:
    """``train.memory_budget_gib`` in bytes; 0 on CUDA: what this process holds and what the GPU has free."""
    if gib > 0:
        return int(gib * GiB)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device)
    return None


def measure(model: Any, forward: Callable[[], Any]) -> Footprint:
    """Run ``forward()`` (one micro-batch through ``model``) and count what it saves for the backward.

    Saved tensors are counted by storage, once per part (a layer, or everything outside the
    layers), and held only until their part ends: the backward never runs, so measuring holds one
    layer's activations at a time. Parameters saved as they are (not cast copies) are not counted:
    they exist anyway.
    """
    layers = decoder_layers(model)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}
    per_layer = [0] * len(layers)
    inputs = [0] * len(layers)
    outside = 0

    def pack(tensor: torch.Tensor) -> None:
        key = tensor.untyped_storage().data_ptr()
        if key not in parameters:
            saved.setdefault(key, tensor)  # held, so that a freed storage is not reused and counted twice

    def flush() -> int:
        total = tensor_bytes(saved.values())
        saved.clear()
        return total

    def start(index: int) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            nonlocal outside
            outside += flush()
            hidden = args[0] if args else kwargs["hidden_states"]
            inputs[index] = hidden.numel() * hidden.element_size()

        return hook

    def end(index: int) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            per_layer[index] += flush()

        return hook

    handles = [layer.register_forward_pre_hook(start(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles += [layer.register_forward_hook(end(i)) for i, layer in enumerate(layers)]
    try:
        with _no_layer_checkpointing(layers), torch.enable_grad():
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
                forward()
        outside += flush()
    finally:
        for handle in handles:
            handle.remove()
    return Footprint(layer=max(per_layer), layer_input=max(inputs), outside=outside, layers=len(layers))


@contextlib.contextmanager
def _no_layer_checkpointing(layers: Any) -> Iterator[None]:
    flags = [getattr(layer, "gradient_checkpointing", False) for layer in layers]
    try:
        for layer in layers:
            layer.gradient_checkpointing = False
        yield
    finally:
        for layer, flag in zip(layers, flags):
            layer.gradient_checkpointing = flag
