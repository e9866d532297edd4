"""Text that peers control (file names in a shared folder, the reasons their files were refused)
as a log line may show it: on one line, with no terminal control sequence.

A name such as ``"alice\\n\\x1b[2JINFO all good.json.gz"`` logged as it is would forge a log line
and drive the terminal that shows it. `quoted` is for names (unambiguous: JSON string syntax),
`printable` for free text that may embed them (an exception's message, a transport's reason).
"""

from __future__ import annotations

import json

__all__ = ["printable", "quoted", "unquoted"]


def printable(text: object) -> str:
    """``str(text)`` with every character that is not printable escaped as JSON would (``\\n``,
    ``\\u001b``, ``\\u2028``...): newlines, other control characters, format characters and line
    separators. Printable text, other scripts' letters included, is left as it is."""
    return "".join(ch if ch.isprintable() else json.dumps(ch)[1:-1] for ch in str(text))


def quoted(name: object) -> str:
    """A peer's name (a file name read from the folder) for a log line: a JSON string, in double
    quotes, with `printable`'s escapes; ``json.loads`` gives the name back."""
    return printable(json.dumps(str(name), ensure_ascii=False))


def unquoted(text: str) -> tuple[str, str]:
    """``(name, rest)`` of a text that starts with a `quoted` name; ``("", text)`` if it does not."""
    try:
        name, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return "", text
    return (name, text[end:]) if isinstance(name, str) else ("", text)
