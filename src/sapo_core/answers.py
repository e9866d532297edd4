"""The answer format shared by the built-in tasks: think in ``<think>``, answer in ``<answer>``.

Every built-in task sends `SYSTEM_PROMPT` and reads the model's final answer with
`extract_answer`; `format_score` rewards sticking to the format. Everything here is linear in
the input and bounded: completions are untrusted text (huge, adversarial, odd unicode).
"""

from __future__ import annotations

import re
import unicodedata

from sapo_core.records import Message

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "MAX_SCAN_CHARS",
    "SYSTEM_PROMPT",
    "THINK_CLOSE",
    "THINK_OPEN",
    "build_messages",
    "extract_answer",
    "format_score",
    "last_integer",
    "last_number",
    "normalize_answer",
]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

SYSTEM_PROMPT = (
    "You are a careful problem solver. First think the problem through step by step inside "
    "<think> </think> tags. Then give only the final answer inside <answer> </answer> tags, "
    "with nothing after them. For example:\n"
    "<think> reasoning here </think>\n<answer> final answer here </answer>"
)

#: Only the tail of a completion is searched for the answer: the answer comes last, and a
#: bounded scan keeps scoring cheap whatever a completion's length.
MAX_SCAN_CHARS = 20_000

# Minus signs models write besides ASCII '-'; NFKC leaves these alone.
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2012": "-", "\ufe63": "-"})


def build_messages(user_prompt: str) -> tuple[Message, Message]:
    """The chat of a built-in problem: the shared system prompt, then the task's prompt."""
    return (Message(role="system", content=SYSTEM_PROMPT), Message(role="user", content=user_prompt))


def extract_answer(text: str) -> str | None:
    """The stripped content of the last ``<answer>...</answer>`` block, or None if there is none.

    Tags are matched exactly (lowercase ASCII). Only the last `MAX_SCAN_CHARS` characters are
    searched, so a block opened before them is not found. A trailing unclosed ``<answer>`` is
    ignored in favour of the last closed block. Nested blocks are not unwrapped: the content
    then still holds a tag and no built-in verifier accepts it.
    """
    if not isinstance(text, str):
        return None
    tail = text[-MAX_SCAN_CHARS:]
    end = tail.rfind(ANSWER_CLOSE)
    if end < 0:
        return None
    start = tail.rfind(ANSWER_OPEN, 0, end)
    if start < 0:
        return None
    return tail[start + len(ANSWER_OPEN) : end].strip()


def format_score(text: str) -> float:
    """How well a completion follows the answer format, in [0, 1].

    * 1.0: optionally one ``<think>...</think>`` block (its opener may be missing, as when the
      chat template already opened it), then exactly one non-empty ``<answer>...</answer>``
      block, with only whitespace around and between them.
    * 0.5: `extract_answer` finds an answer but the structure is not exactly that.
    * 0.0: no answer block.
    """
    if extract_answer(text) is None:
        return 0.0
    return 1.0 if _well_formed(text) else 0.5


def _well_formed(text: str) -> bool:
    body = text.strip()
    if body.count(THINK_OPEN) > 1 or body.count(THINK_CLOSE) > 1:
        return False
    if THINK_CLOSE in body:
        head, _, body = body.partition(THINK_CLOSE)
        # Text before the opener, or an opener after the closer, breaks the structure.
        if THINK_OPEN in head and not head.startswith(THINK_OPEN):
            return False
        body = body.strip()
    if THINK_OPEN in body:
        return False
    if not (body.startswith(ANSWER_OPEN) and body.endswith(ANSWER_CLOSE)):
        return False
    inner = body[len(ANSWER_OPEN) : len(body) - len(ANSWER_CLOSE)]
    return bool(inner.strip()) and ANSWER_OPEN not in inner and ANSWER_CLOSE not in inner


def normalize_answer(answer: str) -> str:
    """NFKC-normalised, with unicode minus signs as '-', stripped.

    NFKC turns fullwidth digits and letters into ASCII, which is fair to accept. It does not
    remove zero-width or other format characters: they stay and make strict parsers refuse
    the answer, so they can never make a wrong answer pass.
    """
    return unicodedata.normalize("NFKC", answer).translate(_MINUS_SIGNS).strip()


_LAST_INTEGER = re.compile(r"(?<![\w.])-?\d{1,30}(?![\w.]*\d)")


def last_integer(text: str) -> str | None:
    """The last integer written in the text (GSM8K-style extraction), or None.

    Used as an untagged answer by numeric tasks, for models too small to follow the tag
    format yet; only the last `MAX_SCAN_CHARS` characters are looked at.
    """
    return _last(_LAST_INTEGER, text)


_LAST_NUMBER = re.compile(r"(?<![\w.])-?\d{1,30}(?:\.\d{1,30})?(?![\w.]*\d)")


def last_number(text: str) -> str | None:
    """The last number written in the text, integer or decimal (``-2.7616``), or None.

    `last_integer` for tasks whose answers may have a fractional part; a dotted run such as a
    version (``1.2.3``) is no number.
    """
    return _last(_LAST_NUMBER, text)


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.findall(normalize_answer(text[-MAX_SCAN_CHARS:]))
    return found[-1] if found else None
