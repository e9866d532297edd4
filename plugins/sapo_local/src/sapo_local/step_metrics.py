"""A learner step's metrics: summed on the device as the step runs, read back once, then averaged.

Reading a value back mid-step would stall the CPU until the GPU caught up, between the forward
and the backward of every micro-batch; so `StepTotals` keeps tensors and `StepTotals.read` makes
the one transfer. Each process sums its own share; `sum_over_processes` adds the shares up, and
`token_means` turns the sums into the step's per-token means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


class StepTotals:
    """Running sums of one learner step's metrics, on the device.

    ``participates``: False on a rank that trains on a stand-in completion only (see
    `sapo_local.batching.process_share`); everything it adds then counts for nothing.
    """

    def __init__(self, device: torch.device, *, participates: bool) -> None:
        self.participates = participates
        self.sums: dict[str, torch.Tensor] = {}
        self.ratio_max = torch.zeros((), device=device)
        self.iteration_loss = torch.zeros((), device=device)

    def add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def add_micro_batch(
        self,
        loss: torch.Tensor,
        metrics: Mapping[str, torch.Tensor],
        completion_tokens: int,
        is_weights: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
    ) -> None:
        """One micro-batch's loss, `grpo_loss` metrics and, where the sampler's log-probs were known, IS weights."""
        counted = float(self.participates)
        if is_weights is not None and known is not None:
            self.add("is_weight_sum", (is_weights * known).sum() * counted)
            self.add("is_tokens", known.sum() * counted)
        for key, value in metrics.items():
            if key == "ratio_max":
                self.ratio_max = torch.maximum(self.ratio_max, value.float() * counted)
            else:  # means over real tokens: weighted by them
                self.add(key, value.float() * (completion_tokens * counted))
        self.iteration_loss = self.iteration_loss + loss.detach().float() * counted

    def end_iteration(self) -> torch.Tensor:
        """The loss summed over the micro-batches of one optimizer update, added to the step's; then reset."""
        loss, self.iteration_loss = self.iteration_loss, torch.zeros_like(self.iteration_loss)
        self.add("loss", loss)
        return loss

    def read(self, tokens: int) -> dict[str, float]:
        """The sums as floats, in one transfer, with the completion ``tokens`` this process trained on."""
        values = torch.stack(list(self.sums.values())).tolist() if self.sums else []
        summed = dict(zip(self.sums, map(float, values)))
        summed.setdefault("is_weight_sum", 0.0)  # every process reports the same keys, whatever its share held
        summed.setdefault("is_tokens", 0.0)
        summed["tokens"] = float(tokens * float(self.participates))
        return summed


def sum_over_processes(accelerator: Any, totals: dict[str, float]) -> dict[str, float]:
    """Each process saw its share of the batch: the figures of the step are the sums."""
    if accelerator.num_processes == 1:
        return totals
    keys = sorted(totals)
    summed = accelerator.reduce(
        torch.tensor([totals[k] for k in keys], device=accelerator.device, dtype=torch.float64),
        reduction="sum",
    )
    return dict(zip(keys, summed.tolist()))


def token_means(totals: Mapping[str, float]) -> dict[str, float]:
    """Per-token means of the summed metrics; the IS weights' over the tokens that had the sampler's log-probs."""
    out = {
        key: value / max(1.0, totals["tokens"])
        for key, value in totals.items()
        if key not in ("loss", "tokens", "is_weight_sum", "is_tokens")
    }
    if totals.get("is_tokens", 0.0):
        out["is_weight_mean"] = totals["is_weight_sum"] / totals["is_tokens"]
    return out
