"""``sat``: find a satisfying assignment of a random k-SAT formula with a planted solution.

A clause is a tuple of nonzero ints, DIMACS style: ``3`` is x3, ``-3`` is NOT x3. Generation
draws a random assignment first and only emits clauses it satisfies, so every instance is
satisfiable. A sparse formula has many solutions: at 5 variables and 10 clauses a third of all
assignments solve it, so a model that answers one fixed assignment to every problem scores
pass@1 0.33 without reading a clause (measured on the H200, docs/benchmarks.md). So the
generator redraws the clauses until the formula has at most ``max_solutions`` solutions
(default 1: the planted one is the only one, and a guess is right 1 in 2^num_vars times).
Scoring: 1.0 when every clause is satisfied; otherwise ``partial_weight`` times
the fraction of satisfied clauses. Variables the answer leaves out are unassigned and make
both of their literals false. An answer that is not a clean list of assignments (see
`parse_assignment`), or gives one variable two different values (hedging), scores 0.0.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import attrs

from sapo_core.answers import MAX_SCAN_CHARS, build_messages, normalize_answer
from sapo_core.records import Problem
from sapo_core.tasks.levels import OnLadder

#: Longer answers are refused unread.
MAX_ANSWER_CHARS = 8192
#: Solutions are counted (for ``max_solutions``) only up to this many variables: 2^20 bits a clause.
MAX_COUNTED_VARS = 20
#: Clause sets drawn per problem at most, looking for one with few enough solutions.
MAX_DRAWS = 200

# An answer read token by token: an assignment ("x3=1", "X3 : true", "x3=F"), separators, or
# any other character, which makes it no clean assignment list. Every alternative either
# starts with a fixed character or consumes one, so scanning is linear.
_TOKENS = re.compile(
    r"(?P<var>x[0-9]{1,6})[ \t]*[=:][ \t]*(?P<value>1|0|true|false|t|f)|(?P<sep>[,;\s]+)|(?P<other>.)",
    re.IGNORECASE | re.ASCII | re.DOTALL,
)
_TRUE = {"1", "true", "t"}

# An assignment inside free text: "x3 = 1", "X3: true"; not "max3=1", "x3 = 10", "x3 = 0.5", "x3 = then".
_ASSIGNMENT_IN_TEXT = re.compile(
    r"(?<!\w)x([0-9]{1,6})[ \t]*[=:][ \t]*(1|0|true|false|t|f)(?!\w|\.[0-9])", re.IGNORECASE | re.ASCII
)


@attrs.frozen
class SatSettings:
    """Settings of the ``sat`` task."""

    #: Number of variables, x1..xN.
    num_vars: int = attrs.field(
        default=5, validator=[attrs.validators.instance_of(int), attrs.validators.in_(range(1, 1001))]
    )
    #: Number of clauses.
    num_clauses: int = attrs.field(
        default=22, validator=[attrs.validators.instance_of(int), attrs.validators.in_(range(1, 10001))]
    )
    #: Literals per clause, over distinct variables (at most num_vars).
    k: int = attrs.field(default=3, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)])
    #: Redraw the clauses until the formula has at most this many solutions (0: no limit).
    #: Counted exhaustively, so only for num_vars <= MAX_COUNTED_VARS; after MAX_DRAWS draws
    #: without success the formula with the fewest solutions is kept.
    max_solutions: int = attrs.field(default=1, validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)])
    #: Weight of partial credit: a random assignment satisfies 7/8 of 3-SAT clauses on
    #: average, so a value below 1 widens the gap to a full solution.
    partial_weight: float = attrs.field(default=1.0, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)])

    def __attrs_post_init__(self) -> None:
        if self.k > self.num_vars:
            raise ValueError(f"sat: k ({self.k}) is larger than num_vars ({self.num_vars})")


def parse_assignment(answer: str) -> dict[int, bool] | None:
    """The variable values an answer gives, or None if it is not a clean list of assignments.

    The answer must be assignments only, separated by commas, semicolons or whitespace, with
    an optional final period. Anything else (words, a variable given two different values,
    no assignment at all, more than `MAX_ANSWER_CHARS`) gives None.
    """
    if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        return None
    values: dict[int, bool] = {}
    after_assignment = False
    for token in _TOKENS.finditer(normalize_answer(answer).removesuffix(".")):
        if token["other"] is not None or (token["var"] is not None and after_assignment):
            return None
        after_assignment = token["var"] is not None
        if after_assignment:
            var, value = int(token["var"][1:]), token["value"].lower() in _TRUE
            if values.setdefault(var, value) != value:
                return None
    return values or None


def read_assignment(text: str) -> str | None:
    """The assignments on the last line of a text that has any, as ``x1=1, x2=0``, or None.

    Small models state their assignment in prose ("so x1 = True, x2 = 0"); every assignment on
    that line is kept, so a hedge there still scores 0 in `parse_assignment`. Only the last
    `MAX_SCAN_CHARS` characters are read.
    """
    if not isinstance(text, str):
        return None
    for line in reversed(normalize_answer(text[-MAX_SCAN_CHARS:])[-MAX_SCAN_CHARS:].splitlines()):
        found = _ASSIGNMENT_IN_TEXT.findall(line)
        if found:
            return ", ".join(f"x{var}={int(value.lower() in _TRUE)}" for var, value in found)
    return None


def format_clause(clause: Sequence[int]) -> str:
    """``(x1 OR NOT x3 OR x4)``."""
    return "(" + " OR ".join(f"x{lit}" if lit > 0 else f"NOT x{-lit}" for lit in clause) + ")"


def format_assignment(values: Sequence[bool]) -> str:
    """``x1=1, x2=0, ...`` for values of x1, x2, ... in order."""
    return ", ".join(f"x{i}={int(v)}" for i, v in enumerate(values, start=1))


class SatTask(OnLadder):
    """Planted random k-SAT; see the module docstring for the scoring rule."""

    name = "sat"
    description = "Find a satisfying assignment of a random k-SAT formula (partial credit per clause)."

    #: The curriculum's levels: more variables, and clauses enough that with max_solutions=1 a
    #: tenth to a third of the draws have a unique solution; the default settings are level 3.
    ladder = (
        {"num_vars": 3, "num_clauses": 6, "k": 2},
        {"num_vars": 4, "num_clauses": 14, "k": 3},
        {"num_vars": 5, "num_clauses": 22, "k": 3},
        {"num_vars": 8, "num_clauses": 40, "k": 3},
        {"num_vars": 12, "num_clauses": 65, "k": 3},
    )

    def __init__(self, settings: SatSettings | None = None) -> None:
        self.settings = settings or SatSettings()

    def generate(self, seed: int) -> Problem:
        s = self.settings
        rng = random.Random(seed)
        planted = [rng.random() < 0.5 for _ in range(s.num_vars)]
        clauses = draw_formula(rng, planted, s)
        listing = "\n".join(format_clause(c) for c in clauses)
        template = ", ".join(f"x{i}=?" for i in range(1, s.num_vars + 1))
        prompt = (
            f"Find values for the variables x1 to x{s.num_vars} that make every clause below true. "
            "A clause is true when at least one of its parts is true; NOT x is true when x is false.\n\n"
            f"{listing}\n\n"
            # The form without values: with "like this: x1=1, x2=0, x3=1" the bundled 135M model
            # copied the example, which a formula with one solution rewards 1 time in 2^n.
            "Put only the assignment in <answer></answer>, giving every variable the value 1 (true) "
            f"or 0 (false), in the form {template}, each ? replaced by its value."
        )
        return Problem(
            task=self.name,
            id=f"{self.name}-{s.k}cnf-{s.num_vars}v{s.num_clauses}c{_limit_tag(s)}-{seed}",
            messages=build_messages(prompt),
            answer=tuple(clauses),
            metadata={"num_vars": s.num_vars, "k": s.k, "planted": format_assignment(planted)},
        )

    def untagged_answer(self, text: str) -> str | None:
        """The last line's assignments in a completion without answer tags (`read_assignment`)."""
        return read_assignment(text)

    def verify(self, problem: Problem, answer: str) -> float:
        clauses = _clauses(problem.answer)
        values = parse_assignment(answer)
        if not clauses or values is None:
            return 0.0
        satisfied = sum(any(values.get(abs(lit)) is (lit > 0) for lit in clause) for clause in clauses)
        if satisfied == len(clauses):
            return 1.0
        return self.settings.partial_weight * satisfied / len(clauses)


