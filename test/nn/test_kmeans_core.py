"""The exact 1-D k-means against a brute-force Lloyd and scikit-learn's KMeans (same init)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from machop.nn.kmeans import initial_centroids, kmeans_1d


def brute_force_lloyd(x: np.ndarray, c: np.ndarray, max_iter: int = 1000):
    """Textbook Lloyd with an n x k distance matrix; stops when the labels stop changing."""
    labels = None
    for _ in range(max_iter):
        new_labels = np.argmin((x[:, None] - c[None, :]) ** 2, axis=1)
        assert len(np.unique(new_labels)) == len(c), "precondition of the oracle: no empty cluster"
        c = np.array([x[new_labels == j].mean() for j in range(len(c))])
        if labels is not None and np.array_equal(labels, new_labels):
            break
        labels = new_labels
    return c, labels


def sse(x: np.ndarray, c: np.ndarray, labels: np.ndarray) -> float:
    return float(((x.astype(np.float64) - c[labels]) ** 2).sum())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("init", ["linear", "density"])
def test_equals_brute_force_lloyd(seed, init):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, 3000) if seed % 2 else rng.normal(0, 1, 3000) * 0.05
    k = [3, 5, 8, 12, 16, 6][seed]
    c0 = initial_centroids(np.sort(x), k, init)
    ref_c, ref_labels = brute_force_lloyd(x, c0)
    res = kmeans_1d(torch.from_numpy(x), k, init=init, max_iter=1000, tol=0.0)
    assert res.converged
    assert np.array_equal(res.labels.numpy(), ref_labels)
    np.testing.assert_allclose(res.centroids.numpy(), ref_c, rtol=0, atol=1e-12)
    assert res.sse == pytest.approx(sse(x, ref_c, ref_labels), rel=1e-12)


DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.normal(0, 0.05, n),
    "laplace": lambda rng, n: rng.laplace(0, 0.02, n),
    "pruned": lambda rng, n: (lambda v: v[np.abs(v) > 0.04])(rng.normal(0, 0.05, n)),  # a gap around 0
    "uniform": lambda rng, n: rng.uniform(-0.1, 0.1, n),
    "outliers": lambda rng, n: np.concatenate([rng.normal(0, 0.01, n), [0.9, -0.7, 0.5]]),
}


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("k", [4, 32, 128])
def test_error_no_worse_than_sklearn_same_init(dist, k):
    rng = np.random.default_rng(k)
    x = DISTRIBUTIONS[dist](rng, 6000).astype(np.float32)
    c0 = initial_centroids(np.sort(x).astype(np.float64), k, "linear")
    km = KMeans(k, init=c0.reshape(-1, 1), n_init=1, max_iter=300, tol=1e-4, algorithm="lloyd").fit(
        x.astype(np.float64).reshape(-1, 1))
    res = kmeans_1d(torch.from_numpy(x), k, init="linear", max_iter=300, tol=1e-4)
    ours = sse(x, res.centroids.numpy(), res.labels.numpy())
    theirs = sse(x, km.cluster_centers_[:, 0], km.labels_)
    assert ours == pytest.approx(res.sse, rel=1e-9)
    assert ours <= theirs * (1 + 1e-9)
    assert res.n_iter <= km.n_iter_ + 1


@pytest.mark.parametrize("trial", range(16))
def test_error_no_worse_than_sklearn_random_suite(trial):
    """Sizes, k and shapes where empty clusters are common (tails, a pruned gap, two modes), both stopping rules."""
    rng = np.random.default_rng(1000 + trial)
    n, k = int(rng.choice([2000, 6000])), int(rng.choice([8, 32, 64, 128]))
    shape = trial % 4
    if shape == 0:
        x = rng.standard_t(3, n) * 0.02
    elif shape == 1:
        v = rng.normal(0, 0.05, 2 * n)
        x = v[np.abs(v) > 0.04][:n]
    elif shape == 2:
        x = np.concatenate([rng.normal(-0.1, 0.01, n // 2), rng.normal(0.05, 0.03, n // 2)])
    else:
        x = rng.normal(0, 0.05, n)
    x = x.astype(np.float32)
    c0 = initial_centroids(np.sort(x).astype(np.float64), k, "linear")
    for tol in (1e-4, 0.0):
        km = KMeans(k, init=c0.reshape(-1, 1), n_init=1, max_iter=300, tol=tol, algorithm="lloyd").fit(
            x.astype(np.float64).reshape(-1, 1))
        res = kmeans_1d(x, k, init="linear", max_iter=300, tol=tol)
        assert sse(x, res.centroids.numpy(), res.labels.numpy()) <= sse(x, km.cluster_centers_[:, 0], km.labels_) * (
            1 + 1e-9)


def test_labels_point_at_nearest_or_own_mean():
    x = torch.randn(5000, dtype=torch.float64)
    res = kmeans_1d(x, 16, tol=0.0, max_iter=1000)
    c, lab = res.centroids, res.labels
    # converged: each centroid is the mean of its cluster, each value is with its nearest centroid
    for j in range(c.numel()):
        assert torch.isclose(x[lab == j].mean(), c[j], rtol=0, atol=1e-12)
    d = (x[:, None] - c[None, :]).abs()
    assert torch.equal(d.argmin(1), lab)
    assert bool((torch.diff(c) > 0).all())


def test_fewer_distinct_values_than_clusters_is_exact():
    x = torch.tensor([0.5, -0.25, 0.5, 0.0, 0.0, 1.0, -0.25, 0.5])
    res = kmeans_1d(x, 8)
    assert res.centroids.tolist() == [-0.25, 0.0, 0.5, 1.0]
    assert torch.equal(res.centroids[res.labels].float(), x)
    assert res.sse == 0.0
    one = kmeans_1d(torch.zeros(100), 256)
    assert one.centroids.tolist() == [0.0] and (one.labels == 0).all()


def test_exactly_k_plus_one_distinct_values():
    x = torch.arange(9, dtype=torch.float32).repeat(3)
    res = kmeans_1d(x, 8, tol=0.0)
    assert res.centroids.numel() == 8
    assert torch.unique(res.labels).numel() == 8


def test_empty_clusters_are_relocated_or_dropped():
    # linear init puts most centroids in the empty gap between two tight groups
    x = torch.cat([torch.randn(1000) * 0.01 - 1, torch.randn(1000) * 0.01 + 1, torch.tensor([0.0])])
    res = kmeans_1d(x, 64, init="linear")
    assert res.centroids.numel() <= 64
    assert torch.unique(res.labels).numel() == res.centroids.numel()  # no empty cluster left
    # relocation used the spare centroids: far better than 3 clusters
    assert res.sse < kmeans_1d(x, 3).sse / 10


def test_empty_input_and_inits():
    assert kmeans_1d(torch.zeros(0), 4).centroids.numel() == 0
    x = torch.randn(1000)
    for init in ("linear", "density", "random"):
        res = kmeans_1d(x, 16, init=init, generator=torch.Generator().manual_seed(0))
        assert res.centroids.numel() == 16 and res.converged
    a = kmeans_1d(x, 16, init="random", generator=torch.Generator().manual_seed(5))
    b = kmeans_1d(x, 16, init="random", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.centroids, b.centroids)
    with pytest.raises(ValueError, match="choose from"):
        kmeans_1d(x, 4, init="kmeans++")
