"""The completions a learner step trains on, and their length-sorted micro-batches.

A micro-batch is padded to its longest row; sorting by length before cutting keeps that padding
small. Under a distributed launch every process holds the same completions and takes every
n-th of them (`process_share`).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch


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

    def model_inputs(self) -> tuple[torch.Tensor, ...]:
        """The arguments of `CompletionLogprobs.forward`, in order."""
        return self.input_ids, self.attention_mask, self.rows, self.positions, self.targets

    def to_padded(self, flat: torch.Tensor) -> torch.Tensor:
        """[N] per-token values -> [B, T] with zeros on padding."""
        # Indices made at collate time: a boolean-mask assignment would wait for the GPU to count the mask.
        return flat.new_zeros(self.mask.numel()).index_put((self.slots,), flat).view(self.mask.shape)


def process_share(examples: Sequence[Example], rank: int, size: int) -> tuple[list[Example], bool]:
    """This process's share of the step's completions, and whether it has one of its own.

    With fewer completions than processes, a rank without a share still has to take part in
    DDP's gradient all-reduce, or the others wait for it forever: it gets a stand-in completion
    and ``False``, and the learner counts that completion for nothing (no gradient, no metrics,
    no tokens).
    """
    share = list(examples[rank::size])
    return (share, True) if share else (list(examples[:1]), False)


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
