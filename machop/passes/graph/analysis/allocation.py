"""Per-layer allocation: one option per layer (a sparsity, a bit width) that meets a budget at the least accuracy cost.

Deep Compression picks each layer's sparsity by hand from its sensitivity
curve (§3: "the most sensitive layers are pruned least"). `allocate` does it
from the curves `sensitivity.measure_sensitivity` records: every layer has
options, each with a measured accuracy *loss* (baseline minus the accuracy
with only that layer changed) and a *cost* (kept weights, or estimated
bytes). Among all combinations it picks one that

- keeps the total cost within ``budget`` at the least total loss, or
- keeps the total loss within ``max_loss`` at the least total cost,

exactly (a multiple-choice knapsack solved by dynamic programming over the
budget in `BUCKETS` steps; at the optimum every layer's marginal accuracy
cost per byte is as equal as the options allow). Losses of different
layers are assumed to add up, which holds for
small losses; measured losses are made non-decreasing towards cheaper
options (`monotone_loss`), so noise never makes a cheaper option look better.

The costs of a sparsity are modelled by `kept_bits`: each kept weight costs
its value bits plus the entropy of its position (``H(d) / d`` bits at
density ``d``, what Huffman-coded relative positions of an unstructured mask
take: within 2% on the main job's file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from machop.config import ConfigError, check_range, join

from .sensitivity import Sensitivity

BUCKETS = 4000  # resolution of the budget in the dynamic programme


@dataclass
class Options:
    """One layer's choices: ``values`` (a sparsity or bit width each), their ``loss`` and ``cost``."""

    name: str
    values: list
    loss: np.ndarray  # accuracy lost (baseline - accuracy), >= 0
    cost: np.ndarray  # what the budget counts: kept weights or bytes


class InfeasibleBudget(ValueError):
    """No combination of options meets the budget; ``best`` is the cheapest one."""

    def __init__(self, message: str, best: dict):
        super().__init__(message)
        self.best = best


def monotone_loss(loss: Sequence[float], cost: Sequence[float]) -> np.ndarray:
    """``loss`` clipped at 0 and made non-decreasing as ``cost`` falls (the cheaper, the no better)."""
    loss = np.clip(np.asarray(loss, dtype=np.float64), 0.0, None)
    order = np.argsort(-np.asarray(cost, dtype=np.float64), kind="stable")  # dearest first
    out = np.empty_like(loss)
    out[order] = np.maximum.accumulate(loss[order])
    return out


def position_bits(density: float) -> float:
    """Entropy-coded bits per kept weight of an i.i.d. mask of this density: ``H(d) / d``."""
    if density <= 0.0 or density >= 1.0:
        return 0.0
    return -(density * math.log2(density) + (1 - density) * math.log2(1 - density)) / density


def kept_bits(weights: int, density: float, value_bits: float) -> float:
    """Estimated bits of a weight with ``weights`` elements at ``density``: values plus positions."""
    kept = weights * density
    return kept * (value_bits + position_bits(density))


def interpolate(points: Sequence[tuple[float, float]], xs: np.ndarray) -> np.ndarray:
    """Piecewise-linear ``y(x)`` through ``points`` (sorted by x) at ``xs`` (within the points' range)."""
    px, py = zip(*sorted(points))
    return np.interp(xs, np.asarray(px, dtype=np.float64), np.asarray(py, dtype=np.float64))


def _knapsack(layers: list[Options], objective: str, constraint: str, limit: float) -> list[int] | None:
    """Per layer the option index minimising the total ``objective`` with the total ``constraint`` <= ``limit``.

    Dynamic programming over the constraint in `BUCKETS` steps, each option's
    share rounded up: every answer meets the limit exactly; it may give away
    at most one step per layer. None when nothing fits.
    """
    if limit < 0:
        return None
    unit = max(limit, 1e-12) / BUCKETS
    best = np.zeros(BUCKETS + 1)  # least objective with at most b steps of the constraint spent
    choice = np.zeros((len(layers), BUCKETS + 1), dtype=np.int64)
    for j, o in enumerate(layers):
        spent = np.asarray(getattr(o, constraint), dtype=np.float64)
        steps = np.ceil(np.minimum(spent / unit - 1e-9, BUCKETS + 1)).astype(np.int64)  # beyond the limit: > BUCKETS
        # equal objectives: the option spending less of the constraint wins
        values = np.asarray(getattr(o, objective), dtype=np.float64) + 1e-9 * spent / max(spent.max(), 1e-30)
        new = np.full(BUCKETS + 1, np.inf)
        for k in range(len(values)):
            if steps[k] > BUCKETS:
                continue
            shifted = np.full(BUCKETS + 1, np.inf)
            shifted[steps[k]:] = best[:BUCKETS + 1 - steps[k]] + values[k]
            better = shifted < new - 1e-15
            new[better] = shifted[better]
            choice[j, better] = k
        best = new
    if not np.isfinite(best[-1]):
        return None
    picks, b = [], BUCKETS
    for j in range(len(layers) - 1, -1, -1):
        k = int(choice[j, b])
        picks.append(k)
        b -= int(np.ceil(getattr(layers[j], constraint)[k] / unit - 1e-9))
    return picks[::-1]


