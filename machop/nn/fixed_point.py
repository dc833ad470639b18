"""Signed fixed-point arithmetic (MASE's ``integer``): round to nearest, saturate.

A value ``x`` in ``width`` bits with ``frac_width`` fractional bits becomes

    q = clamp(round_half_even(x * 2**frac_width), -2**(width-1), 2**(width-1) - 1)
    y = q * 2**-frac_width

which is ``torch.fake_quantize_per_tensor_affine(x, 2**-frac_width, 0,
-2**(width-1), 2**(width-1) - 1)`` element for element (the tests check it).
Zero maps to zero, so pruned weights stay pruned.

Training uses a straight-through estimator with the same gradient as
fake_quantize: 1 where the rounded value lies inside ``[qmin, qmax]``, 0
where it saturates (the mask is taken on the rounded value, as torch does).

Any float dtype: float32 and float64 tensors are rounded in their own
dtype, float16 and bfloat16 ones in float32 (in float16, ``x *
2**frac_width`` overflows for large ``frac_width``), the result cast back to
the input's dtype. Where the width exceeds that dtype's significant bits
(bfloat16: 9 bits, float16: 12) the grid value ``q * 2**-frac_width`` is
then rounded to the dtype; the quantizer stays idempotent (quantizing its
own output gives it back), so a decoded weight quantizes to itself.

``frac_width`` may exceed ``width``: that is legal fixed point (every
representable value is then smaller than 1/2 in magnitude, with step
``2**-frac_width``), as in MASE. Negative ``frac_width`` is not supported.
Widths are capped at 16 bits: up to that, every grid value is exact in
float32 and the grid (the codebook `weight_codes` hands to the Huffman coder)
has at most 65536 entries.

`auto_frac_width` picks the largest ``frac_width`` whose range holds a
tensor's largest magnitude; ``"auto"`` in a config (`best_frac_width`)
takes, among that one and the next `AUTO_FINER` finer ones, the one with
the least squared error on the tensor (or calibration data), so a layer
keeps its weights instead of rounding them all to zero, and a long tail of
rare large values does not cost every other value its precision. `ChannelFixedPoint` is fixed
point with one ``frac_width`` per output channel (per-channel scales
``2**-frac_width[c]``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .rebuild import RebuildError, Schema, check_int, is_int, rebuildable, short

MAX_WIDTH = 16
MAX_FRAC_WIDTH = 32


def fixed_point_range(width: int) -> tuple[int, int]:
    """``(qmin, qmax)`` of a signed ``width``-bit integer."""
    return -(2 ** (width - 1)), 2 ** (width - 1) - 1


def working(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype fixed point is computed in: float32/float64 as they are, other floats in float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def fixed_point_codes(x: torch.Tensor, width: int, frac_width: int) -> torch.Tensor:
    """The integers ``q`` (as float32 or float64, exact) of ``x`` in ``width.frac_width`` fixed point."""
    qmin, qmax = fixed_point_range(width)
    return torch.round(working(x) * 2.0**frac_width).clamp_(qmin, qmax)


class _FixedPointSTE(torch.autograd.Function):
    """Forward: fixed-point rounding; backward: pass the gradient where not saturated."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, width: int, frac_width: int) -> torch.Tensor:
        qmin, qmax = fixed_point_range(width)
        r = torch.round(working(x) * 2.0**frac_width)
        ctx.save_for_backward((r >= qmin) & (r <= qmax))
        return (r.clamp(qmin, qmax) * 2.0**-frac_width).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def quantize_fixed_point(x: torch.Tensor, width: int, frac_width: int) -> torch.Tensor:
    """Fake-quantize ``x`` to signed fixed point (differentiable, straight-through)."""
    return _FixedPointSTE.apply(x, width, frac_width)


def _check_saved(spec: dict, tensors: dict, target: torch.Tensor | None, where: str) -> None:
    check_int(spec, "width", 1, MAX_WIDTH, where)
    check_int(spec, "frac_width", 0, MAX_FRAC_WIDTH, where)


@rebuildable(schema=Schema(spec=frozenset({"width", "frac_width"}), required_spec=frozenset({"width", "frac_width"}),
                            check=_check_saved))
class FixedPoint(nn.Module):
    """``x -> quantize_fixed_point(x, width, frac_width)``.

    One class for both uses: a parametrization of a weight or bias (registered
    after any prune mask) and a module inserted into the fx graph in front of
    a layer to quantize its input.
    """

    def __init__(self, width: int, frac_width: int):
        super().__init__()
        self.width = int(width)
        self.frac_width = int(frac_width)

    def spec(self) -> dict:
        return {"width": self.width, "frac_width": self.frac_width}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_fixed_point(x, self.width, self.frac_width)

    def extra_repr(self) -> str:
        return f"width={self.width}, frac_width={self.frac_width}"


