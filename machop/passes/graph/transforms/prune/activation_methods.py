"""Activation pruning: how each method scores a layer's input (the module itself is `machop.nn.ActivationPrune`).

Activation pruning zeroes part of the *input* of a layer (a convolution,
Linear, attention or RNN node; see `machop.nn.KINDS`). The
pass inserts one `ActivationPrune` module in front of each pruned layer
(``graph.insert_before(layer_node, 0, ...)``), so it is visible in
``print(graph)``, saved with the graph and removable. A second prune pass on
the same layer adds to that module instead of inserting another one.

The module applies, in order:

1. a static **channel mask** (``channelwise`` methods, calibrated on data):
   input channel ``c`` (dim 1 of a convolution's input, the last dim of a Linear
   input) is zeroed for every sample;
2. per-sample **elementwise stages** (``elementwise`` methods): for each
   sample, exactly ``round(sparsity * n)`` of its ``n`` input values are
   zeroed, the lowest-ranked ones. Positions already zeroed by the channel
   mask or an earlier stage rank lowest, so they count towards the target.

Methods (`ACTIVATION_METHODS`; the first listed per granularity is the default):

- local elementwise ``l1-norm`` / ``l2-norm``: rank by |x| per sample (the L1
  and L2 norms of a scalar are both |x|, so the two names rank identically by
  definition). No data needed.
- local elementwise ``random``: a fixed random set of positions per layer,
  drawn from the stage's seed (the same positions for every sample and call:
  deterministic). No data needed.
- local channelwise ``feature-map-l1-norm`` / ``feature-map-l2-norm``: drop
  the input channels whose feature maps have the smallest L1 / L2 norm over
  the calibration batch (all samples and positions of that channel).
- local channelwise ``feature-map-similarity``: drop channels whose feature
  map is most similar (cosine, each channel's vector taken over batch and
  positions of that channel only) to a channel that is kept: greedily remove
  the live channel with the highest similarity to another live channel.
  All-zero (dead or already pruned) channels go first.
- global elementwise ``l1-norm`` (and ``l2-norm``, identical by definition):
  one |x| threshold over all pruned layers' inputs on the calibration data
  decides how many values each layer loses per sample; the layers then prune
  that many per sample exactly, so the total is exactly
  ``round(sparsity * sum of input sizes)`` per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from machop.nn import prune_count


# --------------------------------------------------------------------------- calibration statistics


def _channels_first(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``(C, batch × positions)``: each channel's values over the batch and positions, never mixed."""
    x = x.detach().movedim(channel_dim, 0)
    return x.reshape(x.shape[0], -1)


class FeatureMapNorm:
    """Accumulates each input channel's p-norm over all calibration samples and positions."""

    def __init__(self, p: float):
        self.p = p
        self.acc: torch.Tensor | None = None

    def update(self, x: torch.Tensor, channel_dim: int) -> None:
        v = _channels_first(x, channel_dim).double().abs().pow(self.p).sum(dim=1).cpu()
        self.acc = v if self.acc is None else self.acc + v

    @property
    def channels(self) -> int:
        return self.acc.shape[0]

    def scores(self, pruned: torch.Tensor, k: int) -> torch.Tensor:
        return self.acc.pow(1.0 / self.p)


class FeatureMapSimilarity:
    """Accumulates the Gram matrix of the channels' feature maps; scores = greedy removal order.

    The Gram matrix is float64 up to `FLOAT64_UP_TO` channels and float32
    beyond (a Linear layer reading 8192 flattened features would need 512 MB).
    """

    FLOAT64_UP_TO = 2048

    def __init__(self):
        self.gram: torch.Tensor | None = None

    def update(self, x: torch.Tensor, channel_dim: int) -> None:
        v = _channels_first(x, channel_dim)
        v = v.double() if v.shape[0] <= self.FLOAT64_UP_TO else v.float()
        g = v @ v.T
        g = ((g + g.T) / 2).cpu()  # exactly symmetric, so a pair's two members tie exactly
        self.gram = g if self.gram is None else self.gram.add_(g)

    @property
    def channels(self) -> int:
        return self.gram.shape[0]

    def scores(self, pruned: torch.Tensor, k: int) -> torch.Tensor:
        """Lower score = removed earlier; the ``k`` lowest are the first ``k`` greedy removals.

        Greedy: repeatedly remove the live channel whose cosine similarity to
        some other live channel is highest (ties: lower index). Each channel's
        best live partner is cached and recomputed only when that partner is
        removed, so a step costs O(C) instead of O(C²).
        """
        c = self.gram.shape[0]
        norms = self.gram.diagonal().clamp_min(0).sqrt()
        alive = (norms > 0) & ~pruned.cpu()
        order = torch.full((c,), float(c), dtype=torch.float64)
        step = 0
        for i in (~alive).nonzero().flatten().tolist():  # dead or already pruned: first, in index order
            order[i] = step
            step += 1
        if step >= k or int(alive.sum()) < 2:
            return order
        inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
        sim = self.gram.mul_(torch.outer(inv, inv))  # cosine similarity (symmetric), in place: used once
        sim.fill_diagonal_(float("-inf"))
        sim.masked_fill_(~alive[None, :], float("-inf"))
        best, partner = sim.max(dim=1)
        best.masked_fill_(~alive, float("-inf"))
        while step < k and int(alive.sum()) > 1:
            r = int(torch.argmax(best))  # first maximum: ties go to the lower index
            order[r] = step
            step += 1
            alive[r] = False
            best[r] = float("-inf")
            sim[:, r] = float("-inf")
            stale = (partner == r) & alive
            if stale.any():
                best[stale], partner[stale] = sim[stale].max(dim=1)
        return order


