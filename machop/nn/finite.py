"""Non-finite weights: a NaN or infinity anywhere in a model is refused, naming the tensor.

One NaN in a layer makes k-means put every weight of it into a NaN
centroid and makes integer codes meaningless (a NaN cast to an integer is
the smallest int64), so files handed in and models given to the
quantize and Huffman passes are checked first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn


class NonFiniteError(ValueError):
    """A model or file holds a NaN or an infinity; ``str(err)`` is one line naming the first such tensor."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


def _named(tensors: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]):
    if isinstance(tensors, nn.Module):
        return tensors.state_dict(keep_vars=True).items()
    if isinstance(tensors, Mapping):
        return tensors.items()
    return tensors


def first_non_finite(
    tensors: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
) -> tuple[str, int, int, str] | None:
    """``(name, count, numel, what)`` of the first floating-point tensor holding a NaN or an infinity, or None.

    ``tensors``: a model (its ``state_dict``: parameters, buffers, the
    originals behind parametrizations), a mapping or ``(name, tensor)``
    pairs. ``what`` is ``"NaN"``, ``"inf"`` or ``"NaN and inf"``. Integer
    and boolean tensors cannot hold either and are skipped.
    """
    for name, t in _named(tensors):
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()) or t.is_meta:
            continue
        t = t.detach()
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            nan = bool(torch.isnan(t).any())
            inf = bool(torch.isinf(t).any())
            what = "NaN and inf" if nan and inf else "NaN" if nan else "inf"
            return name, int(bad.sum()), t.numel(), what
    return None


def require_finite(
    tensors: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], source: str = "model",
) -> None:
    """Raise `NonFiniteError` naming the first tensor of ``tensors`` that holds a NaN or an infinity.

    ``source`` starts the message (a file's path, or the pass that refuses):
    ``"m.ckpt: tensor fc1.weight holds NaN (1 of 30000 values); ..."``.
    """
    found = first_non_finite(tensors)
    if found is not None:
        name, count, numel, what = found
        raise NonFiniteError(f"{source}: tensor {name} holds {what} ({count} of {numel} values); only finite weights "
                             "can be trained, quantized or coded", name)
