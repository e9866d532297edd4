"""The ``grpo`` learner: policy-gradient steps on scored groups, for Hugging Face causal LMs.

One `train` call is one learner step (``num_iterations`` optimizer updates on the same
rollouts). The batch is split into micro-batches by a token budget, sorted by length so
little is padding (`sapo_local.batching`); gradients accumulate over them with a normaliser
computed on the whole batch, so the result does not depend on how the batch was split (see
`sapo_local.loss`). The step's metrics are summed on the device (`sapo_local.step_metrics`);
checkpoints are written in safe formats (`sapo_local.learner_state`).

Under ``accelerate launch`` every process runs the same node loop (same seeds, so the same
rollouts) and trains on its own share of the completions; DDP averages the gradients.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from sapo_core import recording
from sapo_core.checkpoints import OPTIMIZER_DIR
from sapo_core.errors import TrainingError
from sapo_core.interfaces import BackendContext
from sapo_core.records import Group
from sapo_local import activation_checkpointing, learner_state, memory, optimizer_sharding
from sapo_local.activation_checkpointing import base_model, decoder_layers, enable_activation_checkpointing
from sapo_local.batching import Example, MicroBatch, micro_batches, process_share
from sapo_local.compiled_layers import CompiledLayers
from sapo_local.logprobs import selected_logprobs
from sapo_local.loss import grpo_loss, loss_normalizer, truncated_is_weights
from sapo_local.policy import Policy, completion_ids, get_policy, prompt_ids
from sapo_local.settings import GRPOSettings
from sapo_local.step_metrics import StepTotals, sum_over_processes, token_means

log = logging.getLogger("sapo.local")


class CompletionLogprobs(torch.nn.Module):
    """Log-probs of the completion tokens of a padded batch; the module DDP wraps.

    Only the completion positions go through the vocabulary projection, in checkpointed
    chunks, so the full [tokens, vocab] logits never exist at once.
    """

    def __init__(
        self,
        model: Any,
        *,
        chunk_size: int,
        temperature: float,
        compile: bool | None = None,
        compile_layers: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.temperature = temperature
        self.compile = compile  # of the per-chunk log-prob kernels; None: on CUDA (see selected_logprobs)
        self.softcap = getattr(base_model(model).config, "final_logit_softcapping", None)
        # A plain attribute, not a submodule: the compiled layers hold the same parameters.
        self.compiled_layers = CompiledLayers(decoder_layers(model)) if compile_layers else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        base = base_model(self.model)
        decoder = base.get_decoder()

        def run() -> Any:
            return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

        hidden = self.compiled_layers.run(decoder, run) if self.compiled_layers is not None else run()
        # The hidden state at position p predicts the token at p + 1.
        picked = hidden[rows, positions - 1]
        head = base.get_output_embeddings()
        return selected_logprobs(
            picked,
            head.weight,
            targets,
            chunk_size=self.chunk_size,
            temperature=self.temperature,
            softcap=self.softcap,
            bias=getattr(head, "bias", None),
            compile=self.compile,
        )


def resolve_auto(setting: bool | str, default: bool) -> bool:
    """A ``bool | "auto"`` setting's value: ``default`` (what measured best on this device) for "auto"."""
    return default if setting == "auto" else bool(setting)


