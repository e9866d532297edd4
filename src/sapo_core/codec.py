"""The one JSON codec for everything that crosses a process or a machine.

Records (`sapo_core.records`) become plain JSON values with `to_data` and come back through the
typed decoders (`payload_from_data`, `problem_from_data`, ...). A round payload travels as UTF-8
JSON (`encode_payload` / `decode_payload`), gzipped on disk (`write_gz` / `read_gz`), optionally
signed with a swarm secret (`sign_payload` / `verify_signature`). The control documents a
shared-storage transport keeps beside the payloads (swarm state, heartbeats, leases) come back
through `swarm_state_from_data`, `node_info_from_data` and `lease_from_data`, signed with
`sign_document` / `verify_document`.

Contracts
---------
* JSON field names are the attrs field names. ``None`` optional fields (``num_tokens``,
  ``token_ids``, ``logprobs``, ``reasoning``, ``signature``) are omitted; every other field is
  written. On input, fields that have a default in `records` may be omitted (or, for the
  ``None``-able ones, be ``null``); ``schema_version`` is always required.
* Everything that decodes bytes or plain data treats its input as **untrusted**: it validates
  the whole document before returning, raises `PayloadError` and nothing else (never
  KeyError/TypeError/RecursionError/UnicodeDecodeError/MemoryError...), and never returns a
  half-loaded payload. The message says why and where, e.g.
  ``groups[3].rewards[1]: not a finite number``. Beyond JSON types it requires: a supported
  ``schema_version``; safe node ids and experiment name (`validate_node_id`); known roles and
  finish reasons; at least one message per problem and one completion per group; as many
  rewards and advantages as completions, and as many logprobs as token ids when both are given.
* Sizes are bounded by a `Limits` (defaults in `DEFAULT_LIMITS`); gzip is inflated
  incrementally and refused as soon as it exceeds ``Limits.max_payload_bytes``. Before the
  JSON is parsed, its ``{`` and ``[`` bytes are counted against ``Limits.max_brackets``: arrays
  and objects are what make a small file expensive to parse, so a cheap file stays cheap.
* Encoding validates with the same rules as decoding, so we never publish what a peer with the
  same limits would refuse (non-finite rewards, bad node ids, oversize text...).
* An empty group ``node`` means "the payload's node": both encoding and decoding fill it in,
  so ``decode_payload(encode_payload(p))`` equals ``p`` with its empty group nodes filled.
* JSON numbers in float fields (rewards, advantages, logprobs, created_at) decode as ``float``
  even when written as integers (``1`` -> ``1.0``). Inside the free JSON values ``answer`` and
  ``metadata``, arrays decode as ``list`` and objects as ``dict`` (what ``json.loads`` gives and
  what a task's own ``generate`` most likely built, so a verifier compares like with like).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import hmac
import json
import math
import numbers
import re
import typing
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn, ParamSpec, TypeVar

import attrs

from sapo_core import names, records
from sapo_core.errors import PayloadError
from sapo_core.interfaces import Lease, NodeInfo, SwarmState
from sapo_core.records import SCHEMA_VERSION, Completion, Group, Message, Problem, RoundPayload

__all__ = [
    "DEFAULT_LIMITS",
    "FINISH_REASONS",
    "ROLES",
    "SUPPORTED_SCHEMA_VERSIONS",
    "Limits",
    "PayloadError",
    "completion_from_data",
    "decode_payload",
    "encode_payload",
    "group_from_data",
    "lease_from_data",
    "message_from_data",
    "node_info_from_data",
    "payload_from_data",
    "problem_from_data",
    "read_gz",
    "sign_document",
    "sign_payload",
    "swarm_state_from_data",
    "to_data",
    "validate_experiment_name",
    "validate_node_id",
    "verify_document",
    "verify_signature",
    "write_gz",
]

#: Schema versions this codec reads (and the one it writes: `records.SCHEMA_VERSION`).
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (SCHEMA_VERSION,)
#: Allowed `Message.role` values, taken from `records.Role` so the two never drift apart.
ROLES: tuple[str, ...] = typing.get_args(records.Role)
#: Allowed `Completion.finish_reason` values, from `records.FinishReason`.
FINISH_REASONS: tuple[str, ...] = typing.get_args(records.FinishReason)

# Integers we accept for round / num_tokens: the range every JSON reader (JavaScript included)
# represents exactly.
_MAX_SAFE_INT = 2**53 - 1
# Token ids index a vocabulary; real vocabularies are < 2**18, int32 is a generous bound.
_MAX_TOKEN_ID = 2**31 - 1
# to_data has no Limits; this only turns cyclic or absurdly deep answer/metadata into a clean error.
_MAX_ENCODE_DEPTH = 256
# Inflate in steps of this size so a single zlib call never allocates much.
_GZIP_STEP = 1 << 20
# Feed compressed input in slices of this size (zlib copies the unconsumed rest on every call).
_GZIP_IN = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"

_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
# Control characters (C0, DEL, C1) and lone surrogates: never in names or labels.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Lone surrogates come from JSON escapes such as "\ud800"; they cannot be written back as UTF-8.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


# ----------------------------------------------------------------------------------- limits


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"Limits.{attribute.name} must be a positive integer, got {value!r}")


@attrs.frozen
class Limits:
    """Caps on what a decoder accepts; pass your own to tighten or relax them.

    Every bound is inclusive. The defaults fit a round of a few thousand groups of a small model
    with room to spare. A file at every limit at once still costs its reader about a GB of memory
    while it is decoded (4096 groups x 256 completions took a worker from 35 MB to 850 MB).
    """

    #: Size of the UTF-8 JSON document, after gunzip (and of the gzip blob itself).
    max_payload_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive_int)
    #: Groups in one payload.
    max_groups: int = attrs.field(default=4096, validator=_positive_int)
    #: Completions (and so rewards and advantages) in one group.
    max_completions_per_group: int = attrs.field(default=256, validator=_positive_int)
    #: Chat messages in one problem.
    max_messages: int = attrs.field(default=64, validator=_positive_int)
    #: Characters in one text field: message content, completion text and reasoning, and every
    #: string inside ``answer`` / ``metadata``.
    max_text_chars: int = attrs.field(default=200_000, validator=_positive_int)
    #: Characters in a label: problem task and id, model name.
    max_name_chars: int = attrs.field(default=256, validator=_positive_int)
    #: Entries of ``token_ids`` and of ``logprobs`` of one completion.
    max_tokens: int = attrs.field(default=65_536, validator=_positive_int)
    #: Nesting of arrays/objects inside ``answer`` and ``metadata`` (``[[1]]`` is depth 2).
    max_json_depth: int = attrs.field(default=32, validator=_positive_int)
    #: ``{`` and ``[`` bytes in the JSON document, inside strings too, counted before it is parsed.
    #: A payload needs about three per completion, plus what its texts hold; each one parsed costs
    #: far more than its byte (a gzipped file of empty arrays inflates 1000x and parses 25x bigger).
    max_brackets: int = attrs.field(default=524_288, validator=_positive_int)


#: The limits used when none are passed.
DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------------- helpers

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _fail(path: str, reason: str) -> NoReturn:
    raise PayloadError(f"{path}: {reason}" if path else reason)


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _show(value: object, width: int = 60) -> str:
    """A short, printable rendering of an untrusted value for error messages."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"  # str() of huge ints is slow or refused
    if isinstance(value, (str, bytes)) and len(value) > width:
        value = value[:width]
        return repr(value) + "..."
    text = repr(value)
    return text if len(text) <= width else text[:width] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _untrusted(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Make ``fn`` raise PayloadError and nothing else, whatever its input does to it.

    The validators raise PayloadError themselves; this catches what slips past them (a deep
    structure exhausting the stack, memory, a bug) so callers need one ``except`` clause.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except PayloadError:
            raise
        except RecursionError:
            raise PayloadError("data nested too deeply") from None
        except MemoryError:
            raise PayloadError("out of memory while processing the payload: it is too large") from None
        except Exception as exc:  # the contract: one exception type, whatever happened
            raise PayloadError(f"invalid payload ({type(exc).__name__}: {exc})") from exc

    return wrapper


# --------------------------------------------------------------------------- names and ids


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{what} must be a string, got {_json_type(value)}")
    problem = names.id_problem(value)
    if problem:
        raise PayloadError(f"{_show(value)} is not a valid {what}: {problem}")
    return value


def validate_node_id(node: str) -> str:
    """Return ``node`` if it is safe as a node id (and so as a file name), else raise PayloadError.

    A node id is 1 to 64 ASCII letters, digits, ``.``, ``_`` and ``-``; it does not start with
    ``.`` or ``-``, contains no ``..`` and does not end with ``.``; it is not a Windows device
    name (``CON``, ``nul.x``...). So no path separators, control characters or unicode
    look-alikes, and ``<root>/<experiment>/nodes/<node>.json`` stays inside its folder on every OS.
    Use it for node ids from configuration too.
    """
    return _check_id(node, "node id")


def validate_experiment_name(name: str) -> str:
    """Return ``name`` if it is a safe experiment name (same rules as `validate_node_id`)."""
    return _check_id(name, "experiment name")


# -------------------------------------------------------------------- encoding: record -> data


def _out_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_json_type(value)}")
    return value


