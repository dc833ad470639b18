"""Pruning masks as parametrizations: ``weight = original * mask``.

The mask is a boolean buffer of the parametrization, so it is part of
``state_dict()``, survives save/load, and training through the
parametrization keeps pruned weights at exactly zero (their gradient is
masked too).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .rebuild import Schema, check_how, check_tensor, rebuildable
from .weights import Weight, register


def _check_saved(spec: dict, tensors: dict, target: torch.Tensor | None, where: str) -> None:
    if "how" in spec:
        check_how(spec["how"], "how", where)
    check_tensor(tensors["mask"], "mask", where, kind="bool", shape=None if target is None else target.shape)


@rebuildable(schema=Schema(spec=frozenset({"how"}), tensors=frozenset({"mask"}), required_tensors=frozenset({"mask"}),
                            check=_check_saved))
class WeightMask(nn.Module):
    """Parametrization ``X -> X * mask`` with ``mask`` a bool buffer of X's shape.

    ``how`` optionally records how the mask was made (scope, granularity,
    method, target sparsity of the latest prune pass), so that
    `add_pruning_metadata` can report it after a save/load round trip. It is
    plain JSON and travels in `spec`; it never changes the forward.
    """

    def __init__(self, mask: torch.Tensor, how: dict | None = None):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).contiguous())  # its own memory: updated in place
        self.how = dict(how) if how else {}

    def spec(self) -> dict:
        return {"how": self.how} if self.how else {}

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return X * self.mask.to(X.dtype)  # several times faster than multiplying by a bool tensor


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The combined (AND) mask of every `WeightMask` on ``module.name``, or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    masks = [p.mask for p in module.parametrizations[name] if isinstance(p, WeightMask)]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def apply_mask(
    target: nn.Module | Weight, mask: torch.Tensor, name: str = "weight", how: dict | None = None
) -> WeightMask:
    """Prune a weight with ``mask`` (True = keep).

    ``target`` is a `Weight` (masked at every site it is used, so a tied
    weight stays tied) or a module (its tensor ``name``). If the tensor
    already carries a `WeightMask`, the new mask is ANDed into it (iterative
    pruning never revives a pruned weight); otherwise a new parametrization
    is registered. ``how`` (if given) replaces the record of how the mask
    was made.
    """
    weight = target if isinstance(target, Weight) else Weight(name, None, [("", target, name)])
    tensor = weight.stored()
    if mask.shape != tensor.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {weight.name} shape {tuple(tensor.shape)}")
    mask = mask.to(device=tensor.device, dtype=torch.bool)
    if parametrize.is_parametrized(weight.module, weight.tensor_name):
        for p in weight.module.parametrizations[weight.tensor_name]:
            if isinstance(p, WeightMask):
                p.mask &= mask
                if how is not None:
                    p.how = dict(how)
                return p
    p = WeightMask(mask, how)
    register(weight, p)
    return p
