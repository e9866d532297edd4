"""The ``grpo`` learner: policy-gradient steps on scored groups, for Hugging Face causal LMs.

One `train` call is one learner step (``num_iterations`` optimizer updates on the same
rollouts). The batch is split into micro-batches by a token budget, sorted by length so
little is padding; gradients accumulate over them with a normaliser computed on the whole
batch, so the result does not depend on how the batch was split (see `sapo_local.loss`).

Under ``accelerate launch`` every process runs the same node loop (same seeds, so the same
rollouts) and trains on its own share of the completions; DDP averages the gradients.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors.torch import load_file, save_file

from sapo_core.checkpoints import OPTIMIZER_DIR
from sapo_core.errors import TrainingError
from sapo_core.interfaces import BackendContext
from sapo_core.records import Group
from sapo_local import memory
from sapo_local.logprobs import selected_logprobs
from sapo_local.loss import grpo_loss, loss_normalizer, truncated_is_weights
from sapo_local.policy import Policy, completion_ids, get_policy, prompt_ids
from sapo_local.settings import GRPOSettings

log = logging.getLogger("sapo.local")


@attrs.frozen
class Example:
    """One completion to train on: its tokens, advantage and where it came from."""

    prompt: tuple[int, ...]
    completion: tuple[int, ...]
    advantage: float
    external: bool
    sampler_logprobs: tuple[float, ...] | None = None  # the generating engine's, one per completion token

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.completion)


class CompletionLogprobs(torch.nn.Module):
    """Log-probs of the completion tokens of a padded batch; the module DDP wraps.

    Only the completion positions go through the vocabulary projection, in checkpointed
    chunks, so the full [tokens, vocab] logits never exist at once.
    """

    def __init__(self, model: Any, *, chunk_size: int, temperature: float, compile: bool | None = None) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.temperature = temperature
        self.compile = compile  # of the per-chunk log-prob kernels; None: on CUDA (see selected_logprobs)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.softcap = getattr(base.config, "final_logit_softcapping", None)

    def _base(self) -> Any:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        base = self._base()
        hidden = base.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
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


@attrs.frozen
class MicroBatch:
    input_ids: torch.Tensor  # [B, L] right-padded prompt + completion
    attention_mask: torch.Tensor
    rows: torch.Tensor  # [N] row of each completion token
    positions: torch.Tensor  # [N] its position in the row
    targets: torch.Tensor  # [N] its token id
    mask: torch.Tensor  # [B, T] 1 on real completion tokens
    advantages: torch.Tensor  # [B]
    tokens: int
    slots: torch.Tensor  # [N] where each completion token lands in the flattened [B, T]
    completion_tokens: int  # N
    sampler: torch.Tensor | None = None  # [B, T] the sampler's log-probs where known ...
    known: torch.Tensor | None = None  # [B, T] ... that is, where this is 1

    def to_padded(self, flat: torch.Tensor) -> torch.Tensor:
        """[N] per-token values -> [B, T] with zeros on padding."""
        # Indices made at collate time: a boolean-mask assignment would wait for the GPU to count the mask.
        return flat.new_zeros(self.mask.numel()).index_put((self.slots,), flat).view(self.mask.shape)


def micro_batches(examples: Sequence[Example], budget: int, pad_id: int, device: torch.device) -> list[MicroBatch]:
    """Length-sorted micro-batches whose padded size (rows x longest row) stays within ``budget``."""
    order = sorted(examples, key=lambda e: e.length)
    batches: list[list[Example]] = []
    for example in order:
        current = batches[-1] if batches else None
        # Sorted ascending, so the newest example is the longest of its batch.
        if current is not None and (len(current) + 1) * example.length <= budget:
            current.append(example)
        else:
            batches.append([example])
    return [_collate(batch, pad_id, device) for batch in batches]


def _collate(batch: Sequence[Example], pad_id: int, device: torch.device) -> MicroBatch:
    width = max(e.length for e in batch)
    longest = max(len(e.completion) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.float32)
    rows, positions, targets = [], [], []
    with_sampler = any(e.sampler_logprobs is not None for e in batch)
    sampler = torch.zeros((len(batch), longest), dtype=torch.float32) if with_sampler else None
    known = torch.zeros((len(batch), longest), dtype=torch.float32) if with_sampler else None
    for i, example in enumerate(batch):
        ids = [*example.prompt, *example.completion]
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        mask[i, : len(example.completion)] = 1
        if sampler is not None and known is not None and example.sampler_logprobs is not None:
            sampler[i, : len(example.completion)] = torch.tensor(example.sampler_logprobs, dtype=torch.float32)
            known[i, : len(example.completion)] = 1
        start = len(example.prompt)
        rows += [i] * len(example.completion)
        positions += range(start, start + len(example.completion))
        targets += example.completion
    return MicroBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        rows=torch.tensor(rows, device=device),
        positions=torch.tensor(positions, device=device),
        targets=torch.tensor(targets, device=device),
        mask=mask.to(device),
        advantages=torch.tensor([e.advantage for e in batch], dtype=torch.float32, device=device),
        tokens=int(attention.sum()),
        slots=mask.flatten().nonzero().squeeze(1).to(device),
        completion_tokens=len(targets),
        sampler=None if sampler is None else sampler.to(device),
        known=None if known is None else known.to(device),
    )


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
    ) -> None:
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
        checkpointing = settings.gradient_checkpointing
        self.gradient_checkpointing = policy.device.type == "cpu" if checkpointing == "auto" else bool(checkpointing)
        if self.gradient_checkpointing:
            # Recomputation repeats the same operations on the same inputs: the gradients are the same.
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        # With LoRA the reference is the base model with adapters off: nothing to copy.
        self.reference = None
        if settings.beta > 0 and not settings.lora:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        trainable = [p for p in model.parameters() if p.requires_grad]
        # The fused kernel updates every parameter in one pass (TRL's default on CUDA too); on the CPU it
        # is also about 10x faster than foreach, which makes whole-model temporaries (one more copy of
        # the weights at the step's peak).
        optimizer = torch.optim.AdamW(
            trainable,
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
        )
        self.module, self.optimizer = self.accelerator.prepare(module, optimizer)
        self.scheduler = scheduler
        self._prompts: dict[str, tuple[int, ...]] = {}

    def close(self) -> None:
        """End the distributed process group, if this learner's launch has one.

        Left to the interpreter's exit, gloo's threads are torn down in no set order, and a
        process that finished first aborted ("terminate called without an active exception")
        in about one run in four while another still wrote its checkpoint. So the processes
        wait for each other, then end the group together. Not after an error (the node closes
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
        shard = examples[accelerator.process_index :: accelerator.num_processes]
        # Fewer completions than processes: a rank without a share still has to take part in
        # DDP's gradient all-reduce, or the others wait for it forever. It runs one completion
        # with weight 0: no gradient, no metrics, no tokens of its own.
        weight = 1.0 if shard else 0.0
        shard = shard or examples[:1]
        batches = micro_batches(
            shard, settings.micro_batch_tokens, self.policy.tokenizer.pad_token_id, accelerator.device
        )
        old = self._logprobs(batches) if settings.num_iterations > 1 else [None] * len(batches)
        ref = self._reference_logprobs(batches) if settings.beta > 0 else [None] * len(batches)
        self.module.train()
        # Metrics stay on the device until the step is done: reading one back mid-step would stall
        # the CPU until the GPU caught up, between the forward and the backward of every micro-batch.
        totals: dict[str, torch.Tensor] = {}
        ratio_max = torch.zeros((), device=accelerator.device)

        def add(key: str, value: torch.Tensor) -> None:
            totals[key] = totals[key] + value if key in totals else value

        for _ in range(settings.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=accelerator.device)
            for index, (batch, old_lp, ref_lp) in enumerate(zip(batches, old, ref)):
                last = index == len(batches) - 1
                # Gradients are all-reduced once, on the last micro-batch.
                with accelerator.no_sync(self.module) if not last else contextlib.nullcontext():
                    with accelerator.autocast():
                        flat = self.module(
                            batch.input_ids, batch.attention_mask, batch.rows, batch.positions, batch.targets
                        )
                    logprobs = batch.to_padded(flat)
                    is_weights = None
                    if batch.sampler is not None and batch.known is not None:
                        is_weights = truncated_is_weights(
                            logprobs if old_lp is None else old_lp,
                            batch.sampler,
                            batch.known,
                            cap=settings.importance_sampling_cap,
                        )
                        add("is_weight_sum", (is_weights * batch.known).sum() * weight)
                        add("is_tokens", batch.known.sum() * weight)
                    loss, metrics = grpo_loss(
                        logprobs,
                        old_lp,
                        batch.advantages,
                        batch.mask,
                        normalizer=normalizer,
                        loss_type=settings.loss_type,
                        epsilon_low=settings.epsilon_low,
                        epsilon_high=settings.epsilon_high,
                        beta=settings.beta,
                        ref_logprobs=ref_lp,
                        is_weights=is_weights,
                    )
                    # DDP averages gradients over processes; the normaliser already covers the whole batch.
                    accelerator.backward(loss * (accelerator.num_processes * weight))
                for key, value in metrics.items():
                    if key == "ratio_max":
                        ratio_max = torch.maximum(ratio_max, value.float() * weight)
                    else:  # means over real tokens: weight by them
                        add(key, value.float() * (batch.completion_tokens * weight))
                loss_sum = loss_sum + loss.detach().float() * weight
            # A non-finite loss gives non-finite gradients on every rank (the all-reduce spreads them):
            # checked here, once, before anything is applied.
            loss_value = float(loss_sum)
            if not math.isfinite(loss_value):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingError(
                    f"round {round}: the loss is {loss_value} (not finite); no update was applied. "
                    "Lower train.lr, check the rewards, or resume from the last checkpoint."
                )
            add("loss", loss_sum)
            grad_norm = self._clip()
            if not math.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingError(f"round {round}: the gradient norm is {grad_norm}; no update was applied")
            self.optimizer.step()
            self.scheduler.step()
            # The gradients are dead until the next backward makes them anew (zero_grad above would
            # drop them then): freed now, they take no memory while the node generates and evaluates.
            self.optimizer.zero_grad(set_to_none=True)
        self.policy.version += 1
        values = torch.stack(list(totals.values())).tolist() if totals else []  # one read for all of them
        summed = dict(zip(totals, map(float, values)))
        summed.setdefault("is_weight_sum", 0.0)  # every process reports the same keys, whatever its share held
        summed.setdefault("is_tokens", 0.0)
        summed["tokens"] = float(sum(b.completion_tokens for b in batches) * settings.num_iterations * weight)
        totals = self._sum_over_processes(summed)
        seconds = time.perf_counter() - started
        iterations = settings.num_iterations
        is_sum, is_tokens = totals.pop("is_weight_sum", 0.0), totals.pop("is_tokens", 0.0)
        out = {
            key: value / max(1.0, totals["tokens"]) for key, value in totals.items() if key not in ("loss", "tokens")
        }
        if is_tokens:  # the mean truncated-IS weight over the tokens that had the sampler's log-probs
            out["is_weight_mean"] = is_sum / is_tokens
        out.update(
            {
                "loss": totals["loss"] / iterations,
                "grad_norm": grad_norm,
                "ratio_max": float(ratio_max),
                "lr": self.scheduler.get_last_lr()[0],
                "completions": float(len(examples)),
                "external_completions": float(sum(e.external for e in examples)),
                "micro_batches": float(len(batches)),
                "tokens": totals["tokens"],
                "seconds": seconds,
                "tokens_per_second": totals["tokens"] / seconds if seconds > 0 else 0.0,
            }
        )
        if self.policy.device.type == "cpu":
            memory.release()  # the step's freed activations, back to the system before generation
        return out

    def _sum_over_processes(self, totals: dict[str, float]) -> dict[str, float]:
        """Each process saw its share of the batch: the figures of the step are the sums."""
        if self.accelerator.num_processes == 1:
            return totals
        keys = sorted(totals)
        summed = self.accelerator.reduce(
            torch.tensor([totals[k] for k in keys], device=self.accelerator.device, dtype=torch.float64),
            reduction="sum",
        )
        return dict(zip(keys, summed.tolist()))

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
        return [
            batch.to_padded(
                self.module(batch.input_ids, batch.attention_mask, batch.rows, batch.positions, batch.targets)
            ).detach()
            for batch in batches
        ]

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
        return [
            batch.to_padded(
                reference(batch.input_ids, batch.attention_mask, batch.rows, batch.positions, batch.targets)
            )
            for batch in batches
        ]

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
        if optimizer:
            tensors, structure = _flatten_optimizer(self.optimizer.state_dict())
            (folder / OPTIMIZER_DIR).mkdir(exist_ok=True)
            save_file(tensors, str(folder / OPTIMIZER_DIR / "optimizer.safetensors"))
            (folder / OPTIMIZER_DIR / "optimizer.json").write_text(json.dumps(structure, indent=1, sort_keys=True))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(folder / "rng.safetensors"))
        state = {
            "scheduler": self.scheduler.state_dict(),  # its lr_lambdas are plain functions: stored as null
            "policy_version": self.policy.version,
            "python_random": _jsonable_random_state(random.getstate()),
            "lora": self.settings.lora,
        }
        (folder / "learner.json").write_text(json.dumps(state, indent=1, sort_keys=True))

    def load(self, folder: Path) -> None:
        state = json.loads((folder / "learner.json").read_text())
        if state.get("lora", False) != self.settings.lora:
            raise TrainingError(
                f"{folder}: the checkpoint was saved with lora={state.get('lora')}, this run has "
                f"train.lora={self.settings.lora}"
            )
        model = self.accelerator.unwrap_model(self.module).model
        _load_weights(model, folder / "model", lora=self.settings.lora)
        fresh = False
        if (folder / OPTIMIZER_DIR / "optimizer.safetensors").is_file():
            tensors = load_file(str(folder / OPTIMIZER_DIR / "optimizer.safetensors"), device="cpu")
            structure = json.loads((folder / OPTIMIZER_DIR / "optimizer.json").read_text())
            self.optimizer.load_state_dict(_unflatten_optimizer(tensors, structure))
        elif (folder / "optimizer.safetensors").is_file():  # the layout before OPTIMIZER_DIR
            tensors = load_file(str(folder / "optimizer.safetensors"), device="cpu")
            self.optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
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
        random.setstate(_random_state_from_json(state["python_random"]))
        rng = load_file(str(folder / "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available():
            states = [rng[key] for key in sorted(rng) if key.startswith("cuda.")]
            if states:
                torch.cuda.set_rng_state_all(states)


def _flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict as named tensors (safetensors) and a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, entries in state["state"].items():
        slots = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                key = f"{index}.{name}"
                tensors[key] = value.detach().to("cpu").contiguous()
                slots[name] = {"tensor": key}
            else:
                slots[name] = {"value": value}
        skeleton["state"][str(index)] = slots
    return tensors, skeleton


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], skeleton: Mapping[str, Any]) -> dict[str, Any]:
    state = {}
    for index, slots in skeleton["state"].items():
        state[int(index)] = {
            name: tensors[slot["tensor"]] if "tensor" in slot else slot["value"] for name, slot in slots.items()
        }
    return {"state": state, "param_groups": skeleton["param_groups"]}


def _jsonable_random_state(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _random_state_from_json(data: Sequence[Any]) -> tuple[Any, ...]:
    return (data[0], tuple(data[1]), data[2])


def _load_weights(model: Any, folder: Path, *, lora: bool) -> None:
    """Weights saved by save_pretrained back into the live model (tensors only: no pickle)."""
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = (
        {key for key in missing if key.endswith("lm_head.weight")}
        if getattr(model.config, "tie_word_embeddings", False)
        else set()
    )
    if unexpected or set(missing) - tied:
        raise TrainingError(
            f"{folder}: checkpoint does not match the model (missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )


def build_grpo(settings: GRPOSettings, context: BackendContext) -> GRPOLearner:
    config = context.config
    policy = get_policy(context, device=settings.device, dtype=settings.dtype)
    rounds = int(config.get("run", {}).get("rounds", 1))
    inference = config.get("inference", {})
    return GRPOLearner(
        policy,
        settings,
        total_steps=settings.total_steps or rounds * settings.num_iterations,
        temperature=float(inference.get("temperature", 1.0)) or 1.0,
        max_completion_length=int(inference.get("max_new_tokens", 256)),
        seed=context.seed,
        node=context.node,
    )
