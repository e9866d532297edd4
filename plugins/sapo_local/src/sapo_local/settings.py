"""Settings of sapo-local's backends, importable without torch (``sapo plugins`` reads them)."""

from __future__ import annotations

from typing import Literal

import attrs

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCHEDULES = ("constant", "linear", "cosine")
GENERATION_DTYPES = ("auto", "master", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32")


@attrs.frozen
class GRPOSettings:
    """``train.*`` keys of the ``grpo`` learner."""

    lr: float = attrs.field(default=1e-5, validator=attrs.validators.gt(0))
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # optimizer updates of linear warm-up
    schedule: str = attrs.field(default="constant", validator=attrs.validators.in_(SCHEDULES))
    total_steps: int = 0  # optimizer updates the schedule decays over; 0: run.rounds * num_iterations
    max_grad_norm: float = 1.0  # 0 disables clipping
    loss_type: str = attrs.field(default="grpo", validator=attrs.validators.in_(LOSS_TYPES))
    epsilon_low: float = 0.2  # clip range below 1 (SAPO's defaults)
    epsilon_high: float = 0.28  # clip range above 1 (DAPO's "clip higher")
    beta: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))  # KL weight; 0 loads no reference
    num_iterations: int = attrs.field(default=1, validator=attrs.validators.ge(1))  # updates per batch of rollouts
    # Truncated importance sampling for rollouts whose sampler's log-probs are recorded (a vLLM or
    # SGLang server): weight min(exp(logp_learner - logp_server), cap) per token; see sapo_local.loss.
    importance_sampling: bool = True
    importance_sampling_cap: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))
    micro_batch_tokens: int = attrs.field(
        default=4096, validator=attrs.validators.ge(1)
    )  # padded tokens per micro-batch
    logprob_chunk_size: int = 1024  # completion tokens per chunk of the vocabulary projection
    # On CUDA, the per-chunk log-softmax and its gradient run as torch.compile'd kernels (compiling
    # takes seconds once per process; falls back to plain torch if it fails).
    compile_logprobs: bool = True
    # torch.compile each decoder layer for the learner's forward and backward (fewer kernel launches,
    # where a GPU step waits on them; sapo_local.compiled_layers). "auto": on CUDA, where it measured
    # faster and smaller (docs/benchmarks.md); off on the CPU. The first step compiles.
    compile_layers: bool | Literal["auto"] = "auto"
    # Recompute layers' activations in backward instead of keeping them: the same gradients for one
    # more forward pass of those layers. "auto": on CUDA, the fewest layers that fit memory_budget_gib
    # (sapo_local.activation_checkpointing); on the CPU, where activations dominate a step's memory,
    # every layer (or, given memory_budget_gib, the fewest that fit it).
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    # With checkpointing true, the fraction of the decoder's layers that recompute (the first ones):
    # between all activations kept (0) and one forward pass more (1).
    checkpoint_layers: float = attrs.field(default=1.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    # The learner's memory, for gradient_checkpointing = "auto". 0: on CUDA what the process holds
    # plus what the GPU has free before the first step; on the CPU no plan (every layer recomputes).
    memory_budget_gib: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    # AdamW's moments split over the processes of a distributed launch (ZeRO stage 1): each holds and
    # updates its share, then broadcasts it; the same weights. "auto": on with several processes.
    shard_optimizer: bool | Literal["auto"] = "auto"
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    device: str = "auto"  # used when no local inference backend loaded the policy already
    dtype: str = "auto"


@attrs.frozen
class LocalInferenceSettings:
    """``inference.*`` keys of the ``local`` backend."""

    device: str = "auto"  # "auto": the GPU of this process's local rank, else the CPU
    dtype: str = "auto"  # "auto": bf16 on a recent GPU (fp32 weights on a training node), fp32 on the CPU
    batch_size: int = attrs.field(default=64, validator=attrs.validators.ge(1))  # rows per generate call
    # On CUDA, fuse the sampler's noise into one torch.compile'd kernel (the same draws; compiling
    # takes a few seconds once per process; falls back to plain torch if it fails).
    compile_sampler: bool = True
    # "static": a preallocated KV cache, which transformers compiles with CUDA graphs on a GPU:
    # decoding a small model is bound by per-step launch overhead, which the graphs remove.
    # Prompts are left-padded to a multiple of 64 tokens so later rounds reuse the graphs.
    # "auto": static on CUDA, where it measured several times faster inside a training run
    # (docs/benchmarks.md), and dynamic elsewhere (on the CPU it runs eagerly and buys nothing).
    cache_implementation: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "dynamic", "static"))
    )
    # The weights generation runs on. "auto": a bf16 copy on CUDA when the master weights are fp32
    # (a training node), refreshed in place after every learner step; none elsewhere (the CPU keeps
    # generating with the fp32 weights). "master": never a copy; a dtype name: a copy in that dtype.
    generation_dtype: str = attrs.field(default="auto", validator=attrs.validators.in_(GENERATION_DTYPES))