def draw_clauses(rng: random.Random, planted: Sequence[bool], s: SatSettings) -> list[tuple[int, ...]]:
    """``s.num_clauses`` random clauses of ``s.k`` distinct variables, each satisfied by ``planted``."""
    clauses = []
    for _ in range(s.num_clauses):
        variables = sorted(rng.sample(range(1, s.num_vars + 1), s.k))
        clause = [v if rng.random() < 0.5 else -v for v in variables]
        if not any((lit > 0) == planted[abs(lit) - 1] for lit in clause):
            # Flip one literal so the planted assignment satisfies the clause.
            i = rng.randrange(s.k)
            clause[i] = -clause[i]
        clauses.append(tuple(clause))
    return clauses


def draw_formula(rng: random.Random, planted: Sequence[bool], s: SatSettings) -> list[tuple[int, ...]]:
    """Clauses with at most ``s.max_solutions`` solutions if MAX_DRAWS draws find such; else the fewest."""
    if not s.max_solutions or s.num_vars > MAX_COUNTED_VARS:
        return draw_clauses(rng, planted, s)
    best: tuple[int, list[tuple[int, ...]]] | None = None
    for _ in range(MAX_DRAWS):
        clauses = draw_clauses(rng, planted, s)
        solutions = count_solutions(clauses, s.num_vars)
        if solutions <= s.max_solutions:
            return clauses
        if best is None or solutions < best[0]:
            best = (solutions, clauses)
    assert best is not None
    return best[1]


