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
from typing import Any, Callable

import torch
from torch import nn

REBUILDABLE: dict[str, type[nn.Module]] = {}


class RebuildError(ValueError):
    """A saved class record (class name, spec, tensors) that cannot be re-created; one line."""


def rebuildable(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: allow ``cls`` to be named in a saved file."""
    REBUILDABLE[cls.__name__] = cls
    return cls


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_in(spec: dict, key: str, lo: int, hi: int, where: str) -> None:
    v = spec[key]
    if not _is_int(v) or not lo <= v <= hi:
        raise RebuildError(f"{where}: {key} must be an integer in [{lo}, {hi}], got {short(v)}")


def _number_in(v: Any, key: str, lo: float, hi: float, where: str) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or (isinstance(v, float) and math.isnan(v)) or not lo <= v <= hi:
        raise RebuildError(f"{where}: {key} must be a number in [{lo}, {hi}], got {short(v)}")


def _how(how: Any, key: str, where: str) -> None:
    """A record of how a mask was made: a table; scope/granularity/method text, target a number."""
    if not isinstance(how, dict):
        raise RebuildError(f"{where}: {key} must be a table, got {type(how).__name__}")
    for k in ("scope", "granularity", "method"):
        if how.get(k) is not None and not isinstance(how[k], str):
            raise RebuildError(f"{where}: {key}.{k} must be text, got {short(how[k])}")
    if how.get("target") is not None:
        _number_in(how["target"], f"{key}.target", 0, 1, where)


def _tensor(t: torch.Tensor, name: str, where: str, *, kind: str, ndim: int | None = None,
            shape: torch.Size | None = None) -> None:
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


def _check_weight_mask(spec: dict, tensors: dict, target: torch.Tensor | None, where: str) -> None:
    if "how" in spec:
        _how(spec["how"], "how", where)
    _tensor(tensors["mask"], "mask", where, kind="bool", shape=None if target is None else target.shape)


def _check_kmeans(spec: dict, tensors: dict, target: torch.Tensor | None, where: str) -> None:
    bits = spec.get("bits")
    if bits is not None:
        _int_in(spec, "bits", 1, 16, where)
    centroids, index, mask = tensors["centroids"], tensors["index"], tensors["mask"]
    _tensor(centroids, "centroids", where, kind="float", ndim=1)
    _tensor(mask, "mask", where, kind="bool", shape=None if target is None else target.shape)
    _tensor(index, "index", where, kind="int", shape=mask.shape)
    k = centroids.numel()
    if not 1 <= k <= 2 ** (bits or 16):
        raise RebuildError(f"{where}: {k} centroids, expected 1 to {2 ** (bits or 16)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= k):
        raise RebuildError(f"{where}: index values outside 0..{k - 1} (the centroids)")


def _check_fixed_point(spec: dict, tensors: dict, target: torch.Tensor | None, where: str) -> None:
    from .fixed_point import MAX_FRAC_WIDTH, MAX_WIDTH

    _int_in(spec, "width", 1, MAX_WIDTH, where)
    _int_in(spec, "frac_width", 0, MAX_FRAC_WIDTH, where)


_SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def _check_activation(spec: dict, tensors: dict, target: torch.Tensor | None, where: str) -> None:
    if "channel_dim" in spec:
        _int_in(spec, "channel_dim", -64, 64, where)
    if "channel_how" in spec:
        _how(spec["channel_how"], "channel_how", where)
    stages = spec.get("stages", [])
    if stages is not None:
        if not isinstance(stages, list) or len(stages) > 1000:
            raise RebuildError(f"{where}: stages must be a list of at most 1000 tables")
        for i, stage in enumerate(stages):
            _how(stage, f"stages[{i}]", where)
            if stage.get("rank") not in ("magnitude", "random"):
                raise RebuildError(f"{where}: stages[{i}].rank must be 'magnitude' or 'random', got {short(stage.get('rank'))}")
            _number_in(stage.get("sparsity"), f"stages[{i}].sparsity", 0, 1, where)
            if stage["rank"] == "random":
                seed = stage.get("seed")
                if not _is_int(seed) or not _SEEDS[0] <= seed <= _SEEDS[1]:
                    raise RebuildError(f"{where}: stages[{i}].seed must be a 64-bit integer, got {short(seed)}")
    if tensors.get("channel_mask") is not None:
        _tensor(tensors["channel_mask"], "channel_mask", where, kind="bool", ndim=1)


# class name → (spec keys allowed, spec keys required, tensors allowed, tensors required, value check)
_SCHEMAS: dict[str, tuple[set, set, set, set, Callable]] = {
    "WeightMask": ({"how"}, set(), {"mask"}, {"mask"}, _check_weight_mask),
    "KMeansWeight": ({"bits"}, set(), {"centroids", "index", "mask"}, {"centroids", "index", "mask"}, _check_kmeans),
    "FixedPoint": ({"width", "frac_width"}, {"width", "frac_width"}, set(), set(), _check_fixed_point),
    "ActivationPrune": ({"channel_dim", "stages", "channel_how"}, set(), {"channel_mask"}, set(), _check_activation),
}


def _constructor_args(cls: type[nn.Module]) -> list[inspect.Parameter]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _schema_of(cls: type[nn.Module]) -> tuple[set, set, set, set, Callable | None]:
    """machop's own classes have a schema above; another registered class is checked by its signature."""
    if cls.__name__ in _SCHEMAS and cls.__module__.startswith("machop.nn."):
        return _SCHEMAS[cls.__name__]
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
