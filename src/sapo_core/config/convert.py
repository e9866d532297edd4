"""The converter: a value from TOML, a typed flag or a string, converted to a field's type annotation.

A string (from the environment, a flag or ``--set``) is parsed by the field's type: ``"0.7"`` for a
float, ``"yes"`` for a bool, ``"a,b"`` or ``'["a","b"]'`` for a list, ``"{a=1.0}"`` for a table.
Values from TOML and typed flags must already fit (an int for a float is fine, a float for an int
is not). `_coerce` picks one converter a type from dispatch tables: by typing origin
(``list[int]``, ``str | None``, ``Literal[...]``), by exact class (``int``), then by base class
(``Path``, an ``Enum``).
"""

from __future__ import annotations

import enum
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal


class _Mismatch(Exception):
    """A value does not fit a type; ``args[0]`` says what was expected ("an integer")."""


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE_TYPE = type(None)


def _describe(tp: Any) -> str:
    """How a type reads in 'expected ...' messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "a boolean (true/false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return "a path"
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        members = [_describe(a) for a in args if a is not _NONE_TYPE]
        return " or ".join(members) + (" (empty for none)" if _NONE_TYPE in args else "")
    if origin in (list, tuple, set, frozenset, Sequence) or tp in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return "a list" + (f" of {_plural(inner[0])}" if len(inner) == 1 else "") + " (a TOML array or comma-separated)"
    if origin in (dict, Mapping) or tp is dict:
        return "a table" + (f" of {_plural(args[1])}" if len(args) == 2 else "") + " (e.g. {a = 1})"
    return f"a {getattr(tp, '__name__', tp)}"


def _plural(tp: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(tp, _describe(tp))


def _parse_toml_value(text: str) -> Any:
    """``text`` as one TOML value; raises ValueError when it is not one."""
    try:
        data = tomllib.loads(f"v = {text}\n")
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(str(exc)) from None
    if set(data) != {"v"}:  # "1\nx = 2": more than one value
        raise ValueError("not a single value")
    return data["v"]


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to the type annotation ``tp``, or `_Mismatch`."""
    convert = _BY_ORIGIN.get(typing.get_origin(tp)) or _class_converter(tp)
    # A typing construct this converter does not know: leave the value to the class.
    return value if convert is None else convert(value, tp)


def _class_converter(tp: Any) -> _Converter | None:
    if tp is Any:
        return _as_is
    if not isinstance(tp, type):
        return None
    exact = _BY_CLASS.get(tp)
    if exact is not None:
        return exact
    return next((convert for base, convert in _BY_BASE if issubclass(tp, base)), _instance_of)


def _as_is(value: Any, tp: Any) -> Any:
    return value


def _annotated(value: Any, tp: Any) -> Any:
    return _coerce(value, typing.get_args(tp)[0])


def _union(value: Any, tp: Any) -> Any:
    args = typing.get_args(tp)
    members = [a for a in args if a is not _NONE_TYPE]
    optional = len(members) < len(args)
    if optional and value is None:
        return None
    if optional and isinstance(value, str):
        text = value.strip().lower()
        # "" is "unset" for any optional; "none"/"null" too unless the value could be that string.
        if text == "" or (text in ("none", "null") and str not in members):
            return None
    for member in members:
        try:
            return _coerce(value, member)
        except _Mismatch:
            continue
    raise _Mismatch(_describe(tp))


def _literal(value: Any, tp: Any) -> Any:
    for choice in typing.get_args(tp):
        if value == choice and type(value) is type(choice):
            return choice
        if isinstance(value, str) and value.strip() == str(choice):
            return choice
    raise _Mismatch(_describe(tp))


def _bool(value: Any, tp: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Mismatch(_describe(tp))


def _int(value: Any, tp: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _Mismatch(_describe(tp))


def _float(value: Any, tp: Any) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None:
        raise _Mismatch(_describe(tp))
    if not math.isfinite(number):
        raise _Mismatch("a finite number")
    return number


def _str(value: Any, tp: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Mismatch(_describe(tp))


def _path(value: Any, tp: Any) -> PurePath:
    if isinstance(value, (str, PurePath)):
        return tp(value)
    raise _Mismatch(_describe(tp))


def _enum(value: Any, tp: Any) -> enum.Enum:
    for member in tp:
        if value == member.value or (isinstance(value, str) and value.strip() in (member.name, str(member.value))):
            return member
    raise _Mismatch("one of: " + ", ".join(str(m.value) for m in tp))


def _instance_of(value: Any, tp: Any) -> Any:
    if isinstance(value, tp):
        return value
    raise _Mismatch(_describe(tp))


def _sequence(value: Any, tp: Any) -> Any:
    container, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = _parse_toml_value(text)
            except ValueError:
                raise _Mismatch(_describe(tp)) from None
        else:  # comma-separated; "" is the empty list
            value = [item.strip() for item in text.split(",") if item.strip()]
    if not isinstance(value, (list, tuple)):
        raise _Mismatch(_describe(tp))
    try:
        if container is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):  # tuple[int, str]
            if len(args) != len(value):
                raise _Mismatch(f"a list of {len(args)} items")
            items = [_coerce(v, a) for v, a in zip(value, args)]
        else:
            element = args[0] if args else Any
            items = [_coerce(v, element) for v in value]
    except _Mismatch:
        raise _Mismatch(_describe(tp)) from None
    if container in (tuple, Sequence):
        return tuple(items)
    if container in (set, frozenset):
        return container(items)
    return items


def _table(value: Any, tp: Any) -> dict[Any, Any]:
    args = typing.get_args(tp)
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            text = "{" + text + "}"  # "a=1, b=2" reads as the inline table {a=1, b=2}
        try:
            value = _parse_toml_value(text)
        except ValueError:
            raise _Mismatch(_describe(tp)) from None
    if not isinstance(value, Mapping):
        raise _Mismatch(_describe(tp))
    key_type, value_type = args if len(args) == 2 else (Any, Any)
    try:
        return {_coerce(k, key_type): _coerce(v, value_type) for k, v in value.items()}
    except _Mismatch:
        raise _Mismatch(_describe(tp)) from None


_Converter = Callable[[Any, Any], Any]
# A bare ``Sequence`` or ``Mapping`` (no origin, not listed) is only checked with isinstance.
_BY_ORIGIN: dict[Any, _Converter] = {
    typing.Annotated: _annotated,
    typing.Union: _union,
    types.UnionType: _union,
    Literal: _literal,
    **dict.fromkeys((list, tuple, set, frozenset, Sequence), _sequence),
    **dict.fromkeys((dict, Mapping), _table),
}
_BY_CLASS: dict[type, _Converter] = {
    object: _as_is,
    bool: _bool,
    int: _int,
    float: _float,
    str: _str,
    **dict.fromkeys((list, tuple, set, frozenset), _sequence),
    dict: _table,
}
# Subclasses: a Path type builds its own kind of path, an Enum looks up its members.
_BY_BASE: tuple[tuple[type, _Converter], ...] = ((PurePath, _path), (enum.Enum, _enum))
