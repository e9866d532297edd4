"""``arithmetic``: evaluate an integer expression with + - * and parentheses.

Difficulty 1..5 sets the number of operands, their size, the operators and whether
parentheses appear (see `LEVELS`). The reference answer is the exact integer value.
"""

from __future__ import annotations

import random
import re

import attrs

from sapo_core.answers import build_messages, last_integer, normalize_answer
from sapo_core.records import Problem
from sapo_core.tasks.levels import OnLadder


@attrs.frozen
class Level:
    """What one difficulty level generates."""

    operands: int
    max_operand: int  # operands are drawn from 1..max_operand
    operators: str
    parentheses: bool


LEVELS: dict[int, Level] = {
    1: Level(operands=2, max_operand=10, operators="+-", parentheses=False),
    2: Level(operands=3, max_operand=20, operators="+-*", parentheses=False),
    3: Level(operands=4, max_operand=30, operators="+-*", parentheses=True),
    4: Level(operands=5, max_operand=50, operators="+-*", parentheses=True),
    5: Level(operands=6, max_operand=100, operators="+-*", parentheses=True),
}


@attrs.frozen
class ArithmeticSettings:
    """Settings of the ``arithmetic`` task."""

    #: 1 (two small operands, + and -) to 5 (six operands up to 100, *, parentheses). The
    #: default, 1, is the bundled SmolLM2-135M's edge (docs/benchmarks.md): at 2 it is right 1 % of the time.
    difficulty: int = attrs.field(default=1, validator=attrs.validators.in_(tuple(LEVELS)))


#: Longer answers are refused unread: the right one is a few digits.
MAX_ANSWER_CHARS = 64

# Optional sign, then digits, either plain or grouped by three with commas ("1,234,567").
_INTEGER = re.compile(r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)")

_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


@attrs.frozen
class _Node:
    op: str
    left: _Node | int
    right: _Node | int


def parse_integer(answer: str) -> int | None:
    """The integer an answer states, or None.

    Strict but fair: after NFKC (fullwidth digits count) and trimming whitespace, one optional
    sign, ASCII digits optionally grouped by commas in threes, and one optional trailing
    period. Anything else (words, units, decimals, spaces inside, zero-width characters)
    is no integer.
    """
    if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        return None
    text = normalize_answer(answer)
    text = text.removesuffix(".").rstrip()
    if not _INTEGER.fullmatch(text):
        return None
    return int(text.replace(",", ""))


class ArithmeticTask(OnLadder):
    """Integer expressions to evaluate; 1.0 for the exact value, else 0.0."""

    name = "arithmetic"
    description = "Evaluate an integer expression with + - * and parentheses (difficulty 1-5)."

    #: The curriculum's levels: the difficulties, in order.
    ladder = tuple({"difficulty": difficulty} for difficulty in sorted(LEVELS))

    def __init__(self, settings: ArithmeticSettings | None = None) -> None:
        self.settings = settings or ArithmeticSettings()

    def generate(self, seed: int) -> Problem:
        difficulty = self.settings.difficulty
        level = LEVELS[difficulty]
        rng = random.Random(seed)
        if level.parentheses:
            tree = _random_tree(rng, level, level.operands)
            expression, value = _render(tree), _evaluate(tree)
        else:
            expression, value = _random_chain(rng, level)
        prompt = (
            f"Compute the value of this expression:\n\n{expression}\n\n"
            "Put only the resulting integer in <answer></answer>."
        )
        return Problem(
            task=self.name,
            id=f"{self.name}-{difficulty}-{seed}",
            messages=build_messages(prompt),
            answer=value,
            metadata={"difficulty": difficulty, "expression": expression},
        )

    def untagged_answer(self, text: str) -> str | None:
        """The answer of a completion without answer tags: its last integer."""
        return last_integer(text)

    def verify(self, problem: Problem, answer: str) -> float:
        """1.0 when the answer states the reference integer (see `parse_integer`), else 0.0."""
        expected = problem.answer
        if type(expected) is not int:
            return 0.0
        return 1.0 if parse_integer(answer) == expected else 0.0


def _operand(rng: random.Random, level: Level) -> int:
    return rng.randint(1, level.max_operand)


def _random_chain(rng: random.Random, level: Level) -> tuple[str, int]:
    """A flat ``a op b op c`` expression and its value under the usual precedence."""
    first = _operand(rng, level)
    parts, total, term = [str(first)], 0, first
    for _ in range(level.operands - 1):
        op, number = rng.choice(level.operators), _operand(rng, level)
        parts += [op, str(number)]
        if op == "*":
            term *= number
        else:
            total += term
            term = number if op == "+" else -number
    return " ".join(parts), total + term


def _random_tree(rng: random.Random, level: Level, operands: int) -> _Node | int:
    if operands == 1:
        return _operand(rng, level)
    split = rng.randint(1, operands - 1)
    left = _random_tree(rng, level, split)
    right = _random_tree(rng, level, operands - split)
    return _Node(rng.choice(level.operators), left, right)


def _evaluate(node: _Node | int) -> int:
    if isinstance(node, int):
        return node
    left, right = _evaluate(node.left), _evaluate(node.right)
    return left + right if node.op == "+" else left - right if node.op == "-" else left * right


def _render(node: _Node | int) -> str:
    """Infix text with only the parentheses the value needs."""
    if isinstance(node, int):
        return str(node)
    precedence = _PRECEDENCE[node.op]
    left, right = _render(node.left), _render(node.right)
    if isinstance(node.left, _Node) and _PRECEDENCE[node.left.op] < precedence:
        left = f"({left})"
    if isinstance(node.right, _Node):
        child = _PRECEDENCE[node.right.op]
        # a - (b + c) and a * (b - c) need them; a + (b - c) and a * (b * c) do not.
        if child < precedence or (child == precedence and node.op == "-"):
            right = f"({right})"
    return f"{left} {node.op} {right}"
