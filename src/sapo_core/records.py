"""The data model: what a round produces and what nodes exchange.

Every record is a frozen attrs class made of JSON values only (str, int, float, bool, None,
tuples and string-keyed mappings), so it crosses processes and machines through
`sapo_core.codec` and nothing else. Validation of untrusted input lives in the codec; the
constructors here only normalise (lists to tuples) so records stay hashable and immutable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, cast

import attrs

__all__ = [
    "Completion",
    "FinishReason",
    "Group",
    "Message",
    "Problem",
    "Role",
    "RoundPayload",
    "SCHEMA_VERSION",
    "as_tuple",
]

#: Bumped whenever a field changes meaning or a required field is added.
SCHEMA_VERSION = 1

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "error"]


def as_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    """``tuple`` as an attrs converter that type checkers read: a field takes any iterable of its items."""
    return tuple(value)


def _tuple(value: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def _mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


@attrs.frozen
class Message:
    """One chat message."""

    role: Role
    content: str


def _messages(value: Sequence[Message | Mapping[str, str]]) -> tuple[Message, ...]:
    # A role outside Role is refused where it matters (the chat template, the codec's validation).
    return tuple(
        m if isinstance(m, Message) else Message(role=cast(Role, m["role"]), content=m["content"]) for m in value
    )


@attrs.frozen
class Problem:
    """A checkable task instance: the chat to send and what its verifier needs.

    `answer` and `metadata` are JSON values read only by the task's own verifier; the same
    (task, seed) gives the same problem on every machine.
    """

    task: str
    id: str
    messages: tuple[Message, ...] = attrs.field(converter=_messages)
    answer: Any = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping, eq=False)

    @property
    def prompt(self) -> str:
        """The text of the last user message."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


@attrs.frozen
class Completion:
    """One sampled answer to a problem.

    `token_ids` and `logprobs` are those of the generating model and tokenizer; a peer's
    learner re-tokenises `text` with its own tokenizer. `reasoning` holds a reasoning model's
    separate thinking text, kept apart from the answer.
    """

    text: str
    finish_reason: FinishReason = "stop"
    num_tokens: int | None = None
    token_ids: tuple[int, ...] | None = attrs.field(default=None, converter=_tuple)
    logprobs: tuple[float, ...] | None = attrs.field(default=None, converter=_tuple)
    reasoning: str | None = None


@attrs.frozen
class Group:
    """One problem, its G completions, their rewards and group-relative advantages.

    `node` is where the completions were generated; it stays with the group when it is
    shared, so a learner can tell its own rollouts from external ones.
    """

    problem: Problem
    completions: tuple[Completion, ...] = attrs.field(converter=as_tuple)
    rewards: tuple[float, ...] = attrs.field(converter=as_tuple)
    advantages: tuple[float, ...] = attrs.field(converter=as_tuple)
    node: str = ""

    def __attrs_post_init__(self) -> None:
        n = len(self.completions)
        if len(self.rewards) != n or len(self.advantages) != n:
            raise ValueError(
                f"group {self.problem.id!r}: {n} completions but {len(self.rewards)} rewards "
                f"and {len(self.advantages)} advantages"
            )

    @property
    def zero_variance(self) -> bool:
        """True when every completion scored the same: the group carries no learning signal."""
        return all(math.isclose(r, self.rewards[0], abs_tol=1e-12) for r in self.rewards)

    @property
    def no_signal(self) -> bool:
        """True when every advantage is 0 (equal rewards, or a gated group): nothing to learn from it."""
        return not any(self.advantages)

    @property
    def mean_reward(self) -> float:
        return sum(self.rewards) / len(self.rewards) if self.rewards else 0.0


@attrs.frozen
class RoundPayload:
    """What one node publishes for one round: its scored groups, optionally signed."""

    experiment: str
    round: int
    node: str
    groups: tuple[Group, ...] = attrs.field(converter=as_tuple)
    model: str = ""
    created_at: float = 0.0
    schema_version: int = SCHEMA_VERSION
    signature: str | None = None
