"""Weight sharing as a parametrization: ``weight = round_to(centroids, codebook)[index] * mask``."""

from __future__ import annotations

import math

import torch
from torch import nn

from .compact import FLOAT_FORMATS, check_float_format, round_ste, round_to
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
    if "codebook" in spec:
        check_float_format(spec["codebook"], "codebook", where)
    centroids, index, mask = tensors["centroids"], tensors["index"], tensors["mask"]
    check_tensor(centroids, "centroids", where, kind="float", ndim=1)
    if target is not None and target.is_floating_point() and centroids.dtype != target.dtype:
        raise RebuildError(f"{where}: centroids are {str(centroids.dtype).removeprefix('torch.')}, "
                           f"the weight they make {str(target.dtype).removeprefix('torch.')}")
    check_tensor(mask, "mask", where, kind="bool", shape=None if target is None else target.shape)
    check_tensor(index, "index", where, kind="int", shape=mask.shape)
    k = centroids.numel()
    if not 1 <= k <= 2 ** (bits or 16):
        raise RebuildError(f"{where}: {k} centroids, expected 1 to {2 ** (bits or 16)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= k):
        raise RebuildError(f"{where}: index values outside 0..{k - 1} (the centroids)")


@rebuildable(schema=Schema(spec=frozenset({"bits", "codebook"}), tensors=frozenset({"centroids", "index", "mask"}),
                            required_tensors=frozenset({"centroids", "index", "mask"}), check=_check_saved))
class KMeansWeight(nn.Module):
    """Parametrization returning ``round_to(centroids, codebook)[index] * mask``; its input is ignored.

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
    - ``codebook``: the float format the centroids are stored in, ``"float32"``
      (default: used as they are, in their own dtype), ``"float16"`` or
      ``"bfloat16"``: forward rounds them to it (`machop.nn.compact.round_to`,
      straight-through gradient), so the centroids training fine-tunes are
      always ones the file can hold exactly. The `centroids` parameter keeps
      its dtype (the weight's: float32, float64, float16 or bfloat16, so the
      weight it gives keeps the model's dtype); `codebook_values` are the
      rounded ones, in that dtype.

    Registered after any prune parametrization, so the original weight stays
    underneath (frozen by the quantize pass) and the chain is saved and
    rebuilt like any other.
    """

    def __init__(self, centroids: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, bits: int | None = None,
                 codebook: str = "float32"):
        super().__init__()
        if index.shape != mask.shape:
            raise ValueError(f"index shape {tuple(index.shape)} differs from mask shape {tuple(mask.shape)}")
        if codebook not in FLOAT_FORMATS:
            raise ValueError(f"codebook must be one of {', '.join(FLOAT_FORMATS)}, got {codebook!r}")
        self.codebook = codebook
        k = centroids.numel()
        self.bits = int(bits) if bits is not None else max(1, math.ceil(math.log2(max(k, 2))))
        centroids = centroids.detach().clone().flatten()
        # the weight's dtype (the quantize pass gives them in it; a file gives them as recorded)
        self.centroids = nn.Parameter(centroids if centroids.is_floating_point() else centroids.to(torch.float32))
        self.register_buffer("index", index.to(index_dtype(max(k, 1))))
        self.register_buffer("mask", mask.to(torch.bool))

    def spec(self) -> dict:
        # "codebook" only when it is not float32: a float32 layer's record is what it was before the key existed
        return {"bits": self.bits} if self.codebook == "float32" else {"bits": self.bits, "codebook": self.codebook}

    def codebook_values(self) -> torch.Tensor:
        """The centroids the layer uses: `centroids` rounded to the ``codebook`` format (in their dtype, detached)."""
        return round_to(self.centroids.detach(), self.codebook)

    def forward(self, X: torch.Tensor | None = None) -> torch.Tensor:
        flat = torch.index_select(round_ste(self.centroids, self.codebook), 0, self.index.flatten().to(torch.int32))
        return flat.view(self.index.shape) * self.mask

    def extra_repr(self) -> str:
        book = "" if self.codebook == "float32" else f", codebook={self.codebook}"
        return f"bits={self.bits}, clusters={self.centroids.numel()}{book}, shape={tuple(self.index.shape)}"
