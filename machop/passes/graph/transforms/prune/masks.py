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

from machop.ir.serialize import rebuildable


@rebuildable
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


def apply_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight", how: dict | None = None) -> WeightMask:
    """Prune ``module.name`` with ``mask`` (True = keep).

    If the tensor already carries a `WeightMask`, the new mask is ANDed into
    it (iterative pruning never revives a pruned weight); otherwise a new
    parametrization is registered. ``how`` (if given) replaces the record of
    how the mask was made.
    """
    tensor = module.parametrizations[name].original if parametrize.is_parametrized(module, name) else None
    if tensor is None or tensor.shape != mask.shape:  # the original tells shape and device without a forward
        tensor = getattr(module, name)
    if mask.shape != tensor.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {name} shape {tuple(tensor.shape)}")
    mask = mask.to(device=tensor.device, dtype=torch.bool)
    if parametrize.is_parametrized(module, name):
        for p in module.parametrizations[name]:
            if isinstance(p, WeightMask):
                p.mask &= mask
                if how is not None:
                    p.how = dict(how)
                return p
    p = WeightMask(mask, how)
    parametrize.register_parametrization(module, name, p, unsafe=True)
    return p


def remove_masks(module: nn.Module, name: str = "weight") -> None:
    """Bake every parametrization of ``module.name`` into a plain parameter."""
    if parametrize.is_parametrized(module, name):
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