def _out_int(value: object, path: str) -> int:
    # numbers.Integral admits numpy/torch integer scalars, which learners hand us.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(path, f"expected an integer, got {_json_type(value)}")
    return int(value)


def _out_float(value: object, path: str) -> float:
    # Always write floats (1 -> 1.0) so a signed payload's canonical form survives a round trip.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(path, f"expected a number, got {_json_type(value)}")
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        _fail(path, "not a finite number")
    if not math.isfinite(number):
        _fail(path, "not a finite number")
    return number


def _out_ints(values: Iterable[object], path: str) -> list[int]:
    items = list(values)
    if set(map(type, items)) <= {int}:  # the common case, checked in C: no per-element path
        return items  # type: ignore[return-value]
    return [_out_int(v, f"{path}[{i}]") for i, v in enumerate(items)]


def _out_floats(values: Iterable[object], path: str) -> list[float]:
    items = list(values)
    if set(map(type, items)) <= {float} and all(map(math.isfinite, items)):  # type: ignore[arg-type]
        return items  # type: ignore[return-value]
    return [_out_float(v, f"{path}[{i}]") for i, v in enumerate(items)]


def _out_json(value: object, path: str, depth: int = 0) -> Any:
    """A deep copy of a free JSON value (answer, metadata) made of JSON types only."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(path, "not a finite number")
        return float(value)
    if depth >= _MAX_ENCODE_DEPTH:
        _fail(path, "nested too deeply (or cyclic)")
    if isinstance(value, (list, tuple)):
        return [_out_json(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(path, f"object keys must be strings, got {_json_type(key)} {_show(key)}")
            out[key] = _out_json(item, _key(path, key), depth + 1)
        return out
    _fail(path, f"not a JSON value: {type(value).__name__}")


def _message_data(m: Message, path: str) -> dict[str, Any]:
    return {"role": _out_str(m.role, _key(path, "role")), "content": _out_str(m.content, _key(path, "content"))}


def _problem_data(p: Problem, path: str) -> dict[str, Any]:
    return {
        "task": _out_str(p.task, _key(path, "task")),
        "id": _out_str(p.id, _key(path, "id")),
        "messages": [_message_data(m, f"{_key(path, 'messages')}[{i}]") for i, m in enumerate(p.messages)],
        "answer": _out_json(p.answer, _key(path, "answer")),
        "metadata": _out_json(p.metadata, _key(path, "metadata")),
    }


def _completion_data(c: Completion, path: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "text": _out_str(c.text, _key(path, "text")),
        "finish_reason": _out_str(c.finish_reason, _key(path, "finish_reason")),
    }
    if c.num_tokens is not None:
        data["num_tokens"] = _out_int(c.num_tokens, _key(path, "num_tokens"))
    if c.token_ids is not None:
        data["token_ids"] = _out_ints(c.token_ids, _key(path, "token_ids"))
    if c.logprobs is not None:
        data["logprobs"] = _out_floats(c.logprobs, _key(path, "logprobs"))
    if c.reasoning is not None:
        data["reasoning"] = _out_str(c.reasoning, _key(path, "reasoning"))
    return data


def _group_data(g: Group, path: str, default_node: str = "") -> dict[str, Any]:
    return {
        "problem": _problem_data(g.problem, _key(path, "problem")),
        "completions": [_completion_data(c, f"{_key(path, 'completions')}[{i}]") for i, c in enumerate(g.completions)],
        "rewards": _out_floats(g.rewards, _key(path, "rewards")),
        "advantages": _out_floats(g.advantages, _key(path, "advantages")),
        "node": _out_str(g.node, _key(path, "node")) or default_node,
    }


def _payload_data(p: RoundPayload) -> dict[str, Any]:
    node = _out_str(p.node, "node")
    data: dict[str, Any] = {
        "schema_version": _out_int(p.schema_version, "schema_version"),
        "experiment": _out_str(p.experiment, "experiment"),
        "round": _out_int(p.round, "round"),
        "node": node,
        "model": _out_str(p.model, "model"),
        "created_at": _out_float(p.created_at, "created_at"),
        "groups": [_group_data(g, f"groups[{i}]", node) for i, g in enumerate(p.groups)],
    }
    if p.signature is not None:
        data["signature"] = _out_str(p.signature, "signature")
    return data


@_untrusted
def to_data(record: Message | Problem | Completion | Group | RoundPayload) -> dict[str, Any]:
    """The plain JSON form of a record: dicts, lists, str, int, finite float, bool, None.

    The result always survives ``json.dumps(..., allow_nan=False)``. Raises PayloadError for
    what JSON cannot carry faithfully (non-finite floats, non-string object keys, other Python
    types, cyclic ``answer``/``metadata``). It does not apply `Limits` or check ids, roles and
    the like: `encode_payload` does, for payloads. A payload's empty group nodes are filled in
    with the payload's node.
    """
    if isinstance(record, RoundPayload):
        return _payload_data(record)
    if isinstance(record, Group):
        return _group_data(record, "")
    if isinstance(record, Completion):
        return _completion_data(record, "")
    if isinstance(record, Problem):
        return _problem_data(record, "")
    if isinstance(record, Message):
        return _message_data(record, "")
    raise PayloadError(f"cannot encode a {type(record).__name__}: not a sapo record")


# ------------------------------------------------------------ decoding: untrusted data -> record


def _object(value: object, path: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    """``value`` as a JSON object holding every required key and nothing unknown."""
    if not isinstance(value, dict):
        _fail(path or "top level", f"expected an object, got {_json_type(value)}")
    missing = [k for k in required if k not in value]
    if missing:
        _fail(path, f"missing required key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    allowed = required + optional
    unknown = [k for k in value if k not in allowed]
    if unknown:
        shown = ", ".join(_show(k, 40) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        _fail(
            path,
            f"unknown key{'s' if len(unknown) > 1 else ''} {shown} (allowed: {', '.join(allowed)})",
        )
    return value


def _array(value: object, path: str, limit: int, limit_name: str, *, min_len: int = 0) -> list[Any]:
    if not isinstance(value, list):
        _fail(path, f"expected an array, got {_json_type(value)}")
    if len(value) > limit:
        _fail(path, f"{len(value)} entries, over the limit of {limit} (Limits.{limit_name})")
    if len(value) < min_len:
        _fail(path, f"needs at least {min_len} entr{'y' if min_len == 1 else 'ies'}")
    return value


def _int(value: object, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"expected an integer, got {_json_type(value)}")
    if value < lo:
        _fail(path, f"must be >= {lo}, got {_show(value)}")
    if value > hi:
        _fail(path, f"must be <= {hi}, got {_show(value)}")
    return value


def _float(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(path, f"expected a number, got {_json_type(value)}")
    try:
        number = float(value)  # JSON has one number type: 1 is as good a reward as 1.0
    except OverflowError:
        _fail(path, "not a finite number")
    if not math.isfinite(number):
        _fail(path, "not a finite number")
    return number


def _floats(value: object, path: str, limit: int, limit_name: str) -> tuple[float, ...]:
    items = _array(value, path, limit, limit_name)
    # Fast path in C for the common all-good case; the loop below finds the culprit otherwise.
    try:
        if set(map(type, items)) <= {float, int} and all(map(math.isfinite, items)):
            return tuple(map(float, items))
    except OverflowError:  # an integer too large for a float
        pass
    return tuple(_float(x, f"{path}[{i}]") for i, x in enumerate(items))


def _ints(value: object, path: str, limit: int, limit_name: str, lo: int, hi: int) -> tuple[int, ...]:
    items = _array(value, path, limit, limit_name)
    if not items or (set(map(type, items)) <= {int} and min(items) >= lo and max(items) <= hi):
        return tuple(items)
    return tuple(_int(x, f"{path}[{i}]", lo, hi) for i, x in enumerate(items))


def _text(value: object, path: str, limit: int) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_json_type(value)}")
    if len(value) > limit:
        _fail(path, f"{len(value)} characters, over the limit of {limit} (Limits.max_text_chars)")
    if _SURROGATE_RE.search(value):
        _fail(path, "contains a lone UTF-16 surrogate (not valid unicode)")
    return value


def _label(value: object, path: str, limits: Limits, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_json_type(value)}")
    if not value and not allow_empty:
        _fail(path, "must not be empty")
    if len(value) > limits.max_name_chars:
        _fail(path, f"{len(value)} characters, over the limit of {limits.max_name_chars} (Limits.max_name_chars)")
    if _CONTROL_RE.search(value):
        _fail(path, f"{_show(value)} contains a control character or a lone surrogate")
    return value


def _choice(value: object, path: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_json_type(value)}")
    if value not in allowed:
        _fail(path, f"{_show(value)} is not one of {', '.join(allowed)}")
    return value


def _named(check: Callable[[str], str], value: object, path: str) -> str:
    try:
        return check(value)  # type: ignore[arg-type]  # _check_id reports non-strings itself
    except PayloadError as exc:
        _fail(path, str(exc))


def _json_value(value: object, path: str, limits: Limits) -> None:
    """Check a free JSON value (answer, metadata): JSON types, finite, bounded depth and text.

    Iterative, with paths built only on failure, so a large or deep value costs neither stack
    nor a string per element.
    """
    # Entries: (value, depth of the containers around it, where: (parent where, key) or None).
    stack: list[tuple[object, int, Any]] = [(value, 0, None)]

    def where(node: Any) -> str:
        parts: list[str] = []
        while node is not None:
            node, key = node
            parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
        return path + "".join(reversed(parts))

    while stack:
        item, depth, at = stack.pop()
        if item is None or isinstance(item, (bool, int)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                _fail(where(at), "not a finite number")
        elif isinstance(item, str):
            _text(item, where(at), limits.max_text_chars)
        elif isinstance(item, (list, dict)):
            if depth >= limits.max_json_depth:
                _fail(where(at), f"nested deeper than {limits.max_json_depth} (Limits.max_json_depth)")
            if isinstance(item, list):
                stack.extend((v, depth + 1, (at, i)) for i, v in enumerate(item))
            else:
                for k, v in item.items():
                    if not isinstance(k, str):
                        _fail(where(at), f"object keys must be strings, got {_json_type(k)}")
                    _text(k, where((at, k)), limits.max_text_chars)
                    stack.append((v, depth + 1, (at, k)))
        else:
            _fail(where(at), f"not a JSON value: {type(item).__name__}")


def _message(value: object, path: str, limits: Limits) -> Message:
    obj = _object(value, path, ("role", "content"), ())
    return Message(
        role=_choice(obj["role"], _key(path, "role"), ROLES),  # type: ignore[arg-type]
        content=_text(obj["content"], _key(path, "content"), limits.max_text_chars),
    )


def _problem(value: object, path: str, limits: Limits) -> Problem:
    obj = _object(value, path, ("task", "id", "messages"), ("answer", "metadata"))
    task = _label(obj["task"], _key(path, "task"), limits, allow_empty=False)
    pid = _label(obj["id"], _key(path, "id"), limits, allow_empty=False)
    mpath = _key(path, "messages")
    items = _array(obj["messages"], mpath, limits.max_messages, "max_messages", min_len=1)
    messages = tuple(_message(m, f"{mpath}[{i}]", limits) for i, m in enumerate(items))
    answer = obj.get("answer")
    _json_value(answer, _key(path, "answer"), limits)
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        _fail(_key(path, "metadata"), f"expected an object, got {_json_type(metadata)}")
    _json_value(metadata, _key(path, "metadata"), limits)
    return Problem(task=task, id=pid, messages=messages, answer=answer, metadata=metadata)


def _completion(value: object, path: str, limits: Limits) -> Completion:
    obj = _object(value, path, ("text",), ("finish_reason", "num_tokens", "token_ids", "logprobs", "reasoning"))
    text = _text(obj["text"], _key(path, "text"), limits.max_text_chars)
    finish_reason = _choice(obj.get("finish_reason", "stop"), _key(path, "finish_reason"), FINISH_REASONS)
    num_tokens = obj.get("num_tokens")
    if num_tokens is not None:
        num_tokens = _int(num_tokens, _key(path, "num_tokens"), 0, _MAX_SAFE_INT)
    token_ids = obj.get("token_ids")
    if token_ids is not None:
        token_ids = _ints(token_ids, _key(path, "token_ids"), limits.max_tokens, "max_tokens", 0, _MAX_TOKEN_ID)
    logprobs = obj.get("logprobs")
    if logprobs is not None:
        logprobs = _floats(logprobs, _key(path, "logprobs"), limits.max_tokens, "max_tokens")
    if token_ids is not None and logprobs is not None and len(token_ids) != len(logprobs):
        # Both describe the same generated tokens; a mismatch is a bug or a tampered file.
        _fail(_key(path, "logprobs"), f"{len(logprobs)} logprobs for {len(token_ids)} token_ids")
    reasoning = obj.get("reasoning")
    if reasoning is not None:
        reasoning = _text(reasoning, _key(path, "reasoning"), limits.max_text_chars)
    return Completion(
        text=text,
        finish_reason=finish_reason,  # type: ignore[arg-type]
        num_tokens=num_tokens,
        token_ids=token_ids,
        logprobs=logprobs,
        reasoning=reasoning,
    )


def _group(value: object, path: str, limits: Limits, default_node: str) -> Group:
    obj = _object(value, path, ("problem", "completions", "rewards", "advantages"), ("node",))
    # The node first: it says whose rollouts these are, the most useful fact in an error.
    node = obj.get("node", "")
    if node == "":
        node = default_node
    else:
        _named(validate_node_id, node, _key(path, "node"))
    problem = _problem(obj["problem"], _key(path, "problem"), limits)
    cap = limits.max_completions_per_group
    cpath = _key(path, "completions")
    items = _array(obj["completions"], cpath, cap, "max_completions_per_group", min_len=1)
    rewards = _floats(obj["rewards"], _key(path, "rewards"), cap, "max_completions_per_group")
    advantages = _floats(obj["advantages"], _key(path, "advantages"), cap, "max_completions_per_group")
    for name, values in (("rewards", rewards), ("advantages", advantages)):
        if len(values) != len(items):
            _fail(_key(path, name), f"{len(values)} {name} for {len(items)} completions (must be equal)")
    completions = tuple(_completion(c, f"{cpath}[{i}]", limits) for i, c in enumerate(items))
    return Group(problem=problem, completions=completions, rewards=rewards, advantages=advantages, node=node)


def _schema_version(obj: dict[str, Any]) -> None:
    if "schema_version" not in obj:
        _fail("", "missing required key 'schema_version'")
    version = obj["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        _fail("schema_version", f"expected an integer, got {_json_type(version)}")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = ", ".join(map(str, SUPPORTED_SCHEMA_VERSIONS))
        hint = " (written by a newer sapo: upgrade this node)" if version > max(SUPPORTED_SCHEMA_VERSIONS) else ""
        _fail("schema_version", f"unsupported version {_show(version)}; this sapo reads version {supported}{hint}")


def _payload(value: object, limits: Limits) -> RoundPayload:
    if not isinstance(value, dict):
        _fail("top level", f"expected an object, got {_json_type(value)}")
    # The version first: a newer writer's extra keys should read "upgrade", not "unknown key".
    _schema_version(value)
    obj = _object(
        value,
        "",
        ("schema_version", "experiment", "round", "node", "groups"),
        ("model", "created_at", "signature"),
    )
    experiment = _named(validate_experiment_name, obj["experiment"], "experiment")
    node = _named(validate_node_id, obj["node"], "node")
    round_ = _int(obj["round"], "round", 0, _MAX_SAFE_INT)
    model = _label(obj.get("model", ""), "model", limits, allow_empty=True)
    created_at = _float(obj.get("created_at", 0.0), "created_at")
    signature = obj.get("signature")
    if signature is not None:
        if not isinstance(signature, str):
            _fail("signature", f"expected a string, got {_json_type(signature)}")
        if not _SIGNATURE_RE.fullmatch(signature):
            _fail("signature", "expected 64 lowercase hex digits (HMAC-SHA256)")
    items = _array(obj["groups"], "groups", limits.max_groups, "max_groups")
    groups = tuple(_group(g, f"groups[{i}]", limits, node) for i, g in enumerate(items))
    return RoundPayload(
        experiment=experiment,
        round=round_,
        node=node,
        groups=groups,
        model=model,
        created_at=created_at,
        schema_version=obj["schema_version"],
        signature=signature,
    )


@_untrusted
def payload_from_data(data: object, limits: Limits = DEFAULT_LIMITS) -> RoundPayload:
    """Validate parsed JSON (untrusted) and build the payload it describes, or raise PayloadError.

    Empty or missing group nodes become the payload's node.
    """
    return _payload(data, limits)


@_untrusted
def group_from_data(data: object, limits: Limits = DEFAULT_LIMITS) -> Group:
    """Validate parsed JSON (untrusted) as a `Group`; an empty or missing node stays ``""``."""
    return _group(data, "", limits, "")


@_untrusted
def problem_from_data(data: object, limits: Limits = DEFAULT_LIMITS) -> Problem:
    """Validate parsed JSON (untrusted) as a `Problem`, or raise PayloadError."""
    return _problem(data, "", limits)


@_untrusted
def completion_from_data(data: object, limits: Limits = DEFAULT_LIMITS) -> Completion:
    """Validate parsed JSON (untrusted) as a `Completion`, or raise PayloadError."""
    return _completion(data, "", limits)


@_untrusted
def message_from_data(data: object, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate parsed JSON (untrusted) as a `Message`, or raise PayloadError."""
    return _message(data, "", limits)


