"""The architecture of a shrunk model: a model resized to the shapes a file records.

The shrink pass (`machop.passes.graph.transforms.shrink`) removes pruned
channels: a registry model comes out with smaller convolution, Linear and
batch-norm layers, and its files record ``"shrunk": true`` next to the
registry name. A file holds no code, so a loader builds the registry model
and resizes those layers to the shapes of the file's tensors
(`registry_skeleton`: on the meta device, every layer at most its registry
size, then compared with the file as strictly as any registry file) before
the usual architecture check and load. `resize_layers` does the resizing
for any model (yours included: `machop.ir.serialize.shrunk_like`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from machop.models import get_model
from machop.nn import channels, kind_of, recorded_channels, resizable, sliced


class ShrunkShapeError(ValueError):
    """A recorded shape that shrinking the layer cannot give (larger, another rank or kernel); one line."""


def _bounded(m: nn.Module, q: str, shape: list[int], has_bias: bool) -> None:
    """`ShrunkShapeError` unless ``shape`` (and the bias) is what shrinking ``m`` can give: same rank and kernel,
    every channel count in [1, the layer's own], a bias kept (one may be added)."""
    w = m.weight
    kind = kind_of(m)
    what = f"layer {q!r} ({type(m).__name__})"
    channel_dims = {kind.channel_dim, kind.in_dim} if kind.flow == "mix" else {0}
    if len(shape) != w.dim() or any(shape[d] != w.shape[d] for d in range(w.dim()) if d not in channel_dims):
        raise ShrunkShapeError(f"{what} has weight {list(w.shape)} but the file records {shape}: a shrunk layer "
                               "only loses channels")
    out, cin = recorded_channels(m, shape)
    has_out, has_in, _ = channels(m)
    for name, got, most in zip(kind.channel_attrs, (out, cin), (has_out, has_in)):
        if not 1 <= got <= most:
            raise ShrunkShapeError(f"{what} has {most} {name} but the file records {got}: a shrunk layer is never "
                                   "larger than the model's")
    if m.bias is not None and not has_bias:
        raise ShrunkShapeError(f"{what} has a bias that the file does not record: shrinking never removes one")


def resize_layers(root: nn.Module, shapes: dict[str, list[int]], bounded: bool = False) -> None:
    """Replace every layer of ``root`` whose channels can be removed (`machop.nn.resizable`: convolutions, Linear,
    batch norm) and whose weight ``shapes`` records otherwise by one of that shape.

    New layers are zeros, on the old one's device and dtype, allocated at the
    new size only. With ``bounded``, a recorded shape must be one shrinking
    the layer can give (`_bounded`: no layer grows), else `ShrunkShapeError`
    naming the layer, before anything changes.
    """
    plan = []
    for q, m in root.named_modules():
        key = f"{q}.weight".lstrip(".")
        if key not in shapes or not resizable(m):
            continue
        shape = shapes[key]
        has_bias = f"{q}.bias".lstrip(".") in shapes
        if list(m.weight.shape) == shape and (m.bias is not None) == has_bias:
            continue
        if bounded:
            _bounded(m, q, shape, has_bias)
        elif len(shape) != m.weight.dim():
            raise ValueError(f"layer {q!r} ({type(m).__name__}) has weight {list(m.weight.shape)}, not {shape}")
        plan.append((q, m, shape, has_bias))
    for q, m, shape, has_bias in plan:
        kind = kind_of(m)
        try:
            if kind.flow == "norm":
                new = sliced(m, torch.arange(shape[0]), torch.arange(shape[0]))
            else:
                new = sliced(m, torch.arange(shape[kind.channel_dim]), torch.arange(shape[kind.in_dim]), bias=has_bias)
        except (ValueError, IndexError, RuntimeError) as e:  # e.g. channels not divisible by groups
            if not bounded:
                raise
            raise ShrunkShapeError(f"layer {q!r} ({type(m).__name__}) cannot take the recorded weight {shape} "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        new.train(m.training)
        with torch.no_grad():
            for t in (*new.parameters(), *new.buffers()):
                if t.dim() > 0:
                    t.zero_()
        parent, _, name = q.rpartition(".")
        root.get_submodule(parent)._modules[name] = new


def registry_skeleton(model_name: str, dataset_info: Any, shrunk_to: list[list] | None = None) -> nn.Module:
    """The registry model ``model_name`` on the **meta** device (no memory), shrunk to the dense signature
    ``shrunk_to`` when given.

    Every resized layer must be one shrinking can give (`resize_layers` with
    ``bounded``: `ShrunkShapeError` naming the layer otherwise); the caller compares
    the result with the file, then builds the real one (`materialize`).
    Errors building the model itself propagate as they are.
    """
    with torch.device("meta"):
        probe = get_model(model_name, dataset_info)
    if shrunk_to is not None:
        resize_layers(probe, {key: list(shape) for key, shape, _ in shrunk_to}, bounded=True)
    return probe


def materialize(model: nn.Module) -> nn.Module:
    """A meta-device model made real on the CPU, every tensor zero (the caller loads a state dict into it).

    Only the model's own (shrunk) sizes are allocated, never the registry's.
    """
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            t.zero_()
    return model
