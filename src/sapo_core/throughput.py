"""Generated tokens per second over a round: the meter behind an inference backend's `round_metrics`."""

from __future__ import annotations

from collections.abc import Iterable

from sapo_core.records import Completion

__all__ = ["TokenMeter"]


class TokenMeter:
    """Counts generated tokens and the seconds spent generating them, until the next `read`."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0

    def add(self, completions: Iterable[Completion | None], seconds: float) -> None:
        self.tokens += sum(c.num_tokens or 0 for c in completions if c is not None)
        self.seconds += seconds

    def read(self) -> dict[str, float]:
        """``tokens``, ``seconds`` and ``tokens_per_second`` since the last read; then start again."""
        tokens, seconds = self.tokens, self.seconds
        self.tokens, self.seconds = 0, 0.0
        return {
            "tokens": float(tokens),
            "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
            "seconds": seconds,
        }