# ------------------------------------------------------------- control documents: data -> record
# What a shared-storage transport keeps beside the payloads: the coordinator's `SwarmState`, each
# node's `NodeInfo` heartbeat and the coordinator's `Lease`. Their JSON is ``attrs.asdict`` of the
# record; peers write it, so it is decoded as untrusted as a payload is.


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@_untrusted
def swarm_state_from_data(data: object) -> SwarmState:
    """Validate parsed JSON (untrusted) as a `SwarmState`, or raise PayloadError."""
    if not isinstance(data, dict):
        _fail("", "not a JSON object")
    round_, deadline = data.get("round"), data.get("deadline")
    updated_at, coordinator = data.get("updated_at", 0.0), data.get("coordinator", "")
    if type(round_) is not int or round_ < 0:
        _fail("", f"round: expected a non-negative integer, got {round_!r}")
    if deadline is not None and not _is_finite_number(deadline):
        _fail("", "deadline: expected a finite number or null")
    if not _is_finite_number(updated_at):
        _fail("", "updated_at: expected a finite number")
    if not isinstance(coordinator, str):
        _fail("", "coordinator: expected a string")
    closed_with = data.get("closed_with", [])
    if not isinstance(closed_with, list) or not all(isinstance(node, str) for node in closed_with):
        _fail("", "closed_with: expected a list of node ids")
    return SwarmState(
        round=round_,
        deadline=None if deadline is None else float(deadline),
        updated_at=float(updated_at),
        coordinator=coordinator,
        closed_with=tuple(validate_node_id(node) for node in closed_with),
    )


