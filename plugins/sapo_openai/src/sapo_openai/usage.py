"""Usage accounting of a hosted API (requests, tokens, retries, estimated cost) and the run's caps.

Prices are estimates in US dollars per million tokens (input, output), from the providers'
public price pages; the longest matching model-name prefix wins. A model not listed has no cost
estimate unless ``price_input``/``price_output`` are set; ``max_dollars`` then refuses to start.
Tokens generated through a batch endpoint (``inference.mode = "batch"``) cost `BATCH_PRICE_FACTOR`
of the listed price: OpenAI's Batch API and Anthropic's Message Batches both bill half.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from sapo_core.errors import ConfigError

#: Model-name prefix -> (input, output) dollars per million tokens. Checked 2025; set
#: ``price_input``/``price_output`` for a model not listed or a price that changed.
PRICES: Mapping[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "deepseek-chat": (0.28, 0.42),
    "deepseek-reasoner": (0.28, 0.42),
    "claude-3-haiku": (0.25, 1.25),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
}

#: The share of the listed price a batch endpoint bills (OpenAI Batch API, Anthropic Message Batches: 50%).
BATCH_PRICE_FACTOR = 0.5


def price_of(
    model: str, price_input: float | None = None, price_output: float | None = None
) -> tuple[float, float] | None:
    """(input, output) dollars per million tokens: the settings' if both are given, else the table's."""
    if price_input is not None and price_output is not None:
        return price_input, price_output
    matches = [prefix for prefix in PRICES if model.startswith(prefix)]
    if not matches:
        return None
    known = PRICES[max(matches, key=len)]
    return (known[0] if price_input is None else price_input, known[1] if price_output is None else price_output)


@attrs.define
class Counters:
    requests: int = 0  # tries sent, retries included
    failed: int = 0  # requests that failed for good (after their retries)
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    problems_failed: int = 0  # problems returned with fewer completions than asked for
    capped: int = 0  # requests not sent because a cap was reached
    batch_calls: int = 0  # batch mode: uploads, creates, polls, downloads, cancels (tries included)
    batches: int = 0  # batch mode: batches submitted
    late_completions: int = 0  # batch mode: completions of an earlier round's batch, collected after it


@attrs.define
class Caps:
    max_requests: int = 0
    max_tokens: int = 0
    max_dollars: float = 0.0

    def reached(self, total: Counters) -> str | None:
        """Which cap ``total`` has reached, in words, or None."""
        if self.max_requests and total.requests >= self.max_requests:
            return f"max_requests = {self.max_requests} ({total.requests} requests sent)"
        tokens = total.prompt_tokens + total.completion_tokens
        if self.max_tokens and tokens >= self.max_tokens:
            return f"max_total_tokens = {self.max_tokens} ({tokens} tokens used)"
        if self.max_dollars and total.cost_usd >= self.max_dollars:
            return f"max_dollars = {self.max_dollars:g} (about ${total.cost_usd:.4f} spent)"
        return None


@attrs.define
class Usage:
    """Counters of the whole run (for the caps) and since the last `drain` (a round's metrics)."""

    price: tuple[float, float] | None = None
    caps: Caps = attrs.field(factory=Caps)
    total: Counters = attrs.field(factory=Counters)
    since: Counters = attrs.field(factory=Counters)
    in_flight: int = 0
    peak_in_flight: int = 0  # since the last drain
    batch: bool = False  # batch mode: the batch price, and the batch_* metrics

    @classmethod
    def build(
        cls,
        model: str,
        *,
        price_input: float | None,
        price_output: float | None,
        max_requests: int,
        max_tokens: int,
        max_dollars: float,
        where: str,
    ) -> Usage:
        price = price_of(model, price_input, price_output)
        if max_dollars and price is None:
            raise ConfigError(
                f"{where}.max_dollars needs the price of model {model!r}, which sapo does not know: set "
                f"{where}.price_input and {where}.price_output (dollars per million tokens)"
            )
        return cls(price=price, caps=Caps(max_requests, max_tokens, max_dollars))

    def _add(self, **amounts: float) -> None:
        for counters in (self.total, self.since):
            for name, amount in amounts.items():
                setattr(counters, name, getattr(counters, name) + amount)

    def started(self) -> None:
        self._add(requests=1)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def ended(self) -> None:
        self.in_flight -= 1

    def tokens(self, prompt: int, completion: int) -> None:
        cost = 0.0 if self.price is None else (prompt * self.price[0] + completion * self.price[1]) / 1e6
        if self.batch:
            cost *= BATCH_PRICE_FACTOR
        self._add(prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost)

    def count(self, what: str, amount: int = 1) -> None:
        self._add(**{what: amount})

    def cap_reached(self) -> str | None:
        return self.caps.reached(self.total)

    def drain(self) -> dict[str, float]:
        """The metrics since the last drain (``inference/requests`` ...) and the run's totals."""
        since, total = self.since, self.total
        metrics = {
            "requests": float(since.requests),
            "requests_failed": float(since.failed),
            "retries": float(since.retries),
            "prompt_tokens": float(since.prompt_tokens),
            "completion_tokens": float(since.completion_tokens),
            "problems_failed": float(since.problems_failed),
            "capped_requests": float(since.capped),
            "peak_in_flight": float(self.peak_in_flight),
            "run_requests": float(total.requests),
            "run_tokens": float(total.prompt_tokens + total.completion_tokens),
        }
        if self.batch:
            metrics.update(
                batch_calls=float(since.batch_calls),
                batches=float(since.batches),
                late_completions=float(since.late_completions),
            )
        if self.price is not None:
            metrics["cost_usd"] = since.cost_usd
            metrics["run_cost_usd"] = total.cost_usd
        self.since = Counters()
        self.peak_in_flight = self.in_flight
        return metrics