def auto_frac_width(max_abs: float, width: int) -> int:
    """The largest ``frac_width`` (0..`MAX_FRAC_WIDTH`) whose ``width``-bit range holds ``max_abs`` after rounding.

    ``max_abs`` rounds to at most ``qmax`` when ``max_abs * 2**f < qmax + 0.5``;
    a larger value than ``frac_width = 0`` can hold saturates (the caller
    warns). A zero ``max_abs`` (an all-zero tensor) gets ``width - 1``.
    """
    qmax = fixed_point_range(width)[1]
    if not max_abs > 0:
        return min(width - 1, MAX_FRAC_WIDTH)
    f = int(math.floor(math.log2((qmax + 0.5) / max_abs)))
    while f > 0 and max_abs * 2.0**f >= qmax + 0.5:  # log2's rounding at an exact power of two
        f -= 1
    return max(0, min(f, MAX_FRAC_WIDTH))


AUTO_FINER = 3  # "auto" also tries this many finer widths than the one that holds the range (clipping the top)


def auto_candidates(max_abs: float, width: int) -> list[int]:
    """The frac widths ``"auto"`` chooses among: the one that holds ``max_abs`` and up to `AUTO_FINER` finer ones."""
    f0 = auto_frac_width(max_abs, width)
    return list(range(f0, min(f0 + AUTO_FINER, MAX_FRAC_WIDTH) + 1))


def squared_errors(x: torch.Tensor, width: int, fracs: list[int]) -> list[float]:
    """The summed squared error of ``x`` in ``width``-bit fixed point at each of ``fracs`` (rounding and saturation)."""
    v = working(x.detach())
    out = []
    for f in fracs:
        q = fixed_point_codes(v, width, f) * 2.0**-f  # exact: a grid value, in v's dtype
        out.append(float(((q - v) ** 2).sum(dtype=torch.float64)))
    return out


def best_frac_width(x: torch.Tensor, width: int) -> int:
    """``"auto"`` for a tensor at hand: among `auto_candidates` of its largest magnitude, the frac width with the
    least squared error (a finer step may pay for clipping a few large values); ties go to the coarser."""
    max_abs = float(x.detach().abs().max()) if x.numel() else 0.0
    fracs = auto_candidates(max_abs, width)
    errors = squared_errors(x, width, fracs)
    return fracs[min(range(len(fracs)), key=lambda i: (errors[i], i))]


def channel_max_abs(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The largest magnitude in each slice of ``x`` along ``dim`` (float64, one per channel)."""
    moved = working(x.detach()).movedim(dim, 0)
    return moved.reshape(moved.shape[0], -1).abs().amax(dim=1).double() if moved.numel() else torch.zeros(
        moved.shape[0], dtype=torch.float64)


def _check_channel_saved(spec: dict, tensors: dict, target: torch.Tensor | None, where: str) -> None:
    check_int(spec, "width", 1, MAX_WIDTH, where)
    fracs, dim = spec["frac_widths"], spec["dim"]
    if not isinstance(fracs, list) or not fracs or not all(is_int(f) and 0 <= f <= MAX_FRAC_WIDTH for f in fracs):
        raise RebuildError(f"{where}: frac_widths must be a non-empty list of integers in [0, {MAX_FRAC_WIDTH}], "
                           f"got {short(fracs)}")
    if not is_int(dim) or not 0 <= dim <= 8:
        raise RebuildError(f"{where}: dim must be an integer in [0, 8], got {short(dim)}")
    if target is not None and (target.dim() <= dim or target.shape[dim] != len(fracs)):
        raise RebuildError(f"{where}: {len(fracs)} frac_widths for a tensor of shape {list(target.shape)} (dim {dim})")


@rebuildable(schema=Schema(spec=frozenset({"width", "frac_widths", "dim"}),
                           required_spec=frozenset({"width", "frac_widths", "dim"}), check=_check_channel_saved))
class ChannelFixedPoint(nn.Module):
    """Signed fixed point with one ``frac_width`` per channel of dimension ``dim`` (per-channel power-of-two scales).

    A weight parametrization (registered after any prune mask: zeros stay
    zero); channel ``c`` is ``quantize_fixed_point`` at ``frac_widths[c]``.
    """

    def __init__(self, width: int, frac_widths: list[int], dim: int = 0):
        super().__init__()
        self.width = int(width)
        self.frac_widths = [int(f) for f in frac_widths]
        self.dim = int(dim)

    def spec(self) -> dict:
        return {"width": self.width, "frac_widths": list(self.frac_widths), "dim": self.dim}

    def scales(self, x: torch.Tensor) -> torch.Tensor:
        """``2**frac_widths`` shaped to broadcast against ``x`` along ``dim``."""
        shape = [1] * x.dim()
        shape[self.dim] = len(self.frac_widths)
        return torch.tensor([2.0**f for f in self.frac_widths], dtype=working(x).dtype, device=x.device).view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.dim] != len(self.frac_widths):
            raise ValueError(f"ChannelFixedPoint: {len(self.frac_widths)} frac widths for {x.shape[self.dim]} channels")
        scale = self.scales(x)
        return (quantize_fixed_point(working(x) * scale, self.width, 0) / scale).to(x.dtype)

    def extra_repr(self) -> str:
        low, high = min(self.frac_widths), max(self.frac_widths)
        return f"width={self.width}, frac_widths={low}..{high} over {len(self.frac_widths)} channels, dim={self.dim}"
