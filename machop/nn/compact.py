"""Short floats for side data: round a tensor to float16 or bfloat16 in forward, straight-through gradient.

Deep Compression codes the weights; what is left (biases, batch-norm affine
parameters, k-means codebooks) is stored as plain floats. Storing them in 16
bits halves that, and stays bit-exact when the model *uses* exactly the
values that will be stored: `Compact` is a parametrization
(``x -> round_to(x, dtype)``) registered before the last fine-tune, so
training sees the rounded values and adapts to them, and the Huffman coder
stores the rounded value in ``dtype``. Rounding is idempotent
(``round_to(round_to(x)) == round_to(x)``), so a file's 16-bit value, read
back as the original and rounded again in forward, gives the same outputs
bit for bit.

``round_to(x, "float16")`` equals ``x.half().to(x.dtype)`` (round to nearest
even) for every ``x`` within float16's range; a finite value beyond it
saturates to ``±65504`` instead of becoming infinite (NaN and ±inf stay as
they are). bfloat16 has float32's range: ``x.bfloat16().to(x.dtype)``.
The gradient is passed straight through, except where a value saturates.
"""

from __future__ import annotations

import torch
from torch import nn

from .rebuild import RebuildError, Schema, rebuildable, short

SHORT_FLOATS: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
FLOAT_FORMATS = ("float32", *SHORT_FLOATS)  # what a config may name: float32 = leave as it is


def round_to(x: torch.Tensor, dtype: str | torch.dtype) -> torch.Tensor:
    """``x`` rounded to ``dtype`` (float16, bfloat16; float32 = unchanged), in ``x``'s dtype; not differentiable."""
    dt = SHORT_FLOATS[dtype] if isinstance(dtype, str) and dtype in SHORT_FLOATS else dtype
    if dt in ("float32", torch.float32) or not x.is_floating_point() or x.dtype == dt:
        return x
    if dt == torch.float16:
        top = torch.finfo(torch.float16).max
        x = torch.where(x.isfinite(), x.clamp(-top, top), x)
    return x.to(dt).to(x.dtype)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: str) -> torch.Tensor:
        if dtype == "float16":
            top = torch.finfo(torch.float16).max
            ctx.save_for_backward(x.abs() <= top)
        else:
            ctx.save_for_backward(None)
        return round_to(x, dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return (grad if inside is None else grad * inside), None


def round_ste(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """`round_to` with a straight-through gradient (0 where a float16 value saturates)."""
    if dtype == "float32" or not x.is_floating_point():
        return x
    return _RoundSTE.apply(x, dtype)


def check_float_format(value: object, key: str, where: str, short_only: bool = False) -> str:
    """`RebuildError` unless ``value`` names a format of `FLOAT_FORMATS` (`SHORT_FLOATS` if ``short_only``)."""
    allowed = tuple(SHORT_FLOATS) if short_only else FLOAT_FORMATS
    if not isinstance(value, str) or value not in allowed:
        raise RebuildError(f"{where}: {key} must be one of {', '.join(allowed)}, got {short(value)}")
    return value


def _check_saved(spec: dict, tensors: dict, target: torch.Tensor | None, where: str) -> None:
    check_float_format(spec["dtype"], "dtype", where, short_only=True)
    if target is not None and not target.is_floating_point():
        raise RebuildError(f"{where}: a Compact parametrization needs a float tensor, got {target.dtype}")


@rebuildable(schema=Schema(spec=frozenset({"dtype"}), required_spec=frozenset({"dtype"}), check=_check_saved))
class Compact(nn.Module):
    """Parametrization ``x -> round_to(x, dtype)`` (``dtype``: ``"float16"`` or ``"bfloat16"``), straight-through.

    Registered first on a bias or a norm's affine parameter (the quantize
    pass's ``bias`` and ``side`` keys), so the tensor underneath is its
    ``original`` and the Huffman coder stores ``round_to(original)`` in
    ``dtype`` (two bytes an element).
    """

    def __init__(self, dtype: str = "float16"):
        super().__init__()
        if dtype not in SHORT_FLOATS:
            raise ValueError(f"dtype must be one of {', '.join(SHORT_FLOATS)}, got {dtype!r}")
        self.dtype = dtype

    def spec(self) -> dict:
        return {"dtype": self.dtype}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return round_ste(x, self.dtype)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"
