"""JSON from a file someone handed in: parsed within limits, then checked against a small schema.

One reader for every JSON record machop opens: the ``.mchz`` header
(`machop.ir.mchz.format`) and the ``structure`` / ``meta`` records of the
torch files (`machop.ir.serialize`). `parse_untrusted` refuses, before any
Python object is built, text that is too long, nested too deep (counted on
the bytes outside string literals) or that would build too many objects;
while parsing, the constants ``NaN`` / ``Infinity``, numbers that overflow to
infinity or have more digits than Python converts, duplicate keys and keys
or strings longer than the limits. `check_schema` then checks types,
required and allowed keys and integer ranges. Every refusal is one line
naming the file, the record and the field (``sections[3].length``), of the
error class the caller passes (`machop.files.BadFileError` or a subclass).
"""

from __future__ import annotations

import gc
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

from machop.files import BadFileError

# ----------------------------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class JsonLimits:
    """What a record may hold. ``max_cost``: bytes of Python objects it may build (`json_cost`), None: unbounded."""

    max_bytes: int = 2 << 20
    max_depth: int = 32
    max_key: int = 1000  # characters of an object key
    max_string: int = 1 << 20  # characters of a string value
    max_cost: int | None = None


def json_cost(text: str | bytes) -> int:
    """Estimated bytes of the objects ``json.loads(text)`` builds: 16 per character, 64 more per ``[`` or ``{``."""
    return 16 * len(text) + 64 * (text.count("[" if isinstance(text, str) else b"[")
                                  + text.count("{" if isinstance(text, str) else b"{"))


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)  # a JSON string literal (linear: no ambiguous repetition)
_OPEN, _CLOSE = np.zeros(256, np.int8), np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_CLOSE[[ord("]"), ord("}")]] = 1


def json_depth(text: bytes) -> int:
    """The deepest nesting of brackets in JSON ``text`` outside string literals (``{}`` and ``[]`` are 1).

    Computed on the text before it is parsed (a bracket count over the bytes
    left once string literals are removed), so neither the parser's recursion
    nor the Python objects of a deep document are ever reached.
    """
    stripped = np.frombuffer(_JSON_STRING.sub(b"", text), dtype=np.uint8)
    if stripped.size == 0:
        return 0
    level = np.cumsum(_OPEN[stripped].astype(np.int32) - _CLOSE[stripped])
    return int(level.max(initial=0))


class _Refused(ValueError):
    """Raised inside the parser's hooks; becomes the caller's one-line error."""


def _pairs(limits: JsonLimits):
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if len(key) > limits.max_key:
                raise _Refused(f"a key of {len(key)} characters (at most {limits.max_key})")
            if key in out:
                raise _Refused(f"duplicate key {key[:40]!r}")
            if isinstance(value, str) and len(value) > limits.max_string:
                raise _Refused(f"the string of {key[:40]!r} has {len(value)} characters (at most {limits.max_string})")
            out[key] = value
        return out

    return hook


def _no_constant(name: str):
    raise _Refused(f"non-finite number {name}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:20]} overflows")
    return value


