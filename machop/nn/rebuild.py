"""The classes a saved file may name, and how one is re-created from a file.

A file holds no code: it names a class registered here (with `rebuildable`)
plus a JSON ``spec`` and tensors. A class is rebuildable when
``cls(**obj.spec(), **own_tensors)`` recreates it, ``own_tensors`` being its
direct parameters and buffers by name. Every class of this package registers
itself on import, so importing ``machop.nn`` is all a reader needs.

A file is data from anywhere, so `rebuild` checks everything before it calls
a constructor: the spec's keys and value types and ranges, the tensors'
names, dtypes and shapes (against the tensor a parametrization will sit on,
when given), so no spec value can make it allocate more than the state dict
holds, and every refusal is one `RebuildError` line.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

REBUILDABLE: dict[str, type[nn.Module]] = {}


class RebuildError(ValueError):
    """A saved class record (class name, spec, tensors) that cannot be re-created; one line."""


@dataclass(frozen=True)
class Schema:
    """What a saved record of a class may hold: spec keys, tensor names (and which are required), a value check.

    ``check(spec, tensors, target, where)`` raises `RebuildError`; ``target``
    is the tensor a parametrization sits on, or None.
    """

    spec: frozenset[str] = frozenset()
    required_spec: frozenset[str] = frozenset()
    tensors: frozenset[str] = frozenset()
    required_tensors: frozenset[str] = frozenset()
    check: Callable[[dict, dict, "torch.Tensor | None", str], None] | None = None


def rebuildable(cls: type[nn.Module] | None = None, *, schema: Schema | None = None):
    """Class decorator: allow ``cls`` to be named in a saved file (``@rebuildable`` or ``@rebuildable(schema=...)``).

    Without a schema, a record is checked against the constructor's signature.
    """

    def register(c: type[nn.Module]) -> type[nn.Module]:
        REBUILDABLE[c.__name__] = c
        c.saved_schema = schema
        return c

    return register(cls) if cls is not None else register


def is_rebuildable(module: nn.Module) -> bool:
    """True for modules a pass adds (masks, codebooks, quantizers, inserted activation modules)."""
    return REBUILDABLE.get(type(module).__name__) is type(module)


def has_compression(model: nn.Module) -> bool:
    """True once a pass has added anything to ``model`` (a parametrization or an inserted module)."""
    return any(is_rebuildable(m) for m in model.modules())


def spec_of(module: nn.Module) -> dict:
    """The JSON part of a rebuildable module (``{}`` if it has none)."""
    return module.spec() if hasattr(module, "spec") else {}


# --------------------------------------------------------------------------- checks of a file's values


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: file content quoted in a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(v: Any) -> bool:
    """An int that is not a bool (JSON's true would pass ``isinstance(v, int)``)."""
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(spec: dict, key: str, lo: int, hi: int, where: str) -> None:
    """`RebuildError` unless ``spec[key]`` is an integer in ``[lo, hi]``."""
    v = spec[key]
    if not is_int(v) or not lo <= v <= hi:
        raise RebuildError(f"{where}: {key} must be an integer in [{lo}, {hi}], got {short(v)}")


def check_number(v: Any, key: str, lo: float, hi: float, where: str) -> None:
    """`RebuildError` unless ``v`` is a number in ``[lo, hi]`` (not NaN)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or (isinstance(v, float) and math.isnan(v)) or not lo <= v <= hi:
        raise RebuildError(f"{where}: {key} must be a number in [{lo}, {hi}], got {short(v)}")


def check_how(how: Any, key: str, where: str) -> None:
    """A record of how a mask was made: a table; scope/granularity/method text, target a number."""
    if not isinstance(how, dict):
        raise RebuildError(f"{where}: {key} must be a table, got {type(how).__name__}")
    for k in ("scope", "granularity", "method"):
        if how.get(k) is not None and not isinstance(how[k], str):
            raise RebuildError(f"{where}: {key}.{k} must be text, got {short(how[k])}")
    if how.get("target") is not None:
        check_number(how["target"], f"{key}.target", 0, 1, where)


def check_tensor(t: torch.Tensor, name: str, where: str, *, kind: str, ndim: int | None = None,
                 shape: torch.Size | None = None) -> None:
    """`RebuildError` unless ``t`` is of ``kind`` (bool, int, float) and has ``ndim`` dimensions or ``shape``."""
    ok = {
        "bool": t.dtype == torch.bool,
        "int": not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
        "float": t.is_floating_point(),
    }[kind]
    if not ok:
        raise RebuildError(f"{where}: tensor {name} must be {kind}, got {str(t.dtype).removeprefix('torch.')}")
    if ndim is not None and t.dim() != ndim:
        raise RebuildError(f"{where}: tensor {name} must have {ndim} dimension(s), got shape {list(t.shape)}")
    if shape is not None and t.shape != shape:
        raise RebuildError(f"{where}: tensor {name} has shape {list(t.shape)}, the tensor it sits on {list(shape)}")


def _constructor_args(cls: type[nn.Module]) -> list[inspect.Parameter]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _schema_of(cls: type[nn.Module]) -> tuple[set, set, set, set, Callable | None]:
    """The class's `Schema`; a class registered without one is checked by its constructor's signature."""
    schema = getattr(cls, "saved_schema", None)
    if schema is not None:
        return schema.spec, schema.required_spec, schema.tensors, schema.required_tensors, schema.check
    names = {p.name for p in _constructor_args(cls)}
    required = {p.name for p in _constructor_args(cls) if p.default is p.empty}
    return names, required, names, set(), None  # spec or tensor: not known, so required means in either


def check_record(cls_name: Any, spec: Any, tensors: dict[str, Any], where: str,
                 target: torch.Tensor | None = None) -> type[nn.Module]:
    """Raise `RebuildError` unless ``cls_name(**spec, **tensors)`` is a valid record; return the class."""
    if not isinstance(cls_name, str) or cls_name not in REBUILDABLE:
        raise RebuildError(f"{where}: saved model names unknown class {short(cls_name)}; "
                           f"known: {', '.join(sorted(REBUILDABLE))}")
    cls = REBUILDABLE[cls_name]
    if not isinstance(spec, dict):
        raise RebuildError(f"{where}: the spec of a {cls_name} must be a table, got {type(spec).__name__}")
    spec_ok, spec_req, tensors_ok, tensors_req, check = _schema_of(cls)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise RebuildError(f"{where}: {short(name)} is not a tensor")
    both = set(spec) & set(tensors)
    if both:
        raise RebuildError(f"{where}: {short(sorted(both)[0])} is given both in the spec and as a tensor")
    extra_spec, extra_tensors = sorted(set(spec) - spec_ok), sorted(set(tensors) - tensors_ok)
    if extra_spec:
        raise RebuildError(f"{where}: unknown spec key {short(extra_spec[0])} for a {cls_name}")
    if extra_tensors:
        raise RebuildError(f"{where}: unexpected tensor {short(extra_tensors[0])} for a {cls_name}")
    if check is None:  # a class registered by a user: its constructor's required arguments must all be there
        spec_req = spec_req - set(tensors)
    missing = sorted((spec_req - set(spec)) | (tensors_req - set(tensors)))
    if missing:
        raise RebuildError(f"{where}: a {cls_name} needs {missing[0]!r}, which the file does not give")
    if check is not None:
        check(spec, tensors, target, where)
    return cls


def rebuild(cls_name: str, spec: dict, state: dict[str, torch.Tensor], prefix: str,
            target: torch.Tensor | None = None, where: str | None = None) -> nn.Module:
    """Re-create a registered class from its spec and the tensors under ``prefix`` in ``state``.

    ``target`` is the tensor a parametrization will sit on (its masks and
    index must have that shape); ``where`` names the record in errors.
    Everything is checked first (`check_record`); a bad record raises
    `RebuildError` (a ValueError), never another error of the constructor.
    """
    where = where or f"{short(prefix.rstrip('.') or 'model')} ({short(cls_name)})"
    tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
    cls = check_record(cls_name, spec, tensors, where, target)
    try:
        return cls(**spec, **tensors)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, OverflowError) as e:
        raise RebuildError(f"{where}: cannot re-create the {cls_name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