class MagnitudeSample:
    """A deterministic strided sample of |x| per calibration sample, for the global threshold."""

    def __init__(self, budget_per_sample: int = 4096):
        self.budget = max(1, budget_per_sample)
        self.values: list[torch.Tensor] = []
        self.numel = 0  # input values per sample
        self.samples = 0

    def update(self, x: torch.Tensor, channel_dim: int) -> None:
        flat = x.detach().reshape(x.shape[0], -1)
        self.numel = flat.shape[1]
        stride = math.ceil(self.numel / self.budget)
        self.values.append(flat[:, ::stride].abs().float().cpu().reshape(-1))
        self.samples += x.shape[0]

    @property
    def weight(self) -> float:
        """How many input values each sampled value stands for."""
        taken = sum(v.numel() for v in self.values)
        return self.numel * self.samples / taken


def allocate_global(samples: list[MagnitudeSample], sparsity: float) -> list[int]:
    """Per-layer counts ``k_l`` (values pruned per sample) from one |x| threshold over all layers.

    The threshold is the weighted ``sparsity``-quantile of the pooled samples;
    each layer's expected count below it is rounded by largest remainder so
    that ``sum(k_l) == round(sparsity * sum(n_l))`` exactly.
    """
    numels = [s.numel for s in samples]
    total_k = prune_count(sparsity, sum(numels))
    values = torch.cat([torch.cat(s.values) for s in samples])
    weights = torch.cat([torch.full((sum(v.numel() for v in s.values),), s.weight, dtype=torch.float64) for s in samples])
    layer = torch.cat([torch.full((sum(v.numel() for v in s.values),), i) for i, s in enumerate(samples)])
    order = torch.sort(values, stable=True).indices
    cum = weights[order].cumsum(0)
    below = int(torch.searchsorted(cum, sparsity * float(cum[-1]), right=True))
    share = torch.zeros(len(samples), dtype=torch.float64).index_add_(0, layer[order[:below]], weights[order[:below]])
    expected = [float(share[i]) / samples[i].samples for i in range(len(samples))]
    counts = [min(n, int(math.floor(e))) for e, n in zip(expected, numels)]
    left = total_k - sum(counts)
    by_remainder = sorted(range(len(samples)), key=lambda i: (-(expected[i] - math.floor(expected[i])), i))
    while left > 0:  # largest remainder first; layers that are full are skipped
        progressed = False
        for i in by_remainder:
            if left == 0:
                break
            if counts[i] < numels[i]:
                counts[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return counts  # the floors sum to at most floor(sparsity * N) <= total_k, so left was never negative


# --------------------------------------------------------------------------- the method table


@dataclass(frozen=True)
class ActivationMethod:
    """How a method prunes: a per-sample ``rank`` stage and/or a data ``calibrator``."""

    rank: str | None = None  # "magnitude" | "random": per-sample elementwise stage
    calibrator: Callable[[], object] | None = None  # None: needs no data

    @property
    def needs_data(self) -> bool:
        return self.calibrator is not None


ACTIVATION_METHODS: dict[tuple[str, str], dict[str, ActivationMethod]] = {
    ("local", "elementwise"): {
        "l1-norm": ActivationMethod(rank="magnitude"),
        "l2-norm": ActivationMethod(rank="magnitude"),
        "random": ActivationMethod(rank="random"),
    },
    ("local", "channelwise"): {
        "feature-map-l1-norm": ActivationMethod(calibrator=partial(FeatureMapNorm, p=1)),
        "feature-map-l2-norm": ActivationMethod(calibrator=partial(FeatureMapNorm, p=2)),
        "feature-map-similarity": ActivationMethod(calibrator=FeatureMapSimilarity),
    },
    ("global", "elementwise"): {
        "l1-norm": ActivationMethod(rank="magnitude", calibrator=MagnitudeSample),
        "l2-norm": ActivationMethod(rank="magnitude", calibrator=MagnitudeSample),
    },
}
