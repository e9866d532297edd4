"""``countdown``: reach a target number from given numbers with + - * / and parentheses.

Each given number may be used at most once (not every one has to be used). Generation builds
a random expression over all the numbers, keeping every intermediate value a positive integer,
so a solution always exists. Scoring: 1.0 when the expression is valid and equals the target
exactly, else 0.0. The answer is parsed with `ast` and only numbers, the four operators,
unary +/- and parentheses are accepted: nothing is ever evaluated by Python, and ``**``, names,
calls and attributes are refused. Arithmetic is exact (`fractions.Fraction`), so 7 / 2 * 2 is 7.
An optional ``= <target>`` after the expression is allowed.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import attrs

from sapo_core.answers import MAX_SCAN_CHARS, build_messages, normalize_answer
from sapo_core.records import Problem
from sapo_core.tasks.levels import OnLadder

#: Longer answers are refused unread: a solution with six numbers is a few dozen characters.
MAX_ANSWER_CHARS = 256

#: Random expressions drawn for a target; if none is valid, the target is the sum of the numbers.
_ATTEMPTS = 100

_OPERATOR_SIGNS = str.maketrans({"×": "*", "÷": "/", "·": "*"})

# A stretch of free text that may be an expression, and what it must hold to count as one.
_EXPRESSION_RUN = re.compile(r"[0-9 \t()+\-*/×÷]+")
_TWO_NUMBERS = re.compile(r"[0-9][^0-9]+[0-9]")
_OPERATOR = re.compile(r"[+\-*/×÷]")


@attrs.frozen
class CountdownSettings:
    """Settings of the ``countdown`` task."""

    #: How many numbers are given (2 to 6).
    num_numbers: int = attrs.field(
        default=2, validator=[attrs.validators.instance_of(int), attrs.validators.in_(range(2, 7))]
    )
    #: Smallest given number (at least 1).
    min_number: int = attrs.field(default=1, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)])
    #: Largest given number.
    max_number: int = attrs.field(
        default=10, validator=[attrs.validators.instance_of(int), attrs.validators.le(10_000)]
    )
    #: Largest target: a random expression above it is drawn again (after 100 draws, the
    #: target is the sum of the numbers, whatever its size).
    max_target: int = attrs.field(default=100, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)])

    def __attrs_post_init__(self) -> None:
        if self.min_number > self.max_number:
            raise ValueError(f"countdown: min_number ({self.min_number}) is larger than max_number ({self.max_number})")


class ExpressionError(ValueError):
    """The answer is not an expression countdown accepts."""


def evaluate_expression(text: str, numbers: Sequence[int]) -> Fraction:
    """The exact value of an arithmetic expression using each of ``numbers`` at most once.

    Raises `ExpressionError` for anything else: too long, not an expression, a node other than
    an integer, + - * / or unary +/-, a number used more often than given, division by zero.
    """
    if len(text) > MAX_ANSWER_CHARS:
        raise ExpressionError("expression too long")
    # Line breaks would end the expression early; any run of whitespace is one space.
    source = " ".join(normalize_answer(text).translate(_OPERATOR_SIGNS).split())
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"not an expression: {exc}") from None
    used = Counter(_literals(tree.body))
    if used - Counter(numbers):
        raise ExpressionError("uses numbers that are not given, or a number more often than given")
    return _value(tree.body)


def _literals(node: ast.AST) -> list[int]:
    """The integer literals of a whitelisted expression tree, refusing any other node."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return [node.value]
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
        return _literals(node.left) + _literals(node.right)
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.UAdd, ast.USub)):
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
        return _literals(node.operand)
    raise ExpressionError(f"{type(node).__name__} is not allowed")