@_untrusted
def node_info_from_data(data: object) -> NodeInfo:
    """Validate parsed JSON (untrusted) as a `NodeInfo` (a heartbeat), or raise PayloadError."""
    if not isinstance(data, dict):
        _fail("", "not a JSON object")
    node, role, model = data.get("node"), data.get("role"), data.get("model", "")
    if not isinstance(node, str):
        _fail("", "node: expected a string")
    validate_node_id(node)
    if not isinstance(role, str) or not isinstance(model, str):
        _fail("", "role and model: expected strings")
    times = _times(data, "started_at", "last_seen")
    round_ = data.get("round", -1)
    if type(round_) is not int:
        _fail("", "round: expected an integer")
    return NodeInfo(node=node, role=role, model=model, round=round_, **times)


@_untrusted
def lease_from_data(data: object) -> Lease:
    """Validate parsed JSON (untrusted) as a `Lease`, or raise PayloadError."""
    if not isinstance(data, dict):
        _fail("", "not a JSON object")
    epoch, holder, token = data.get("epoch"), data.get("holder"), data.get("token", "")
    if type(epoch) is not int or epoch < 0:
        _fail("", f"epoch: expected a non-negative integer, got {epoch!r}")
    if not isinstance(holder, str) or not isinstance(token, str):
        _fail("", "holder and token: expected strings")
    validate_node_id(holder)
    return Lease(epoch=epoch, holder=holder, token=token, **_times(data, "acquired_at", "renewed_at", "expires_at"))


