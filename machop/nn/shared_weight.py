"""Weight sharing as a parametrization: ``weight = centroids[index] * mask``."""

from __future__ import annotations

import math

import torch
from torch import nn

from .rebuild import RebuildError, Schema, check_int, check_tensor, rebuildable


def index_dtype(n_codes: int) -> torch.dtype:
    """The smallest integer dtype that holds indices ``0 .. n_codes - 1``."""
    if n_codes <= 2**8:
        return torch.uint8
    if n_codes <= 2**15:
        return torch.int16
    return torch.int32


def _check_saved(spec: dict, tensors: dict, target: torch.Tensor | None, where: str) -> None:
    bits = spec.get("bits")
    if bits is not None:
        check_int(spec, "bits", 1, 16, where)
    centroids, index, mask = tensors["centroids"], tensors["index"], tensors["mask"]
    check_tensor(centroids, "centroids", where, kind="float", ndim=1)
    check_tensor(mask, "mask", where, kind="bool", shape=None if target is None else target.shape)
    check_tensor(index, "index", where, kind="int", shape=mask.shape)
    k = centroids.numel()
    if not 1 <= k <= 2 ** (bits or 16):
        raise RebuildError(f"{where}: {k} centroids, expected 1 to {2 ** (bits or 16)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= k):
        raise RebuildError(f"{where}: index values outside 0..{k - 1} (the centroids)")


@rebuildable(schema=Schema(spec=frozenset({"bits"}), tensors=frozenset({"centroids", "index", "mask"}),
                            required_tensors=frozenset({"centroids", "index", "mask"}), check=_check_saved))
class KMeansWeight(nn.Module):
    """Parametrization returning ``centroids[index] * mask``; its input is ignored.

    - ``centroids``: ``nn.Parameter`` [K], fine-tuned by training; autograd of
      ``centroids[index]`` sums the gradient of every weight of a cluster
      (Deep Compression §3.3).
    - ``index``: buffer of the weight's shape, the cluster of each weight,
      stored in the smallest sufficient integer dtype (uint8 up to 256
      clusters). It is converted to int32 at use: indexing with a uint8
      tensor would be *mask* indexing in torch.
    - ``mask``: bool buffer, False where pruned (the weight is exactly 0 and
      belongs to no cluster; its index is 0 and meaningless).
    - ``bits``: the code width the layer was quantized with (``K <= 2**bits``).

    Registered after any prune parametrization, so the original weight stays
    underneath (frozen by the quantize pass) and the chain is saved and
    rebuilt like any other.
    """

    def __init__(self, centroids: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, bits: int | None = None):
        super().__init__()
        if index.shape != mask.shape:
            raise ValueError(f"index shape {tuple(index.shape)} differs from mask shape {tuple(mask.shape)}")
        k = centroids.numel()
        self.bits = int(bits) if bits is not None else max(1, math.ceil(math.log2(max(k, 2))))
        self.centroids = nn.Parameter(centroids.detach().clone().flatten().to(torch.float32))
        self.register_buffer("index", index.to(index_dtype(max(k, 1))))
        self.register_buffer("mask", mask.to(torch.bool))

    def spec(self) -> dict:
        return {"bits": self.bits}

    def forward(self, X: torch.Tensor | None = None) -> torch.Tensor:
        flat = torch.index_select(self.centroids, 0, self.index.flatten().to(torch.int32))
        return flat.view(self.index.shape) * self.mask

    def extra_repr(self) -> str:
        return f"bits={self.bits}, clusters={self.centroids.numel()}, shape={tuple(self.index.shape)}"