def parse_untrusted(text: bytes | str, source: str, what: str, limits: JsonLimits = JsonLimits(),
                    error: type[BadFileError] = BadFileError, fail: Callable[[str], Exception] | None = None) -> Any:
    """The JSON value of ``text`` (UTF-8 bytes or str), every limit checked; else one line.

    The refusal is ``error("{source}: its {what} record is {problem}")``, or
    ``fail(problem)`` when given, the problem one of: ``a T, not JSON text``,
    ``too large ...``, ``... would build objects of more than N MiB``, ``nested
    deeper than D``, ``not valid JSON (...)``, ``refused: ...`` (a duplicate key,
    NaN, an overlong key or string).
    """
    def refuse(problem: str) -> Exception:
        return fail(problem) if fail is not None else error(f"{source}: its {what} record is {problem}")

    if not isinstance(text, (bytes, str)):
        raise refuse(f"a {type(text).__name__}, not JSON text")
    if len(text) > limits.max_bytes:
        raise refuse(f"too large ({len(text)} bytes, at most {limits.max_bytes})")
    if limits.max_cost is not None and json_cost(text) > limits.max_cost:
        raise refuse(f"too large ({len(text)} characters would build objects of more than "
                     f"{limits.max_cost >> 20} MiB; refused)")
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if json_depth(raw) > limits.max_depth:
        raise refuse(f"nested deeper than {limits.max_depth}")
    collecting = gc.isenabled()
    gc.disable()  # parsing makes no cycles; with the collector on, 2 MiB of "[[]]," takes 1.2 s instead of 0.07 s
    try:
        value = json.loads(text if isinstance(text, str) else text.decode("utf-8"),
                           object_pairs_hook=_pairs(limits), parse_constant=_no_constant, parse_float=_finite)
    except _Refused as e:
        raise refuse(f"refused: {e}") from None
    except RecursionError:  # not reached: the depth is checked first
        raise refuse("nested too deeply") from None
    except UnicodeDecodeError:
        raise refuse("not valid JSON (not UTF-8)") from None
    except (ValueError, MemoryError) as e:  # JSONDecodeError, an integer of too many digits
        raise refuse(f"not valid JSON ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    finally:
        if collecting:
            gc.enable()
    _strings(value, limits, refuse)
    return value


def _strings(value: Any, limits: JsonLimits, refuse: Callable[[str], Exception]) -> None:
    """Strings in lists (and a lone string) are not seen by the object hook: check them (iteratively)."""
    stack = [[value]]
    while stack:
        v = stack.pop()
        for item in (v if isinstance(v, list) else v.values()):
            if isinstance(item, str):
                if len(item) > limits.max_string:
                    raise refuse(f"refused: a string of {len(item)} characters (at most {limits.max_string})")
            elif isinstance(item, (list, dict)):
                stack.append(item)


# ----------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Int:
    """An integer (not a bool) in ``[lo, hi]``."""

    lo: int
    hi: int


@dataclass(frozen=True)
class Str:
    """A string of at most ``max_len`` characters (``min_len`` at least), matching ``pattern`` if given."""

    max_len: int = 1000
    min_len: int = 0
    pattern: re.Pattern | None = None


@dataclass(frozen=True)
class ListOf:
    """A list of at most ``max_len`` items, each matching ``item``."""

    item: "Schema"
    max_len: int = 1 << 20


@dataclass(frozen=True)
class Obj:
    """An object with exactly the ``required`` keys, and any of the ``optional`` ones; ``rest``: any other key's value."""

    required: dict[str, "Schema"] = field(default_factory=dict)
    optional: dict[str, "Schema"] = field(default_factory=dict)
    rest: "Schema | None" = None  # None: other keys are refused


@dataclass(frozen=True)
class Anything:
    """Any JSON value (checked elsewhere)."""


Schema = Union[Int, Str, ListOf, Obj, Anything]


class SchemaError(ValueError):
    """A value that does not match its schema; ``str()`` names the field (``sections[3].length``)."""


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check(value: Any, schema: Schema, path: str) -> None:
    what = path or "the record"
    if isinstance(schema, Anything):
        return
    if isinstance(schema, Int):
        if type(value) is not int or not schema.lo <= value <= schema.hi:
            raise SchemaError(f"{what} must be an integer in [{schema.lo}, {schema.hi}], got {_short(value)}")
        return
    if isinstance(schema, Str):
        if (not isinstance(value, str) or not schema.min_len <= len(value) <= schema.max_len
                or (schema.pattern is not None and not schema.pattern.fullmatch(value))):
            raise SchemaError(f"{what} must be a{' non-empty' if schema.min_len else ''} string"
                              f"{' of the form ' + schema.pattern.pattern if schema.pattern else ''}, got {_short(value)}")
        return
    if isinstance(schema, ListOf):
        if not isinstance(value, list) or len(value) > schema.max_len:
            raise SchemaError(f"{what} must be a list of at most {schema.max_len} items, got "
                              f"{type(value).__name__ if not isinstance(value, list) else f'{len(value)} items'}")
        for i, item in enumerate(value):
            _check(item, schema.item, f"{path}[{i}]")
        return
    if isinstance(schema, Obj):
        if not isinstance(value, dict):
            raise SchemaError(f"{what} must be an object, got {type(value).__name__}")
        missing = [k for k in schema.required if k not in value]
        if missing:
            raise SchemaError(f"{what} lacks key {missing[0]!r}")
        for key, item in value.items():
            sub = schema.required.get(key) or schema.optional.get(key) or schema.rest
            if sub is None:
                raise SchemaError(f"{what} has unknown key {_short(key)}")
            _check(item, sub, _join(path, key))
        return
    raise TypeError(f"not a schema: {schema!r}")


def check_schema(value: Any, schema: Schema, path: str = "") -> Any:
    """``value`` if it matches ``schema``; else `SchemaError` naming the first field that does not (under ``path``)."""
    _check(value, schema, path)
    return value


def load_untrusted(text: bytes | str, schema: Schema, source: str, what: str, limits: JsonLimits = JsonLimits(),
                   error: type[BadFileError] = BadFileError, fail: Callable[[str], Exception] | None = None) -> Any:
    """`parse_untrusted` then `check_schema`; a schema refusal reads ``"{source}: its {what} record: {field} ..."``
    (or ``fail("{field} ...")``)."""
    value = parse_untrusted(text, source, what, limits, error, fail)
    try:
        return check_schema(value, schema)
    except SchemaError as e:
        raise (fail(str(e)) if fail is not None else error(f"{source}: its {what} record: {e}")) from None


__all__ = ["Anything", "Int", "JsonLimits", "ListOf", "Obj", "Schema", "SchemaError", "Str", "check_schema",
           "json_cost", "json_depth", "load_untrusted", "parse_untrusted"]