def allocate(layers: list[Options], budget: float | None = None, max_loss: float | None = None) -> dict:
    """``{layer name: chosen value}`` within ``budget`` (total cost) or ``max_loss`` (total loss); exactly one.

    Raises `InfeasibleBudget` when no choice fits: even the cheapest options
    cost more than ``budget`` (``.best``: the cheapest choice), or even the
    least lossy lose more than ``max_loss`` (``.best``: the least lossy).
    """
    if (budget is None) == (max_loss is None):
        raise ValueError("give exactly one of budget, max_loss")
    if not layers:
        return {}
    if budget is not None:
        picks = _knapsack(layers, "loss", "cost", budget)
        if picks is None:
            cheapest = {o.name: o.values[int(np.argmin(o.cost))] for o in layers}
            raise InfeasibleBudget(f"even the cheapest options cost {sum(float(o.cost.min()) for o in layers):.6g}, "
                                   f"over the budget of {budget:.6g}", cheapest)
    else:
        picks = _knapsack(layers, "cost", "loss", max_loss)
        if picks is None:
            safest = {o.name: o.values[int(np.argmin(o.loss))] for o in layers}
            raise InfeasibleBudget(f"even the least lossy options lose {sum(float(o.loss.min()) for o in layers):.6g}, "
                                   f"over the limit of {max_loss:.6g}", safest)
    return {o.name: o.values[i] for o, i in zip(layers, picks)}


# --------------------------------------------------------------------------- from sensitivity curves

SPARSITY_STEP = 0.005  # resolution of the sparsities `choose_sparsities` picks from


