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
  convolution or Linear layers' input-channel slices, from the channel
  analysis `analysis.channels.reader_weights`: across BatchNorm, activations,
  pooling, residual adds, concatenation and flatten). Where the channels
  cannot be followed (they reach the model output, or an op the analysis
  does not understand), or nothing reads them, the layer falls back to its
  ``-single`` score and the pass logs it. Following channels runs the model
  once on ``graph.dummy_input`` (or random inputs of
  ``graph.context.dataset_info``'s shape), as coupled pruning does; without
  either, every layer falls back, with a warning.
- ``random``: uniform random scores from a seeded generator (deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from machop.nn import group_scores


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