def lr_lambda(settings: GRPOSettings, total_steps: int) -> Any:
    """Learning-rate multiplier per optimizer update: linear warm-up, then the schedule."""

    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / (settings.warmup_steps + 1)
        if settings.schedule == "constant" or total_steps <= settings.warmup_steps:
            return 1.0
        progress = min(1.0, (step - settings.warmup_steps) / (total_steps - settings.warmup_steps))
        if settings.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class GRPOLearner:
    """GRPO / Dr. GRPO / DAPO-style updates of a `Policy`, optionally with LoRA and a KL anchor."""

    def __init__(
        self,
        policy: Policy,
        settings: GRPOSettings,
        *,
        total_steps: int,
        temperature: float = 1.0,
        max_completion_length: int | None = None,
        seed: int = 0,
        node: str = "",
        optimizer_saved_after: Callable[[int], bool] | None = None,
    ) -> None:
        """``optimizer_saved_after(round)``: whether a checkpoint holding the optimizer's state follows that
        round's step (a sharded optimizer is gathered for it then); None: after every round."""
        from accelerate import Accelerator

        self.policy = policy
        self.settings = settings
        self.node = node  # rollouts of other nodes are re-tokenised from their text
        self.max_completion_length = max_completion_length
        # fp32 master weights with bf16 compute where the GPU has it; plain fp32 on the CPU.
        bf16 = policy.device.type == "cuda" and policy.dtype == torch.float32 and torch.cuda.is_bf16_supported()
        self.accelerator = Accelerator(cpu=policy.device.type == "cpu", mixed_precision="bf16" if bf16 else "no")
        torch.manual_seed(seed)
        if settings.lora:
            self._add_lora()
        model = policy.model
        on_cpu = policy.device.type == "cpu"
        # "auto" on CUDA, or with a budget: as few layers as fit it, planned before the first step.
        self.plans_memory = settings.gradient_checkpointing == "auto" and (not on_cpu or settings.memory_budget_gib > 0)
        self.memory_plan: activation_checkpointing.MemoryPlan | None = None
        self.gradient_checkpointing = not self.plans_memory and resolve_auto(settings.gradient_checkpointing, on_cpu)
        self.checkpointed_layers = 0
        if self.gradient_checkpointing:
            self.checkpointed_layers = enable_activation_checkpointing(model, settings.checkpoint_layers)
        # With LoRA the reference is the base model with adapters off: nothing to copy.
        self.reference = None
        if settings.beta > 0 and not settings.lora:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.trainable = [p for p in model.parameters() if p.requires_grad]  # the optimizer state's order
        self.sharded = resolve_auto(settings.shard_optimizer, True) and self.accelerator.num_processes > 1
        self.optimizer_saved_after = optimizer_saved_after
        self._gathered: tuple[int, dict[str, Any]] | None = None  # (policy version, full optimizer state)
        # The fused kernel updates every parameter in one pass (TRL's default on CUDA too); foreach makes
        # whole-model temporaries (one more copy of the weights at the step's peak).
        optimizer = optimizer_sharding.adamw(
            self.trainable,
            shard=self.sharded,
            lr=settings.lr,
            betas=settings.adam_betas,
            weight_decay=settings.weight_decay,
            fused=policy.device.type in ("cuda", "cpu"),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings, total_steps))
        module = CompletionLogprobs(
            model,
            chunk_size=settings.logprob_chunk_size,
            temperature=temperature,
            compile=None if settings.compile_logprobs else False,
            compile_layers=resolve_auto(settings.compile_layers, policy.device.type == "cuda"),
        )
        if self.sharded:  # accelerate's wrapper reads the state dict, which only a collective gathers here
            self.module, self.optimizer = self.accelerator.prepare(module), optimizer
        else:
            self.module, self.optimizer = self.accelerator.prepare(module, optimizer)
        self.policy.weights_changed()  # DDP's start broadcasts rank 0's weights into the model
        self.scheduler = scheduler
        self._prompts: dict[str, tuple[int, ...]] = {}

    def close(self) -> None:
        """End the distributed process group, if this learner's launch has one.

        Left to the interpreter's exit, gloo's threads are torn down in no set order, and a
        process that finished first can abort ("terminate called without an active exception")
        while another still writes its checkpoint. So the processes wait for each other, then
        end the group together. Not after an error (the node closes
        its backends on the way out of one): the others may be inside another collective, and
        a barrier there would never return.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()

    def _add_lora(self) -> None:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise TrainingError("train.lora needs peft: pip install 'sapo-local[lora]'") from exc
        s = self.settings
        config = LoraConfig(
            r=s.lora_r,
            lora_alpha=s.lora_alpha,
            lora_dropout=s.lora_dropout,
            target_modules=list(s.lora_target_modules),
            task_type="CAUSAL_LM",
        )
        self.policy.model = get_peft_model(self.policy.model, config)

    # ------------------------------------------------------------------------ training

    def examples(self, groups: Sequence[Group]) -> list[Example]:
        tokenizer, eos = self.policy.tokenizer, self.policy.eos_ids[0]
        out = []
        for group in groups:
            prompt = self._prompts.get(group.problem.id)
            if prompt is None:
                prompt = self._prompts[group.problem.id] = tuple(prompt_ids(tokenizer, group.problem))
            own = group.node == self.node
            for completion, advantage in zip(group.completions, group.advantages):
                ids = completion_ids(tokenizer, completion, eos, own=own)
                # The sampler's log-probs count only for the very tokens it sampled.
                aligned = (
                    own
                    and self.settings.importance_sampling
                    and completion.logprobs is not None
                    and completion.token_ids is not None
                    and len(completion.logprobs) == len(ids)
                )
                if ids:
                    out.append(
                        Example(
                            prompt=prompt,
                            completion=tuple(ids),
                            advantage=advantage,
                            external=not own,
                            sampler_logprobs=tuple(completion.logprobs) if aligned else None,
                        )
                    )
        return out

    def train(self, groups: Sequence[Group], round: int) -> dict[str, float]:
        started = time.perf_counter()
        settings, accelerator = self.settings, self.accelerator
        examples = self.examples(groups)
        if not examples:
            return {}
        normalizer = loss_normalizer(
            [len(e.completion) for e in examples], settings.loss_type, self.max_completion_length
        )
        # Every process holds the same rollouts; each trains on its own share of them.
        shard, participates = process_share(examples, accelerator.process_index, accelerator.num_processes)
        batches = micro_batches(
            shard, settings.micro_batch_tokens, self.policy.tokenizer.pad_token_id, accelerator.device
        )
        if self.plans_memory and self.memory_plan is None:
            self._plan_memory(batches)
        old = self._logprobs(batches) if settings.num_iterations > 1 else [None] * len(batches)
        ref = self._reference_logprobs(batches) if settings.beta > 0 else [None] * len(batches)
        self.module.train()
        totals = StepTotals(accelerator.device, participates=participates)
        for _ in range(settings.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            for index, (batch, old_lp, ref_lp) in enumerate(zip(batches, old, ref)):
                last = index == len(batches) - 1
                # Gradients are all-reduced once, on the last micro-batch.
                with accelerator.no_sync(self.module) if not last else contextlib.nullcontext():
                    with accelerator.autocast():
                        flat = self.module(*batch.model_inputs())
                    logprobs = batch.to_padded(flat)
                    loss, metrics, is_weights = micro_batch_loss(logprobs, old_lp, ref_lp, batch, settings, normalizer)
                    # DDP averages gradients over processes; the normaliser already covers the whole batch.
                    accelerator.backward(loss * (accelerator.num_processes * float(participates)))
                totals.add_micro_batch(loss, metrics, batch.completion_tokens, is_weights, batch.known)
            grad_norm = self._update(totals.end_iteration(), round)
        self.policy.version += 1
        if self.sharded and (self.optimizer_saved_after is None or self.optimizer_saved_after(round)):
            gathered = optimizer_sharding.full_state(self.optimizer, self.trainable, device=accelerator.device)
            self._gathered = None if gathered is None else (self.policy.version, gathered)
        trained_tokens = sum(b.completion_tokens for b in batches) * settings.num_iterations
        summed = sum_over_processes(accelerator, totals.read(trained_tokens))
        seconds = time.perf_counter() - started
        out = token_means(summed)
        out.update(
            {
                "loss": summed["loss"] / settings.num_iterations,
                "grad_norm": grad_norm,
                "ratio_max": float(totals.ratio_max),
                "lr": self.scheduler.get_last_lr()[0],
                "completions": float(len(examples)),
                "external_completions": float(sum(e.external for e in examples)),
                "micro_batches": float(len(batches)),
                "checkpointed_layers": float(self.checkpointed_layers),
                "tokens": summed["tokens"],
                "seconds": seconds,
                "tokens_per_second": summed["tokens"] / seconds if seconds > 0 else 0.0,
            }
        )
        if self.policy.device.type == "cpu":
            memory.release()  # the step's freed activations, back to the system before generation
        return out

    def _plan_memory(self, batches: Sequence[MicroBatch]) -> None:
        """Checkpoint the fewest layers that let a step fit the memory budget (`sapo_local.activation_checkpointing`)."""
        settings, device = self.settings, self.policy.device
        budget = activation_checkpointing.budget_bytes(settings.memory_budget_gib, device)
        if budget is None:  # not reached: plans_memory asks for CUDA or a budget
            self.plans_memory = False
            return
        model = self.accelerator.unwrap_model(self.module).model
        largest = max(batches, key=lambda b: b.input_ids.numel())
        probe = CompletionLogprobs(model, chunk_size=settings.logprob_chunk_size, temperature=1.0, compile=False)
        try:
            with self.accelerator.autocast():
                footprint = activation_checkpointing.measure(model, lambda: probe(*largest.model_inputs()))
        except Exception as exc:  # a model whose layers the measurement does not know: train as before plans
            self.plans_memory = False
            log.warning(
                "%s: train: measuring the activations failed (%s: %s); no layer is checkpointed. "
                "Set train.gradient_checkpointing=true to checkpoint them regardless",
                self.node,
                type(exc).__name__,
                exc,
            )
            return
        # Later micro-batches may be as large as the token budget allows.
        factor = max(settings.micro_batch_tokens, largest.input_ids.numel()) / largest.input_ids.numel()
        self.memory_plan = activation_checkpointing.plan_step(
            budget,
            footprint.scaled(factor),
            model=model,
            held_also=[] if self.reference is None else [*self.reference.parameters(), *self.reference.buffers()],
            optimizer=self.optimizer,
            chunk_tokens=min(settings.logprob_chunk_size, round(largest.completion_tokens * factor)),
            distributed=self.accelerator.num_processes > 1,
        )
        if self.memory_plan.checkpointed:
            enable_activation_checkpointing(model, 0.0)
            self.checkpointed_layers = activation_checkpointing.checkpoint_first(model, self.memory_plan.checkpointed)
            self.gradient_checkpointing = True
        if self.memory_plan.fits:
            log.info("%s: train: %s", self.node, self.memory_plan.describe())
        else:
            log.warning(
                "%s: train: %s: it may not fit even so; lower train.micro_batch_tokens, turn train.lora on, "
                "or raise train.memory_budget_gib if the device has more",
                self.node,
                self.memory_plan.describe(),
            )

    def _update(self, loss: torch.Tensor, round: int) -> float:
        """One optimizer update from the accumulated gradients, unless the loss or their norm is not finite."""
        # A non-finite loss gives non-finite gradients on every rank (the all-reduce spreads them):
        # checked here, once, before anything is applied.
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(
                f"round {round}: the loss is {loss_value} (not finite); no update was applied. "
                "Lower train.lr, check the rewards, or resume from the last checkpoint."
            )
        grad_norm = self._clip()
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"round {round}: the gradient norm is {grad_norm}; no update was applied")
        self.optimizer.step()
        self.policy.weights_changed()
        self.scheduler.step()
        # The gradients are dead until the next backward makes them anew (zero_grad above would
        # drop them then): freed now, they take no memory while the node generates and evaluates.
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _clip(self) -> float:
        params = [p for p in self.module.parameters() if p.requires_grad]
        if self.settings.max_grad_norm > 0:
            return float(self.accelerator.clip_grad_norm_(params, self.settings.max_grad_norm))
        grads = [p.grad.detach().norm() for p in params if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    @torch.no_grad()
    def _logprobs(self, batches: Sequence[MicroBatch]) -> list[torch.Tensor]:
        """The current policy's log-probs, frozen: pi_old for num_iterations > 1."""
        self.module.eval()
        return [batch.to_padded(self.module(*batch.model_inputs())).detach() for batch in batches]

    @torch.no_grad()
    def _reference_logprobs(self, batches: Sequence[MicroBatch]) -> list[torch.Tensor]:
        unwrapped = self.accelerator.unwrap_model(self.module)
        if self.reference is None:  # LoRA: the base model is the reference
            with unwrapped.model.disable_adapter():
                return self._logprobs(batches)
        reference = CompletionLogprobs(
            self.reference,
            chunk_size=unwrapped.chunk_size,
            temperature=unwrapped.temperature,
            compile=unwrapped.compile,
        )
        return [batch.to_padded(reference(*batch.model_inputs())) for batch in batches]

    # ------------------------------------------------------------------------ state

    def save(self, folder: Path, *, optimizer: bool = True) -> None:
        """Model (or adapter) by save_pretrained in safetensors; schedule and RNG in safe formats; and
        with ``optimizer`` the optimizer's state, in ``folder/optimizer/`` (`OPTIMIZER_DIR`: the
        checkpointer keeps it in its newest checkpoint only)."""
        if not self.accelerator.is_main_process:
            return
        model = self.accelerator.unwrap_model(self.module).model
        model.save_pretrained(folder / "model", safe_serialization=True)
        self.policy.tokenizer.save_pretrained(folder / "model")
        state = self._optimizer_state() if optimizer else None
        if state is not None:
            learner_state.save_optimizer(folder / OPTIMIZER_DIR, state)
        learner_state.save_rng(folder / "rng.safetensors")
        state = {
            "scheduler": self.scheduler.state_dict(),  # its lr_lambdas are plain functions: stored as null
            "policy_version": self.policy.version,
            "python_random": learner_state.python_random_state(),
            "lora": self.settings.lora,
        }
        (folder / "learner.json").write_text(json.dumps(state, indent=1, sort_keys=True))

    def _optimizer_state(self) -> dict[str, Any] | None:
        """The optimizer's whole state dict; a sharded one's as gathered after this step, or None (with a warning)."""
        if not self.sharded:
            return self.optimizer.state_dict()
        gathered, self._gathered = self._gathered, None  # the main process's copy of every share: freed once saved
        if gathered is not None and gathered[0] == self.policy.version:
            return gathered[1]
        log.warning(
            "%s: the optimizer's state is sharded over the processes and was not gathered after this step: the "
            "checkpoint holds none (a resume from it starts AdamW's moments at zero)",
            self.node,
        )
        return None

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        if self.sharded:
            optimizer_sharding.load_full_state(self.optimizer, self.trainable, state)
        else:
            self.optimizer.load_state_dict(state)

    def load(self, folder: Path) -> None:
        state = json.loads((folder / "learner.json").read_text())
        if state.get("lora", False) != self.settings.lora:
            raise TrainingError(
                f"{folder}: the checkpoint was saved with lora={state.get('lora')}, this run has "
                f"train.lora={self.settings.lora}"
            )
        model = self.accelerator.unwrap_model(self.module).model
        learner_state.load_weights(model, folder / "model", lora=self.settings.lora)
        self.policy.weights_changed()
        fresh = False
        if (folder / OPTIMIZER_DIR / "optimizer.safetensors").is_file():
            self._load_optimizer_state(learner_state.read_optimizer(folder / OPTIMIZER_DIR))
        elif (folder / "optimizer.safetensors").is_file():  # the layout before OPTIMIZER_DIR
            self._load_optimizer_state(learner_state.read_optimizer(folder, skeleton=state["optimizer"]))
        else:
            # The checkpoint after a run's last round, or checkpoint.optimizer_state = "none".
            log.warning(
                "the checkpoint holds no optimizer state: training continues from its weights, learning-rate "
                "schedule and RNG with a fresh optimizer (AdamW's moments start at zero; "
                'checkpoint.optimizer_state = "all" keeps them in every checkpoint)'
            )
            fresh = True
        self.scheduler.load_state_dict(state["scheduler"])
        if fresh:  # the learning rate where the schedule is, as a loaded optimizer state would have it
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr
        self.policy.version = int(state["policy_version"])
        learner_state.set_python_random_state(state["python_random"])
        learner_state.load_rng(folder / "rng.safetensors")


