"""Weight pruning methods: how each (scope, granularity, method) scores groups of a weight.

A *granularity* says what a group is (`group_view`):

- ``elementwise``: one weight (every kind of weight);
- ``kernelwise``: one kernel ``W[a, b]`` of a convolution (Conv1d/2d/3d and
  ConvTranspose; other kinds have no kernels: a config error unless the
  layer is excluded or not selected);
- ``channelwise``: one output channel: a convolution's filter, a Linear
  row, a transposed convolution's ``W[:, o]`` (embeddings, attention and
  RNN weights have no channels: a config error likewise).

A *method* gives each group a score (`WEIGHT_METHODS`); the lowest scores are
pruned by `ranking.lowest_k_mask`, exactly ``round(sparsity * groups)`` of
them. All norm methods share `group_scores` and only vary ``p``:

- ``l1-norm`` / ``l2-norm`` (elementwise): |w|. The L1 and L2 norms of a
  single scalar are both |w|, so the two names rank identically by
  definition; both are kept for configs written for the seed.
- ``l1-norm`` / ``l2-norm`` (kernelwise): the kernel's L1 / L2 norm.
- ``l1-norm-single`` / ``l2-norm-single`` (channelwise): the filter's norm
  (``l2-norm-single`` is ``torch.nn.utils.prune.ln_structured(n=2, dim=0)``).
- ``l1-norm-multi`` / ``l2-norm-multi`` (channelwise): the filter's norm times
  the norm of the weights that *read* that channel downstream (the next
  convolution or Linear layers' input-channel slices, found through the fx graph
  across BatchNorm, activations, pooling, residual adds and flatten). A
  channel that nothing downstream uses scores 0 and is pruned first. Where
  the graph cannot be followed (the channel reaches the model output, or an
  op that mixes channels), the layer falls back to its ``-single`` score
  and the pass logs it.
- ``random``: uniform random scores from a seeded generator (deterministic).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from machop.nn import ActivationPrune, group_scores


def group_view(w: torch.Tensor, granularity: str, channel_dim: int | None) -> torch.Tensor:
    """``w`` as ``(groups, group_size)``: one row per weight, kernel or output channel."""
    if granularity == "elementwise":
        return w.reshape(-1, 1)
    if granularity == "kernelwise":
        if w.dim() < 3:
            raise ValueError(f"kernelwise pruning needs a convolution weight, got shape {tuple(w.shape)}")
        return w.reshape(w.shape[0] * w.shape[1], -1)
    moved = w.movedim(channel_dim, 0)
    return moved.reshape(moved.shape[0], -1)


def expand_keep(keep: torch.Tensor, shape: torch.Size, granularity: str, channel_dim: int | None) -> torch.Tensor:
    """A per-group keep vector back to a mask of the weight's ``shape`` (the inverse of `group_view`)."""
    if granularity != "channelwise" or channel_dim == 0:
        rows = keep.numel()
        return keep[:, None].expand(rows, shape.numel() // rows).reshape(shape).contiguous()
    moved = list(shape)
    moved.insert(0, moved.pop(channel_dim))
    mask = keep[:, None].expand(moved[0], shape.numel() // moved[0]).reshape(moved)
    return mask.movedim(0, channel_dim).contiguous()


@dataclass
class WeightLayer:
    """What a scorer may look at for one layer."""

    name: str  # node name
    weight: torch.Tensor  # effective weight (masks and other parametrizations applied), detached
    generator: torch.Generator  # for random methods (CPU, seeded by the pass)
    downstream: torch.Tensor | None = None  # (out_channels, S): weights reading each output channel, or None


def norm_scores(groups: torch.Tensor, layer: WeightLayer, p: float) -> torch.Tensor:
    """Each group's p-norm."""
    return group_scores(groups, p)


def random_scores(groups: torch.Tensor, layer: WeightLayer) -> torch.Tensor:
    """Seeded uniform random scores (drawn on CPU so every device gives the same mask)."""
    return torch.rand(groups.shape[0], generator=layer.generator).to(groups.device)


def multi_layer_scores(groups: torch.Tensor, layer: WeightLayer, p: float) -> torch.Tensor:
    """Filter p-norm × p-norm of the downstream weights reading the channel (see module doc)."""
    own = group_scores(groups, p)
    if layer.downstream is None:
        return own
    return own * group_scores(layer.downstream.to(own.dtype), p)


Scorer = Callable[[torch.Tensor, WeightLayer], torch.Tensor]

# (scope, granularity) → method → scorer. The first method listed is the default.
WEIGHT_METHODS: dict[tuple[str, str], dict[str, Scorer]] = {
    ("local", "elementwise"): {
        "l1-norm": partial(norm_scores, p=1),
        "l2-norm": partial(norm_scores, p=2),
        "random": random_scores,
    },
    ("local", "kernelwise"): {
        "l1-norm": partial(norm_scores, p=1),
        "l2-norm": partial(norm_scores, p=2),
    },
    ("local", "channelwise"): {
        "l1-norm-single": partial(norm_scores, p=1),
        "l2-norm-single": partial(norm_scores, p=2),
        "l1-norm-multi": partial(multi_layer_scores, p=1),
        "l2-norm-multi": partial(multi_layer_scores, p=2),
    },
    ("global", "elementwise"): {
        "l1-norm": partial(norm_scores, p=1),
        "l2-norm": partial(norm_scores, p=2),
        "random": random_scores,
    },
}

NEEDS_DOWNSTREAM = {"l1-norm-multi", "l2-norm-multi"}


# --------------------------------------------------------------------------- following channels through the graph

_CHANNEL_WISE_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.MaxPool1d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool3d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity,
)
_CHANNEL_WISE_FUNCTIONS = {
    operator.add, operator.iadd, operator.mul, torch.add, torch.relu, F.relu, F.relu6, F.leaky_relu, F.gelu,
    F.silu, torch.sigmoid, torch.tanh, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    F.dropout, F.dropout2d,
}
_CHANNEL_WISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "add", "add_", "contiguous", "clone"}
_FLATTEN_FUNCTIONS = {torch.flatten}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_SHAPE_ONLY_METHODS = {"size", "dim"}


