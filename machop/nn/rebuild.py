"""The classes a saved file may name, and how one is re-created from a file.

A file holds no code: it names a class registered here (with `rebuildable`)
plus a JSON ``spec`` and tensors. A class is rebuildable when
``cls(**obj.spec(), **own_tensors)`` recreates it, ``own_tensors`` being its
direct parameters and buffers by name. Every class of this package registers
itself on import, so importing ``machop.nn`` is all a reader needs.
"""

from __future__ import annotations

import torch
from torch import nn

REBUILDABLE: dict[str, type[nn.Module]] = {}


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


def rebuild(cls_name: str, spec: dict, state: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    """Re-create a registered class from its spec and the tensors under ``prefix`` in ``state``."""
    if cls_name not in REBUILDABLE:
        raise ValueError(f"saved model names unknown class {cls_name!r}; known: {', '.join(sorted(REBUILDABLE))}")
    if not isinstance(spec, dict):
        raise ValueError(f"the spec of a {cls_name} must be a table, got {type(spec).__name__}")
    tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
    return REBUILDABLE[cls_name](**spec, **tensors)