def micro_batch_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    batch: MicroBatch,
    settings: GRPOSettings,
    normalizer: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """`grpo_loss` of one micro-batch, its metrics, and its truncated-IS weights where the sampler's log-probs are known."""
    is_weights = None
    if batch.sampler is not None and batch.known is not None:
        is_weights = truncated_is_weights(
            logprobs if old_logprobs is None else old_logprobs,
            batch.sampler,
            batch.known,
            cap=settings.importance_sampling_cap,
        )
    loss, metrics = grpo_loss(
        logprobs,
        old_logprobs,
        batch.advantages,
        batch.mask,
        normalizer=normalizer,
        loss_type=settings.loss_type,
        epsilon_low=settings.epsilon_low,
        epsilon_high=settings.epsilon_high,
        beta=settings.beta,
        ref_logprobs=ref_logprobs,
        is_weights=is_weights,
    )
    return loss, metrics, is_weights


def build_grpo(settings: GRPOSettings, context: BackendContext) -> GRPOLearner:
    config = context.config
    policy = get_policy(context, device=settings.device, dtype=settings.dtype)
    return GRPOLearner(
        policy,
        settings,
        total_steps=settings.total_steps or config.run.rounds * settings.num_iterations,
        # The learner's log-probs are of the distribution generation sampled from; greedy (0) has none.
        temperature=config.inference.temperature or 1.0,
        max_completion_length=config.inference.max_new_tokens,
        seed=context.seed,
        node=context.node,
        optimizer_saved_after=functools.partial(recording.saves_optimizer_state, config),
    )