def _times(data: dict[str, Any], *keys: str) -> dict[str, float]:
    """The timestamps ``keys`` of ``data`` (0.0 where absent), or PayloadError unless all are finite numbers."""
    times = {key: data.get(key, 0.0) for key in keys}
    if not all(_is_finite_number(v) for v in times.values()):
        _fail("", f"{', '.join(keys[:-1])} and {keys[-1]}: expected finite numbers")
    return {key: float(value) for key, value in times.items()}


# ------------------------------------------------------------------------------ bytes / JSON


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of duplicate keys silently; two readers could then disagree on what a
    # payload says (and a signature would cover only one reading). Refuse instead.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise PayloadError(f"invalid JSON: duplicate key {_show(key)}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> NoReturn:
    # Python's json reads NaN/Infinity/-Infinity by default; they are not JSON.
    raise PayloadError(f"invalid JSON: {name} is not a JSON number (non-finite numbers are refused)")


def _parse_json(data: bytes | bytearray | memoryview, limits: Limits) -> Any:
    size = memoryview(data).nbytes
    if size > limits.max_payload_bytes:
        _fail("", f"payload is {size} bytes, over the limit of {limits.max_payload_bytes} (Limits.max_payload_bytes)")
    try:
        # Decode ourselves: json.loads(bytes) would also accept UTF-16 and UTF-32.
        text = str(data, "utf-8")
    except UnicodeDecodeError as exc:
        _fail("", f"not valid UTF-8: {exc.reason} at byte {exc.start}")
    if text.startswith("\ufeff"):
        _fail("", "invalid JSON: starts with a byte order mark (BOM); write UTF-8 without BOM")
    # An upper bound on the arrays and objects json.loads would build, at memchr speed.
    brackets = text.count("{") + text.count("[")
    if brackets > limits.max_brackets:
        _fail(
            "",
            f"{brackets} '{{' and '[' in the document, over the limit of {limits.max_brackets} "
            "(Limits.max_brackets); refused before parsing",
        )
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except RecursionError:
        _fail("", "invalid JSON: nested too deeply")
    except json.JSONDecodeError as exc:
        _fail("", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except PayloadError:
        raise
    except ValueError as exc:  # e.g. an integer literal over Python's 4300-digit limit
        _fail("", f"invalid JSON: {exc}")


def _gunzip(blob: bytes | bytearray | memoryview, limit: int) -> bytearray:
    """Inflate gzip data (one or more members), refusing once the output exceeds ``limit`` bytes.

    Input is fed in `_GZIP_IN` slices and output taken in `_GZIP_STEP` slices, each checked
    before it is kept, so a gzip bomb costs at most ``limit`` bytes of memory, never its
    announced size, and no step copies more than a slice.
    """
    view = memoryview(blob).cast("B")
    if view.nbytes > limit:
        _fail("", f"compressed payload is {view.nbytes} bytes, over the limit of {limit} (Limits.max_payload_bytes)")
    if view[:2] != _GZIP_MAGIC:
        _fail("", "not gzip data (it does not start with the gzip magic bytes 1f 8b)")
    out = bytearray()
    pos = 0
    while True:  # one pass per gzip member
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        pending: bytes | memoryview = b""
        while not inflater.eof:
            if not pending and pos < len(view):
                pending = view[pos : pos + _GZIP_IN]
                pos += len(pending)
            starved = not pending  # no input left: only output zlib still holds can come out
            try:
                chunk = inflater.decompress(pending, _GZIP_STEP)
            except zlib.error as exc:
                _fail("", f"corrupt gzip data: {exc}")
            if len(out) + len(chunk) > limit:
                _fail("", f"gzip data inflates to more than {limit} bytes (Limits.max_payload_bytes); refused")
            out += chunk
            pending = inflater.unconsumed_tail
            if starved and not chunk:
                _fail("", "truncated gzip data (the stream ends before its end marker)")
        rest = inflater.unused_data + view[pos:].tobytes()
        if not rest:
            return out
        if rest[:2] != _GZIP_MAGIC:
            _fail("", f"{len(rest)} bytes of trailing garbage after the gzip data")
        view, pos = memoryview(rest), 0


@_untrusted
def encode_payload(payload: RoundPayload, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The payload as compact UTF-8 JSON, after checking it as a peer would (same `Limits`).

    Raises PayloadError for anything `decode_payload` would refuse: non-finite numbers, bad
    node ids or experiment names, unknown roles or finish reasons, oversize fields...
    """
    data = to_data(payload)
    _payload(data, limits)
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(blob) > limits.max_payload_bytes:
        _fail(
            "",
            f"payload is {len(blob)} bytes, over the limit of {limits.max_payload_bytes} (Limits.max_payload_bytes)",
        )
    return blob


@_untrusted
def decode_payload(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> RoundPayload:
    """Parse and validate untrusted UTF-8 JSON bytes into a payload, or raise PayloadError.

    Refuses: invalid UTF-8 (and so UTF-16/32), a BOM, invalid JSON, NaN/Infinity literals,
    duplicate keys, missing or unknown keys, wrong types (``true`` is not an integer, ``1.0`` is
    not a token id), non-finite numbers (``1e999``), lone surrogates, unsupported
    ``schema_version``, and anything over ``limits``. Does not check the signature: call
    `verify_signature` next. The transport still has to check that the payload's round and node
    match where it found the file.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        _fail("", f"expected bytes, got {type(data).__name__}")
    return _payload(_parse_json(data, limits), limits)


@_untrusted
def write_gz(payload: RoundPayload, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """`encode_payload`, gzipped (deterministic: no timestamp or file name in the header)."""
    return gzip.compress(encode_payload(payload, limits), compresslevel=6, mtime=0)


@_untrusted
def read_gz(blob: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> RoundPayload:
    """Inflate (bounded by ``limits.max_payload_bytes``) and `decode_payload` a gzip blob."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        _fail("", f"expected bytes, got {type(blob).__name__}")
    return decode_payload(_gunzip(blob, limits.max_payload_bytes), limits)


# --------------------------------------------------------------------------------- signing


def _secret_bytes(secret: str | bytes | None) -> bytes:
    if secret is None:
        return b""
    if isinstance(secret, str):
        return secret.encode("utf-8")
    if isinstance(secret, (bytes, bytearray)):
        return bytes(secret)
    raise PayloadError(f"a secret must be str or bytes, got {type(secret).__name__}")


def _signature(payload: RoundPayload, key: bytes) -> str:
    data = to_data(payload)
    data.pop("signature", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


@_untrusted
def sign_payload(payload: RoundPayload, secret: str | bytes | None) -> RoundPayload:
    """A copy of ``payload`` whose ``signature`` is the hex HMAC-SHA256 of its canonical form.

    The canonical form is ``to_data(payload)`` without ``signature``, as JSON with sorted keys,
    separators ``(",", ":")``, ``ensure_ascii=False``, in UTF-8. It covers every other field,
    at every level: ``metadata`` (which record equality ignores), group nodes (empty ones
    filled in), every reward, token and logprob. Floats are written as Python's ``repr``.
    With no secret (None or empty) the copy is unsigned, matching `verify_signature`.
    """
    key = _secret_bytes(secret)
    if not key:
        return attrs.evolve(payload, signature=None)
    return attrs.evolve(payload, signature=_signature(payload, key))


@_untrusted
def verify_signature(payload: RoundPayload, secret: str | bytes | None) -> None:
    """Raise PayloadError unless ``payload`` carries the signature `sign_payload` gives it.

    With no secret (None or empty) every payload is accepted, signed or not: the swarm does
    not use signatures. With a secret, an unsigned payload is refused.
    """
    key = _secret_bytes(secret)
    if not key:
        return
    if payload.signature is None:
        raise PayloadError(
            "payload is not signed, but this swarm requires signatures (set the swarm secret on its node)"
        )
    expected = _signature(payload, key)
    if not hmac.compare_digest(expected.encode("ascii"), str(payload.signature).encode("utf-8", "replace")):
        raise PayloadError("signature does not match: the payload was altered or signed with another secret")


def _document_signature(data: Mapping[str, Any], key: bytes, kind: str, experiment: str) -> str:
    body = {name: value for name, value in data.items() if name != "signature"}
    # The kind and the experiment are signed too: a valid heartbeat is no lease, and a file signed
    # for another experiment under the same secret is refused.
    canonical = json.dumps(
        {"kind": kind, "experiment": experiment, "document": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_document(data: Mapping[str, Any], secret: str | bytes | None, *, kind: str, experiment: str) -> dict[str, Any]:
    """A copy of the JSON object ``data`` (a swarm's state, heartbeat or lease) with its ``signature``:
    the hex HMAC-SHA256 of ``kind``, ``experiment`` and ``data``. Without a secret, ``data`` unsigned."""
    key = _secret_bytes(secret)
    body = {name: value for name, value in data.items() if name != "signature"}
    if key:
        body["signature"] = _document_signature(body, key, kind, experiment)
    return body


def verify_document(data: object, secret: str | bytes | None, *, kind: str, experiment: str) -> None:
    """Raise PayloadError unless ``data`` carries the signature `sign_document` gives it (any, without a secret)."""
    key = _secret_bytes(secret)
    if not key:
        return
    if not isinstance(data, Mapping) or not isinstance(data.get("signature"), str):
        raise PayloadError("not signed, but this swarm requires signatures (set the swarm secret on its node)")
    try:
        expected = _document_signature(data, key, kind, experiment)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"cannot be signed: {exc}") from exc
    if not hmac.compare_digest(expected.encode("ascii"), data["signature"].encode("utf-8", "replace")):
        raise PayloadError(
            f"signature does not match: altered, signed with another secret, or not a {kind} "
            f"of experiment {experiment!r}"
        )
