"""A quantized weight as codes into a codebook: what the Huffman coder stores.

`weight_codes` reads a quantized tensor as ``codebook[codes] * mask``;
`load_weight_codes` writes such codes back into a module whose
parametrizations were rebuilt (with placeholder tensors) from a saved
structure, so the module becomes bit-identical to the one that was read.

- k-means layers: ``codebook`` = the centroids as the layer uses them (rounded
  to its codebook format, `KMeansWeight.codebook_values`, in the centroids'
  dtype: the weight's), ``codes`` = the cluster index; ``codebook_format``
  names the float format every entry is exact in (what the Huffman coder
  stores them as): the ``codebook`` spec's short float, else the centroids'
  own dtype (`codebook_format`).
- integer layers: ``codebook = arange(-2**(w-1), 2**(w-1)) * 2**-frac``
  (the whole fixed-point grid, float32), ``codes = q + 2**(w-1)``; the weight
  is that grid value cast to the weight's dtype (exact, except where a
  bfloat16 or float16 weight has fewer significant bits than the width: then
  it is the value `FixedPoint` rounds to, which is what the cast gives).

In both, the weight is exactly ``(codebook[codes] * mask).to(weight dtype)``.

``mask`` is the prune mask (all True for an unpruned layer: its zeros are
then ordinary values); codes at masked-out positions are meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .masks import WeightMask, get_mask

from .fixed_point import FixedPoint, fixed_point_codes, fixed_point_range
from .shared_weight import KMeansWeight, index_dtype


@dataclass
class WeightCodes:
    codes: torch.Tensor  # int64, shape of the weight; index into codebook (any value, e.g. 0, where mask is False)
    codebook: torch.Tensor  # [K]; k-means: the weight's dtype, integer: float32 (see the module docstring)
    mask: torch.Tensor  # bool, shape of the weight; False = pruned (weight exactly 0)
    bits: int  # bits per code, K <= 2**bits
    kind: str  # "kmeans" | "integer"
    codebook_format: str = "float32"  # every codebook entry is exact in it: float32 | float64 | float16 | bfloat16


def fixed_point_grid(width: int, frac_width: int) -> torch.Tensor:
    """Every value of signed ``width.frac_width`` fixed point, ascending (float32)."""
    qmin, qmax = fixed_point_range(width)
    return torch.arange(qmin, qmax + 1, dtype=torch.float32) * 2.0**-frac_width


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``: how files and reports name a dtype."""
    return str(dtype).removeprefix("torch.")


def codebook_format(codebook: str, centroids_dtype: str) -> str:
    """The format a k-means layer's codebook is exact in (and stored in): its ``codebook`` spec, ``"float32"``
    meaning "as the centroids are", i.e. their dtype (``centroids_dtype``, named as `dtype_name` does)."""
    return centroids_dtype if codebook == "float32" else codebook


def quantizer_of(module: nn.Module, name: str = "weight") -> KMeansWeight | FixedPoint | None:
    """The `KMeansWeight` or `FixedPoint` parametrization of ``module.name``, or None.

    Raises ValueError if it is not the last parametrization of the chain (then
    the tensor would not be the quantized value).
    """
    if not parametrize.is_parametrized(module, name):
        return None
    chain = list(module.parametrizations[name])
    found = [i for i, p in enumerate(chain) if isinstance(p, (KMeansWeight, FixedPoint))]
    if not found:
        return None
    if found[-1] != len(chain) - 1:
        later = type(chain[found[-1] + 1]).__name__
        raise ValueError(f"{name}: {type(chain[found[-1]]).__name__} is followed by {later}; it must come last")
    return chain[found[-1]]


def weight_codes(module: nn.Module, name: str = "weight") -> WeightCodes | None:
    """The codes of quantized ``module.name``; None if it is not quantized."""
    q = quantizer_of(module, name)
    if q is None:
        return None
    with torch.no_grad():
        weight = getattr(module, name).detach()
        if isinstance(q, KMeansWeight):
            codes = WeightCodes(
                codes=q.index.long().clone(), codebook=q.codebook_values().clone(),
                mask=q.mask.clone(), bits=q.bits, kind="kmeans",
                codebook_format=codebook_format(q.codebook, dtype_name(q.centroids.dtype)),
            )
        else:
            mask = get_mask(module, name)
            mask = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask.clone()
            q_int = fixed_point_codes(weight, q.width, q.frac_width)
            codes = WeightCodes(
                codes=(q_int.long() - fixed_point_range(q.width)[0]),
                codebook=fixed_point_grid(q.width, q.frac_width).to(weight.device),
                mask=mask, bits=q.width, kind="integer",
            )
        if not torch.equal((codes.codebook[codes.codes] * codes.mask).to(weight.dtype), weight):
            raise ValueError(f"{name} is not codebook[codes] * mask; was the chain changed after quantization?")
    return codes


def load_weight_codes(module: nn.Module, codes: WeightCodes, name: str = "weight") -> None:
    """Write ``codes`` into the existing parametrizations of ``module.name``.

    Sets the original tensor to ``codebook[codes] * mask``, every `WeightMask`
    to ``mask`` and, for k-means, the `KMeansWeight`'s centroids (in the dtype
    they have), index and mask (placeholder shapes are replaced). Afterwards
    ``module.name`` equals ``codebook[codes] * mask`` in the weight's dtype
    exactly.
    """
    q = quantizer_of(module, name)
    if q is None:
        raise ValueError(f"{name} of {type(module).__name__} has no quantizer parametrization to load codes into")
    chain = module.parametrizations[name]
    original = chain.original
    dev = original.device
    mask = codes.mask.to(device=dev, dtype=torch.bool)
    # k-means: in the centroids' dtype (a file's codebook is exact in it); fixed point: the float32 grid
    dtype = q.centroids.dtype if isinstance(q, KMeansWeight) else torch.float32
    codebook = codes.codebook.to(device=dev, dtype=dtype)
    idx = codes.codes.to(dev)
    if idx.shape != original.shape or mask.shape != original.shape:
        raise ValueError(f"codes/mask shape {tuple(idx.shape)} do not match {name} shape {tuple(original.shape)}")
    if isinstance(q, KMeansWeight):
        if codes.kind != "kmeans":
            raise ValueError(f"{name} is k-means quantized but the codes are {codes.kind!r}")
        q.centroids.data = codebook.clone()
        q.index = idx.to(index_dtype(max(codebook.numel(), 1)))
        q.mask = mask.clone()
        q.bits = int(codes.bits)
    else:
        if codes.kind != "integer":
            raise ValueError(f"{name} is fixed-point quantized but the codes are {codes.kind!r}")
        if codes.bits != q.width or not torch.equal(codebook, fixed_point_grid(q.width, q.frac_width).to(dev)):
            raise ValueError(f"codes are not on the {q.width}.{q.frac_width} fixed-point grid of {name}")
    for p in chain:
        if isinstance(p, WeightMask):
            p.mask = mask.clone()
    with torch.no_grad():
        original.copy_((codebook[idx] * mask).to(original.dtype))
    if isinstance(q, KMeansWeight):
        original.requires_grad_(False)
