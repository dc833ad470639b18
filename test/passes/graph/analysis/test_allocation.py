"""`allocation`: per-layer choices from sensitivity curves, checked against brute force and the real coder."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from machop.config import ConfigError
from machop.passes.graph.analysis.allocation import (
    SPARSITY_STEP,
    InfeasibleBudget,
    Options,
    PruneTarget,
    allocate,
    choose_bits,
    choose_sparsities,
    interpolate,
    kept_bits,
    monotone_loss,
    position_bits,
)
from machop.passes.graph.analysis.sensitivity import LayerSensitivity, Sensitivity
from machop.ir.mchz import codec
from machop.ir.mchz.model import gap_encode


def random_layers(rng: np.random.Generator, n_layers: int = 3, n_options: int = 6) -> list[Options]:
    layers = []
    for j in range(n_layers):
        cost = np.sort(rng.uniform(1, 100, n_options))[::-1].copy()  # dearest first
        loss = monotone_loss(np.r_[0.0, np.sort(rng.uniform(0, 0.05, n_options - 1))], cost)
        layers.append(Options(f"l{j}", list(range(n_options)), loss, cost))
    return layers


def totals(layers: list[Options], chosen: dict) -> tuple[float, float]:
    return (sum(o.loss[chosen[o.name]] for o in layers), sum(o.cost[chosen[o.name]] for o in layers))


def brute_force(layers: list[Options], budget: float | None = None, max_loss: float | None = None) -> float:
    """The optimum: least loss within the budget, or least cost within the loss limit."""
    best = float("inf")
    for combo in itertools.product(*(range(len(o.values)) for o in layers)):
        loss = sum(o.loss[i] for o, i in zip(layers, combo))
        cost = sum(o.cost[i] for o, i in zip(layers, combo))
        if budget is not None and cost <= budget:
            best = min(best, loss)
        if max_loss is not None and loss <= max_loss:
            best = min(best, cost)
    return best


def test_budget_always_met_and_mostly_optimal():
    rng = np.random.default_rng(0)
    optimal, gaps = 0, []
    for _ in range(200):
        layers = random_layers(rng)
        budget = rng.uniform(sum(o.cost.min() for o in layers), sum(o.cost.max() for o in layers))
        loss, cost = totals(layers, allocate(layers, budget=budget))
        assert cost <= budget + 1e-9
        best = brute_force(layers, budget=budget)
        assert loss >= best - 1e-12
        optimal += loss <= best + 1e-12
        gaps.append(loss - best)
    assert optimal >= 190, optimal  # optimal up to one budget step per layer
    assert np.mean(gaps) < 0.002


def test_loss_limit_always_met_and_mostly_optimal():
    rng = np.random.default_rng(1)
    optimal = 0
    for _ in range(200):
        layers = random_layers(rng)
        max_loss = rng.uniform(0, 0.1)
        loss, cost = totals(layers, allocate(layers, max_loss=max_loss))
        assert loss <= max_loss + 1e-12
        best = brute_force(layers, max_loss=max_loss)
        assert cost >= best - 1e-9
        optimal += cost <= best + 1e-9
    assert optimal >= 190, optimal


def test_the_sensitive_layer_is_pruned_least():
    sparsities = [0.0, 0.5, 0.9, 0.95]
    weights = 1000
    cost = np.array([weights * (1 - s) for s in sparsities])
    robust = Options("robust", sparsities, np.array([0, 0, 0.001, 0.002]), cost)
    fragile = Options("fragile", sparsities, np.array([0, 0.01, 0.05, 0.2]), cost)
    assert allocate([robust, fragile], budget=1060) == {"robust": 0.95, "fragile": 0.0}
    assert allocate([robust, fragile], budget=610) == {"robust": 0.9, "fragile": 0.5}
    assert allocate([robust, fragile], max_loss=0.0115) == {"robust": 0.9, "fragile": 0.5}


def test_infeasible_budgets_say_so_and_offer_the_closest_choice():
    layers = [Options("a", [0, 1], np.array([0.0, 0.1]), np.array([10.0, 5.0]))]
    with pytest.raises(InfeasibleBudget, match="over the budget") as e:
        allocate(layers, budget=4)
    assert e.value.best == {"a": 1}
    layers = [Options("a", [0, 1], np.array([0.02, 0.1]), np.array([10.0, 5.0]))]
    with pytest.raises(InfeasibleBudget, match="over the limit") as e:
        allocate(layers, max_loss=0.01)
    assert e.value.best == {"a": 0}
    with pytest.raises(ValueError, match="exactly one"):
        allocate(layers)


def test_monotone_loss_never_rewards_a_cheaper_option():
    cost = np.array([100.0, 50, 20, 10])
    assert monotone_loss([0.01, -0.002, 0.03, 0.02], cost).tolist() == [0.01, 0.01, 0.03, 0.03]
    # order of the options does not matter: the dearest is the reference
    assert monotone_loss([0.02, 0.03, -0.002, 0.01], cost[::-1]).tolist() == [0.03, 0.03, 0.01, 0.01]
    assert interpolate([(0.9, 0.5), (0.5, 0.9)], np.array([0.5, 0.7, 0.9])).tolist() == pytest.approx([0.9, 0.7, 0.5])


@pytest.mark.parametrize("density", [0.02, 0.05, 0.1, 0.3])
def test_position_bits_match_the_huffman_coded_gaps(density):
    """The cost model of a sparsity against what machop's coder writes for a random mask of that density."""
    rng = np.random.default_rng(0)
    n = 400_000
    positions = np.flatnonzero(rng.random(n) < density)
    stream = codec.encode(gap_encode(positions, index_bits=5))
    measured = 8 * stream.nbytes / len(positions)
    assert measured == pytest.approx(position_bits(density), rel=0.04)