def _is_channel_wise_module(module: nn.Module) -> bool:
    # inserted activation-prune modules mask channels but keep the layout
    if isinstance(module, (*_CHANNEL_WISE_MODULES, ActivationPrune)):
        return True
    return isinstance(module, nn.Sequential) and len(module) == 0


def _channel_flow(n: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """How channels pass node ``n``: "consumer" (a convolution or Linear reads them), "flatten", "through"
    (channel-preserving), "ignore" (shape queries), or None (unknown op or the model output)."""
    if n.op == "call_module":
        m = modules[n.target]
        if isinstance(m, _CONSUMERS):
            return "consumer"
        if isinstance(m, nn.Flatten):
            return "flatten"
        return "through" if _is_channel_wise_module(m) else None
    if n.op == "call_function":
        if n.target is getattr:
            return "ignore"
        if n.target in _FLATTEN_FUNCTIONS:
            return "flatten"
        return "through" if n.target in _CHANNEL_WISE_FUNCTIONS else None
    if n.op == "call_method":
        if n.target in _SHAPE_ONLY_METHODS:
            return "ignore"
        if n.target in _FLATTEN_METHODS:
            return "flatten"
        return "through" if n.target in _CHANNEL_WISE_METHODS else None
    return None


_CONSUMERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def downstream_consumers(node: fx.Node, modules: dict[str, nn.Module]) -> list[tuple[fx.Node, bool]] | None:
    """The convolution/Linear nodes that read ``node``'s output channels, each with whether it was flattened on the way.

    Follows channel-preserving ops (see module doc). Returns None when a path
    leaves the known ops or reaches the model output.
    """
    found: list[tuple[fx.Node, bool]] = []
    seen: set[tuple[str, bool]] = set()
    stack = [(user, False) for user in node.users]
    while stack:
        n, flat = stack.pop()
        if (n.name, flat) in seen:
            continue
        seen.add((n.name, flat))
        flow = _channel_flow(n, modules)
        if flow is None:
            return None
        if flow == "consumer":
            found.append((n, flat))
        elif flow in ("flatten", "through"):
            stack.extend((u, flat or flow == "flatten") for u in n.users)
    return found or None


def _reader_slices(module: nn.Module, channels: int, flat: bool) -> torch.Tensor | None:
    """``(channels, S)``: the effective weights of ``module`` that read each input channel, or None."""
    w = module.weight.detach()
    if not isinstance(module, nn.Linear):  # a convolution
        if flat or module.groups != 1 or w.shape[1] != channels:
            return None
        return w.transpose(0, 1).reshape(channels, -1)
    # Linear: columns; after a flatten each channel owns a contiguous block of in_features // channels columns
    if w.shape[1] % channels != 0 or (not flat and w.shape[1] != channels):
        return None
    per = w.shape[1] // channels
    return w.reshape(w.shape[0], channels, per).transpose(0, 1).reshape(channels, -1)


def downstream_weights(node: fx.Node, modules: dict[str, nn.Module], channels: int) -> torch.Tensor | None:
    """All downstream weights that read each of the ``channels`` outputs of ``node``'s layer, ``(C, S)``; None if unknown."""
    consumers = downstream_consumers(node, modules)
    if consumers is None:
        return None
    slices = []
    for consumer, flat in consumers:
        s = _reader_slices(modules[consumer.target], channels, flat)
        if s is None:
            return None
        slices.append(s)
    return torch.cat(slices, dim=1)