def count_solutions(clauses: Sequence[Sequence[int]], num_vars: int) -> int:
    """How many of the 2^num_vars assignments satisfy every clause.

    Bit a of an integer stands for assignment a (variable v is true in it when bit v-1 of a
    is set), so a literal is one 2^num_vars-bit mask and a clause the OR of its literals'
    masks: a few big-integer operations per clause instead of a loop over assignments.
    """
    size = 1 << num_vars
    everything = (1 << size) - 1
    true_in = []
    for v in range(num_vars):
        half = 1 << v  # assignments repeat in blocks of 2 * half: half with v false, half true
        block = ((1 << half) - 1) << half
        true_in.append(block * (everything // ((1 << (2 * half)) - 1)))
    satisfied = everything
    for clause in clauses:
        mask = 0
        for lit in clause:
            mask |= true_in[lit - 1] if lit > 0 else everything ^ true_in[-lit - 1]
        satisfied &= mask
    return satisfied.bit_count()


def _limit_tag(s: SatSettings) -> str:
    """``-u1`` in a problem id when solutions are limited, so peers with other limits get other ids."""
    return f"-u{s.max_solutions}" if s.max_solutions and s.num_vars <= MAX_COUNTED_VARS else ""


def _clauses(value: object) -> list[Sequence[int]] | None:
    """The clauses of a problem's answer, or None if it is not a list of lists of nonzero ints."""
    if not isinstance(value, (list, tuple)):
        return None
    for clause in value:
        if not isinstance(clause, (list, tuple)) or not clause:
            return None
        if not all(type(lit) is int and lit != 0 for lit in clause):
            return None
    return list(value)