@dataclass
class PruneTarget:
    """What ``sparsity = "auto"`` aims at (``[passes.prune.weight.auto]``): exactly one of the first four.

    - ``density``: the kept fraction of the pruned weights, all together;
    - ``size``: bytes of the whole model, estimated (`kept_bits` for the
      pruned weights with ``value_bits`` per kept value, every other
      parameter at fp32);
    - ``ratio``: dense fp32 bytes over that size;
    - ``max_acc_drop``: the summed accuracy loss the curves predict (before
      any retraining), as a fraction (0.01 = one point); the smallest size
      within it.

    ``sparsities``, ``samples`` and ``retrain_steps`` set the sensitivity
    measurement (see `sensitivity`; ``retrain_steps`` > 0: each point after a
    short fine-tune, so the choice follows what layers recover, not what they
    lose one-shot); no layer is pruned beyond the largest measured sparsity.
    """

    density: float | None = None
    size: int | None = None
    ratio: float | None = None
    max_acc_drop: float | None = None
    value_bits: float = 5.0
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99])
    samples: int = 2000
    retrain_steps: int = 0

    def validate(self, path: str) -> None:
        given = [k for k in ("density", "size", "ratio", "max_acc_drop") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(path, "give exactly one of density, size, ratio, max_acc_drop"
                                    + (f" (got {', '.join(given)})" if given else ""))
        for key in ("density", "value_bits"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise ConfigError(join(path, key), f"must be > 0, got {getattr(self, key)}")
        check_range(self.density, join(path, "density"), 0, 1)
        check_range(self.size, join(path, "size"), 1, float("inf"))
        check_range(self.ratio, join(path, "ratio"), 1, float("inf"))
        check_range(self.max_acc_drop, join(path, "max_acc_drop"), 0, 1)
        check_range(self.value_bits, join(path, "value_bits"), 0, 32)
        check_range(self.samples, join(path, "samples"), 1, 10_000_000)
        check_range(self.retrain_steps, join(path, "retrain_steps"), 0, 100_000)
        if not self.sparsities:
            raise ConfigError(join(path, "sparsities"), "needs at least one sparsity")
        for i, s in enumerate(self.sparsities):
            check_range(s, join(path, f"sparsities[{i}]"), 0, 1, hi_open=True)

    def describe(self) -> str:
        """``ratio 60 (value_bits 5)``: the target, for logs and reports."""
        key = next(k for k in ("density", "size", "ratio", "max_acc_drop") if getattr(self, k) is not None)
        extra = f" (value_bits {self.value_bits:g})" if key in ("size", "ratio") else ""
        return f"{key} {getattr(self, key):g}{extra}"


def _loss(points: list[tuple[float, float]], start: tuple[float, float], xs: np.ndarray, baseline: float) -> np.ndarray:
    """Accuracy lost at ``xs`` on the curve through ``start`` and the measured ``points`` beyond it."""
    beyond = [p for p in points if p[0] > start[0]]
    return baseline - interpolate([start, *beyond], xs)


def choose_sparsities(sens: Sensitivity, target: PruneTarget, dense_bytes: int, other_bytes: float) -> dict[str, float]:
    """Per measured weight the sparsity that meets ``target`` at the least predicted accuracy loss.

    ``dense_bytes``: the dense model at fp32 (for ``ratio``); ``other_bytes``:
    what the parameters outside the measured weights take (for ``size`` and ``ratio``).
    """
    layers = []
    for layer in sens.layers:
        start = round(1 - layer.nonzero / layer.weights, 6) if layer.weights else 0.0
        top = max([s for s, _ in layer.sparsity if s > start], default=start)
        xs = np.unique(np.r_[start, np.arange(math.ceil(start / SPARSITY_STEP) * SPARSITY_STEP, top + 1e-9,
                                               SPARSITY_STEP)].round(6))
        xs = xs[(xs >= start) & (xs <= top)]
        if target.density is not None:
            cost = layer.weights * (1 - xs)
        else:
            cost = np.array([kept_bits(layer.weights, 1 - s, target.value_bits) / 8 for s in xs])
        loss = monotone_loss(_loss(layer.sparsity, (start, sens.baseline_acc), xs, sens.baseline_acc), cost)
        layers.append(Options(layer.name, [float(x) for x in xs], loss, cost))
    if target.max_acc_drop is not None:
        return allocate(layers, max_loss=target.max_acc_drop)
    if target.density is not None:
        budget = target.density * sum(layer.weights for layer in sens.layers)
    else:
        size = target.size if target.size is not None else dense_bytes / target.ratio
        budget = size - other_bytes
    return allocate(layers, budget=budget)


def choose_bits(sens: Sensitivity, max_acc_drop: float | None = None, codebook_bits: int | dict[str, int] = 32,
                value_bits: float | None = None) -> dict[str, int]:
    """Per measured weight a k-means width: exactly one of

    - ``max_acc_drop``: the smallest coded size within that summed accuracy loss;
    - ``value_bits``: the least summed accuracy loss whose values and codebooks
      cost at most that many bits per kept weight, all layers together (the
      budget ``PruneTarget.value_bits`` assumed when it chose the sparsities).

    A width costs its kept values at the measured label entropy (what Huffman
    coding approaches) plus its codebook: ``min(2**bits, kept)`` entries of
    ``codebook_bits`` (one for all, or per layer name; a 256-entry codebook
    does not pay for a 325-weight layer).
    """
    layers, kept = [], 0
    for layer in sens.layers:
        if not layer.bits:
            continue
        kept += layer.nonzero
        entry = codebook_bits if isinstance(codebook_bits, int) else codebook_bits[layer.name]
        bits = [b for b, _, _ in layer.bits]
        cost = np.array([layer.nonzero * h + min(2**b, layer.nonzero) * entry for b, _, h in layer.bits]) / 8
        loss = monotone_loss([sens.baseline_acc - a for _, a, _ in layer.bits], cost)
        layers.append(Options(layer.name, bits, loss, cost))
    if value_bits is None:
        return allocate(layers, max_loss=max_acc_drop)
    return allocate(layers, budget=value_bits * kept / 8)