def curves(name: str, weights: int, nonzero: int, sparsity: list, bits: list = ()) -> LayerSensitivity:
    return LayerSensitivity(name, weights, nonzero, sparsity, list(bits))


def test_choose_sparsities_meets_a_density_and_a_ratio_on_the_grid():
    sens = Sensitivity(0.9, 2000, "val", [
        curves("big", 100_000, 100_000, [(0.5, 0.9), (0.9, 0.88), (0.99, 0.6)]),
        curves("small", 1000, 1000, [(0.5, 0.85), (0.9, 0.5), (0.99, 0.1)]),
    ])
    chosen = choose_sparsities(sens, PruneTarget(density=0.1), dense_bytes=404_000, other_bytes=0)
    assert 100_000 * (1 - chosen["big"]) + 1000 * (1 - chosen["small"]) <= 0.1 * 101_000
    assert chosen["small"] < 0.5 < 0.85 < chosen["big"]  # the fragile layer is pruned least
    assert all(abs(s / SPARSITY_STEP - round(s / SPARSITY_STEP)) < 1e-6 for s in chosen.values())
    target = PruneTarget(ratio=40, value_bits=4)
    chosen = choose_sparsities(sens, target, dense_bytes=404_000, other_bytes=1000)
    size = 1000 + sum(kept_bits(n, 1 - chosen[name], 4) / 8 for name, n in (("big", 100_000), ("small", 1000)))
    assert size <= 404_000 / 40


def test_choose_sparsities_starts_from_the_current_mask():
    sens = Sensitivity(0.9, 2000, "val", [curves("w", 1000, 300, [(0.5, 0.9), (0.9, 0.8), (0.95, 0.5)])])
    assert choose_sparsities(sens, PruneTarget(max_acc_drop=0.0), 4000, 0) == {"w": 0.7}  # pruning to 0.7 again is free
    assert choose_sparsities(sens, PruneTarget(max_acc_drop=0.05), 4000, 0) == {"w": 0.8}  # (0.7, 0.9) to (0.9, 0.8)


def test_choose_bits_counts_the_codebook():
    """A flat curve: the fewest bits that cost nothing; a codebook larger than the layer is never worth it."""
    sens = Sensitivity(0.9, 2000, "val", [
        curves("conv1", 500, 325, [], [(b, 0.9 if b >= 3 else 0.5, min(b, 7.9)) for b in range(1, 9)]),
        curves("fc1", 40_000, 2000, [], [(b, 0.9 if b >= 5 else 0.85, b - 0.3) for b in range(1, 9)]),
    ])
    assert choose_bits(sens, max_acc_drop=0.001) == {"conv1": 3, "fc1": 5}
    assert choose_bits(sens, max_acc_drop=0.06) == {"conv1": 3, "fc1": 1}


def test_choose_bits_in_a_byte_budget_is_the_least_lossy_choice_that_fits():
    """``value_bits``: the brute-force best of every width combination whose values and codebooks fit."""
    rng = np.random.default_rng(3)
    layers = []
    for name, weights, kept in (("conv1", 500, 325), ("conv2", 9000, 4000), ("fc1", 40_000, 2000)):
        accs = 0.9 - np.sort(rng.uniform(0, 0.05, 8))[::-1] * (np.arange(1, 9) < 6)
        layers.append(curves(name, weights, kept, [], [(b, float(a), b - 0.2) for b, a in zip(range(1, 9), accs)]))
    sens = Sensitivity(0.9, 2000, "val", layers)
    kept = sum(layer.nonzero for layer in sens.layers)

    def cost(layer, b):
        h = dict((w, e) for w, _, e in layer.bits)[b]
        return (layer.nonzero * h + min(2**b, layer.nonzero) * 16) / 8

    def loss(layer, b):
        return 0.9 - dict((w, a) for w, a, _ in layer.bits)[b]

    for value_bits in (2.5, 3.0, 4.0, 6.0):
        chosen = choose_bits(sens, codebook_bits=16, value_bits=value_bits)
        fits = [c for c in itertools.product(range(1, 9), repeat=3)
                if sum(cost(l, b) for l, b in zip(sens.layers, c)) <= value_bits * kept / 8]
        best = min(sum(loss(l, b) for l, b in zip(sens.layers, c)) for c in fits)
        assert sum(cost(l, chosen[l.name]) for l in sens.layers) <= value_bits * kept / 8
        assert sum(loss(l, chosen[l.name]) for l in sens.layers) == pytest.approx(best, abs=1e-9)
    with pytest.raises(InfeasibleBudget, match="over the budget"):
        choose_bits(sens, codebook_bits=16, value_bits=0.5)


def test_prune_targets_are_checked():
    with pytest.raises(ConfigError, match="t: give exactly one of density, size, ratio, max_acc_drop"):
        PruneTarget().validate("t")
    with pytest.raises(ConfigError, match=r"t: give exactly one .* \(got density, ratio\)"):
        PruneTarget(density=0.1, ratio=50).validate("t")
    with pytest.raises(ConfigError, match=r"t.density: must be > 0, got 0"):
        PruneTarget(density=0).validate("t")
    with pytest.raises(ConfigError, match=r"t.sparsities\[1\]: must be in \[0, 1\), got 1.0"):
        PruneTarget(ratio=50, sparsities=[0.5, 1.0]).validate("t")
