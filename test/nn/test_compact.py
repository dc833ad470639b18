"""16-bit side data: `Compact` rounding and k-means codebooks in float16/bfloat16, against torch's own casts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from machop.nn import Compact, KMeansWeight, REBUILDABLE, load_weight_codes, rebuild, round_to, weight_codes
from machop.nn.rebuild import RebuildError


def awkward(n: int = 4096, seed: int = 0) -> torch.Tensor:
    """Values of every magnitude: normal, tiny (float16 subnormals), huge (beyond float16), ties, ±0, inf, NaN."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.logspace(-9, 6, n).index_select(0, torch.randperm(n, generator=g))
    special = torch.tensor([0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, float("inf"), float("-inf"),
                            float("nan"), 2.0**-24, 2.0**-25, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 2.0**-14])
    return torch.cat([x, special, -special])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_round_to_is_torchs_cast(dtype):
    x = awkward()
    name = str(dtype).removeprefix("torch.")
    got = round_to(x, name)
    oracle = x.to(dtype).float()
    if dtype == torch.float16:  # finite values beyond float16's range saturate instead of becoming infinite
        finite = x.isfinite()
        oracle = torch.where(finite & (oracle.abs() == float("inf")), x.sign() * 65504.0, oracle)
    assert torch.equal(got.isnan(), oracle.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(oracle))
    same_sign = torch.signbit(got) == torch.signbit(oracle)
    assert bool(same_sign[~got.isnan()].all())  # -0.0 stays -0.0
    again = round_to(got, name)  # idempotent: what a file stores is what the model uses
    assert torch.equal(torch.nan_to_num(again), torch.nan_to_num(got))
    wide = round_to(x.double(), name)  # a float64 tensor rounds to the same values
    assert wide.dtype == torch.float64 and torch.equal(torch.nan_to_num(wide.float()), torch.nan_to_num(got))


def test_round_to_float32_and_non_float_is_identity():
    x = awkward()
    assert round_to(x, "float32") is x
    ints = torch.arange(5)
    assert round_to(ints, "float16") is ints


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_compact_forward_and_straight_through_gradient(dtype):
    x = torch.tensor([0.1, -3.3, 1e5, -1e5, 7.0], requires_grad=True)
    y = Compact(dtype)(x)
    assert torch.equal(y, round_to(x.detach(), dtype))
    (y * torch.arange(1.0, 6.0)).sum().backward()
    expected = torch.arange(1.0, 6.0)
    if dtype == "float16":
        expected[2:4] = 0  # saturated: no gradient
    assert torch.equal(x.grad, expected)


def test_compact_as_a_parametrization_trains_the_original():
    layer = nn.Linear(4, 3)
    parametrize.register_parametrization(layer, "bias", Compact("float16"))
    layer.parametrizations.bias.original.data = torch.tensor([0.1, 0.2, 0.3])
    assert torch.equal(layer.bias, torch.tensor([0.1, 0.2, 0.3]).half().float())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    loss = layer(torch.ones(2, 4)).sum()
    loss.backward()
    assert torch.equal(layer.parametrizations.bias.original.grad, torch.full((3,), 2.0))
    opt.step()
    assert torch.equal(layer.bias, layer.parametrizations.bias.original.detach().half().float())


def test_compact_rebuilds_from_its_spec_and_refuses_bad_ones():
    assert REBUILDABLE["Compact"] is Compact
    c = rebuild("Compact", {"dtype": "bfloat16"}, {}, "fc.parametrizations.bias.0.", target=torch.zeros(3))
    assert isinstance(c, Compact) and c.spec() == {"dtype": "bfloat16"}
    for spec in ({"dtype": "float32"}, {"dtype": "int8"}, {"dtype": 16}, {}, {"dtype": "float16", "x": 1}):
        with pytest.raises(RebuildError):
            rebuild("Compact", spec, {}, "fc.parametrizations.bias.0.", target=torch.zeros(3))
    with pytest.raises(RebuildError, match="float tensor"):
        rebuild("Compact", {"dtype": "float16"}, {}, "p.", target=torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_kmeans_codebook_format_rounds_centroids_in_forward(fmt):
    centroids = torch.tensor([-0.123456789, 0.0, 0.3333333, 1.0001])
    index = torch.tensor([[0, 1], [2, 3], [3, 0]])
    mask = torch.tensor([[True, False], [True, True], [True, True]])
    q = KMeansWeight(centroids, index, mask, bits=2, codebook=fmt)
    assert q.spec() == {"bits": 2, "codebook": fmt}
    rounded = round_to(centroids, fmt)
    assert torch.equal(q.codebook_values(), rounded)
    assert torch.equal(q(), rounded[index.long()] * mask)
    q().sum().backward()  # the gradient reaches the float32 centroids, summed per cluster
    assert torch.equal(q.centroids.grad, torch.tensor([2.0, 0.0, 1.0, 2.0]))
    assert q.centroids.dtype == torch.float32
    # float32 (the default) keeps the spec it always had
    assert KMeansWeight(centroids, index, mask, bits=2).spec() == {"bits": 2}
    with pytest.raises(ValueError, match="codebook"):
        KMeansWeight(centroids, index, mask, bits=2, codebook="half")
    with pytest.raises(RebuildError, match="codebook"):
        rebuild("KMeansWeight", {"bits": 2, "codebook": "float64"}, {"centroids": centroids, "index": index, "mask": mask}, "")


def test_weight_codes_of_a_float16_codebook_are_exact_and_load_back():
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    index = torch.randint(0, 8, (5, 6), dtype=torch.uint8)
    mask = torch.rand(5, 6) < 0.6
    parametrize.register_parametrization(layer, "weight", KMeansWeight(torch.randn(8), index, mask, 3, "float16"), unsafe=True)
    wc = weight_codes(layer)
    assert wc.codebook_format == "float16"
    assert torch.equal(wc.codebook.half().float(), wc.codebook)
    assert torch.equal(wc.codebook[wc.codes] * wc.mask, layer.weight)
    other = nn.Linear(6, 5)
    parametrize.register_parametrization(other, "weight", KMeansWeight(torch.zeros(8), torch.zeros(5, 6), torch.ones(5, 6), 3, "float16"),
                                         unsafe=True)
    load_weight_codes(other, wc)
    assert torch.equal(other.weight, layer.weight)