def _value(node: ast.AST) -> Fraction:
    # Only called on trees `_literals` accepted.
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        operand = _value(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    assert isinstance(node, ast.BinOp)
    left, right = _value(node.left), _value(node.right)
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    if right == 0:
        raise ExpressionError("division by zero")
    return left / right


def read_expression(text: str) -> str | None:
    """The last arithmetic expression written in a text, or None.

    Small models write their solution in prose ("(5 + 3) * 2 = 16"): this is the last run of
    digits, spaces, + - * / × ÷ and parentheses with two numbers and an operator, less markdown
    asterisks at its start and unmatched parentheses at its ends. Only the last `MAX_SCAN_CHARS`
    characters are read; `CountdownTask.verify` still decides whether it is right.
    """
    if not isinstance(text, str):
        return None
    tail = normalize_answer(text[-MAX_SCAN_CHARS:])[-MAX_SCAN_CHARS:]
    for run in reversed(list(_EXPRESSION_RUN.finditer(tail))):
        start, end = run.span()
        if _glued(tail, start - 1, start) or _glued(tail, end, end - 1):
            continue
        candidate = _balance(run[0].strip().lstrip("*/×÷ ").rstrip("* "))
        if _TWO_NUMBERS.search(candidate) and _OPERATOR.search(candidate):
            return candidate
    return None


def _glued(text: str, outside: int, inside: int) -> bool:
    """Whether a run's edge digit at ``inside`` is part of a word or a decimal ("x2+3", "2.5*4", "3+4th")."""
    if not (0 <= outside < len(text)) or not text[inside].isdigit():
        return False
    if text[outside] == ".":
        # A decimal point is followed (or preceded) by a digit; a sentence's final period is not.
        beyond = outside + (outside - inside)
        return 0 <= beyond < len(text) and text[beyond].isdigit()
    return text[outside].isalnum() or text[outside] == "_"


def _balance(expression: str) -> str:
    """The expression without unmatched parentheses at its ends ("(it is 5 + 3)" gives "5 + 3")."""
    opened, closed = expression.count("("), expression.count(")")
    start, end = 0, len(expression)
    while closed > opened and end > start and expression[end - 1] in ") ":
        closed -= expression[end - 1] == ")"
        end -= 1
    while opened > closed and start < end and expression[start] in "( ":
        opened -= expression[start] == "("
        start += 1
    return expression[start:end].strip()


class CountdownTask(OnLadder):
    """Countdown numbers game; see the module docstring for the rules and scoring."""

    name = "countdown"
    description = "Reach a target from given numbers with + - * / and parentheses, each number at most once."

    #: The curriculum's levels: more and larger numbers; the default settings are level 1,
    #: the bundled SmolLM2-135M's edge (docs/benchmarks.md).
    ladder = (
        {"num_numbers": 2, "max_number": 10, "max_target": 100},  # every product of two numbers a target
        {"num_numbers": 3, "max_number": 10, "max_target": 30},
        {"num_numbers": 3, "max_number": 25, "max_target": 100},
        {"num_numbers": 4, "max_number": 100, "max_target": 1000},
        {"num_numbers": 5, "max_number": 100, "max_target": 1000},
        {"num_numbers": 6, "max_number": 100, "max_target": 1000},
    )

    def __init__(self, settings: CountdownSettings | None = None) -> None:
        self.settings = settings or CountdownSettings()

    def generate(self, seed: int) -> Problem:
        s = self.settings
        rng = random.Random(seed)
        numbers = [rng.randint(s.min_number, s.max_number) for _ in range(s.num_numbers)]
        target, solution = _draw_target(rng, numbers, s.max_target)
        prompt = (
            f"Using the numbers {', '.join(map(str, numbers))}, write an expression that equals {target}. "
            "You may use +, -, *, / and parentheses, and each number at most once.\n\n"
            # No worked example: the bundled 135M model copied "(1 + 2) * 3" into most of its answers.
            "Put only the expression, written with the given numbers, in <answer></answer>."
        )
        return Problem(
            task=self.name,
            id=f"{self.name}-{s.num_numbers}n-{s.min_number}to{s.max_number}-t{s.max_target}-{seed}",
            messages=build_messages(prompt),
            answer=(target, tuple(numbers)),
            metadata={"target": target, "numbers": tuple(numbers), "solution": solution},
        )

    def untagged_answer(self, text: str) -> str | None:
        """The last expression in a completion without answer tags (`read_expression`)."""
        return read_expression(text)

    def verify(self, problem: Problem, answer: str) -> float:
        reference = _reference(problem.answer)
        if reference is None or not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
            return 0.0
        target, numbers = reference
        expression, *claimed = answer.split("=", 2)
        # "expr = target" is fine; "expr = anything else" states a wrong result.
        if claimed and (len(claimed) > 1 or normalize_answer(claimed[0]).removesuffix(".") != str(target)):
            return 0.0
        try:
            value = evaluate_expression(expression, numbers)
        except ExpressionError:
            return 0.0
        return 1.0 if value == target else 0.0


def _draw_target(rng: random.Random, numbers: Sequence[int], max_target: int) -> tuple[int, str]:
    """(target, a solution): a random expression's value, its last operator drawn evenly from those
    that reach a valid target. Taking the first valid expression instead made most targets sums
    (products overshoot ``max_target``), and "add them all" solved 60 % of two-number problems."""
    found: dict[str, tuple[int, str]] = {}
    for _ in range(_ATTEMPTS):
        order = rng.sample(numbers, len(numbers))
        value, expression, op = _random_expression(rng, order)
        # A target equal to a given number would be solved by writing that number.
        if value <= max_target and value not in numbers:
            found.setdefault(op, (value, expression))
    if not found:
        return sum(numbers), " + ".join(map(str, numbers))
    return found[rng.choice(sorted(found))]


def _random_expression(rng: random.Random, numbers: Sequence[int]) -> tuple[int, str, str]:
    """A random expression over all ``numbers`` in order, every intermediate a positive integer:
    (value, text, its last operator; "" for a lone number)."""
    if len(numbers) == 1:
        return numbers[0], str(numbers[0]), ""
    split = rng.randint(1, len(numbers) - 1)
    left, left_text, _ = _random_expression(rng, numbers[:split])
    right, right_text, _ = _random_expression(rng, numbers[split:])
    choices = [("+", left + right), ("*", left * right)]
    if left > right:
        choices.append(("-", left - right))
    if right > 1 and left % right == 0:
        choices.append(("/", left // right))
    op, value = rng.choice(choices)
    # Every compound operand is parenthesised: the solution is for checking, not for reading.
    if split > 1:
        left_text = f"({left_text})"
    if len(numbers) - split > 1:
        right_text = f"({right_text})"
    return value, f"{left_text} {op} {right_text}", op


def _reference(value: object) -> tuple[int, list[int]] | None:
    """(target, numbers) from a problem's answer, or None if malformed."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    target, numbers = value
    if type(target) is not int or not isinstance(numbers, (list, tuple)):
        return None
    if not all(type(n) is int for n in numbers):
        return None
    return target, list(numbers)
