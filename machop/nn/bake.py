"""A compressed model's weights as plain tensors: every parametrization replaced by the value it computes.

A compressed model computes each weight through parametrizations (``weight =
original * mask``, ``centroids[index] * mask``, fixed-point rounding,
`Compact` rounding of a bias). `baked_state` is the state dict a plain model
of the same class takes: one tensor per key, named as in the plain model
(``conv.weight``, never ``parametrizations.weight.original``), holding
exactly the values the compressed model computes with; tensors of the
parametrizations themselves (masks, centroids, index) and of modules a pass
inserted into the graph are left out. `load_baked` loads it into a model of
the user's class; `inserted_modules` names what a plain class cannot hold.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from .rebuild import is_rebuildable


def _plain_modules(model: nn.Module):
    """``(qualname, module)`` of the model's own modules: no parametrization internals, no inserted modules."""
    for qualname, module in model.named_modules(remove_duplicate=False):
        if ".parametrizations." in f".{qualname}." or is_rebuildable(module):
            continue
        yield qualname, module


def inserted_modules(model: nn.Module) -> list[str]:
    """Qualified names of the modules a pass inserted into the graph (activation pruning, input quantizers)."""
    return [q for q, m in model.named_modules() if is_rebuildable(m) and ".parametrizations." not in f".{q}."]


def baked_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain state dict of a compressed ``model``: each parametrized tensor as the value it computes.

    Keys are those of the model without parametrizations; a tensor used at
    several sites (tied) appears under each key with the same value. Values
    are detached; the parametrized ones are computed once each (no_grad), in
    the model's dtype and device.
    """
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for qualname, module in _plain_modules(model):
            prefix = f"{qualname}." if qualname else ""
            for name, p in module._parameters.items():
                if p is not None:
                    state[prefix + name] = p.detach()
            if parametrize.is_parametrized(module):
                for name in module.parametrizations.keys():
                    state[prefix + name] = getattr(module, name).detach().clone()
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent_buffers_set:
                    state[prefix + name] = b.detach()
    return state


def unparametrized_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parametrization taken away: each tensor its ``original`` again.

    ``model`` is untouched. (torch's ``remove_parametrizations`` would delete
    the weight property from the ``Parametrized*`` class the copy shares with
    ``model``; each copied module gets its plain class back instead.) Ties
    stay: sites that shared one ``original`` share its copy.
    """
    new = copy.deepcopy(model)
    for module in list(new.modules()):
        if parametrize.is_parametrized(module):
            originals = {name: plist.original for name, plist in module.parametrizations.items()}
            module.__class__ = type(module).__bases__[0]  # the class parametrize derived Parametrized* from
            del module._modules["parametrizations"]
            module._parameters.update(originals)
    return new


def load_baked(target: nn.Module, state: dict[str, torch.Tensor], source: str = "the compressed model") -> list[str]:
    """Copy ``state`` (`baked_state`) into the plain model ``target``, in place; the keys ``target`` has and
    ``state`` lacks are returned (modules the traced graph never calls keep their values).

    Each of ``target``'s tensors first takes the dtype and device of its
    value in ``state`` (in place, so tied parameters stay one tensor), so the
    plain model computes in the compressed model's dtype. A key of ``state``
    that ``target`` lacks, or a shape that differs, is a one-line
    `ValueError` naming it, raised before anything changes.
    """
    if any(parametrize.is_parametrized(m) for m in target.modules()):
        raise ValueError(f"{type(target).__name__} has parametrizations of its own; give a plain instance")
    own = target.state_dict(keep_vars=True)
    extra = [k for k in state if k not in own]
    if extra:
        raise ValueError(f"{source} has {extra[0]!r}, which {type(target).__name__} does not "
                         f"({len(extra)} such tensor(s)): not the same architecture")
    for key, value in state.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"{key}: {source} has shape {list(value.shape)}, {type(target).__name__} "
                             f"{list(own[key].shape)}: not the same architecture")
    with torch.no_grad():
        for key, value in state.items():
            t = own[key]
            if t.dtype != value.dtype or t.device != value.device:
                t.data = t.data.to(device=value.device, dtype=value.dtype)
            t.copy_(value)
    return [k for k in own if k not in state]
