"""Fixed point (``integer``) against torch.fake_quantize_per_tensor_affine, and the integer pass on a model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from machop.ir import MaseGraph
from machop.nn import apply_mask
from machop.nn import FixedPoint, quantize_fixed_point
from machop.passes.graph.transforms.quantize import quantize_transform_pass


def oracle(x: torch.Tensor, width: int, frac: int) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, 2.0**-frac, 0, -(2 ** (width - 1)), 2 ** (width - 1) - 1)


def probe(frac: int, width: int) -> torch.Tensor:
    """Random values over and beyond the range, every exact half step (ties), zeros, and the range ends."""
    g = torch.Generator().manual_seed(width * 100 + frac)
    step = 2.0**-frac
    top = 2 ** (width - 1) * step
    halves = (torch.arange(-2 ** (width + 1) - 3, 2 ** (width + 1) + 4) * 0.5 * step).float()
    rand = (torch.rand(4000, generator=g) * 2 - 1) * 3 * top
    edges = torch.tensor([top, -top, top - step, top - step / 2, -top - step / 2, 0.0, -0.0, 1e30, -1e30])
    return torch.cat([halves, rand, edges])


WIDTHS = [(1, 0), (2, 0), (2, 1), (3, 2), (4, 0), (4, 3), (4, 6), (8, 0), (8, 4), (8, 7), (8, 12), (12, 6), (16, 0),
          (16, 8), (16, 15), (16, 32), (5, 32)]


@pytest.mark.parametrize("width,frac", WIDTHS)
def test_forward_equals_fake_quantize(width, frac):
    x = probe(frac, width)
    ours, ref = quantize_fixed_point(x, width, frac), oracle(x, width, frac)
    assert torch.equal(ours, ref)
    # saturation really happened at both ends, and the half steps exercised round-half-to-even
    assert ours.max() == (2 ** (width - 1) - 1) * 2.0**-frac and ours.min() == -(2 ** (width - 1)) * 2.0**-frac
    assert torch.equal(quantize_fixed_point(torch.zeros(3), width, frac), torch.zeros(3))


@pytest.mark.parametrize("width,frac", WIDTHS)
def test_ste_gradient_equals_fake_quantize(width, frac):
    x1 = probe(frac, width).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3))
    (quantize_fixed_point(x1, width, frac) * g).sum().backward()
    (oracle(x2, width, frac) * g).sum().backward()
    assert torch.equal(x1.grad, x2.grad)
    # 1 inside the range, 0 where it saturates (fake_quantize's rule, on the rounded value)
    top = 2 ** (width - 1) * 2.0**-frac
    inside = x1.detach().abs() < top / 2
    assert torch.equal(x1.grad[inside], g[inside])
    assert (x1.grad[x1.detach().abs() > 2 * top] == 0).all()


def test_fixed_point_module_spec_roundtrip():
    m = FixedPoint(6, 3)
    assert FixedPoint(**m.spec()).spec() == {"width": 6, "frac_width": 3}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x, y):
        return self.fc(x), self.conv(y)


INT_CFG = {"name": "integer", "data_in_width": 6, "data_in_frac_width": 2, "weight_width": 4, "weight_frac_width": 3,
           "bias_width": 5, "bias_frac_width": 6}


def test_integer_pass_matches_oracle_and_keeps_zeros():
    torch.manual_seed(0)
    graph = MaseGraph(Tiny())
    fc, conv = graph.model.fc, graph.model.conv
    mask = torch.rand(fc.weight.shape) < 0.6
    apply_mask(fc, mask)
    w_fc, b_fc = fc.weight.detach().clone(), fc.bias.detach().clone()
    w_cv, b_cv = conv.weight.detach().clone(), conv.bias.detach().clone()
    graph, info = quantize_transform_pass(graph, {"by": "type", "default": {"config": INT_CFG}})
    assert [r["name"] for r in info["layers"]] == ["fc", "conv"]
    # the input quantizers are real fx nodes in front of the layers
    printed = str(graph)
    assert "fc_data_in_quantizer" in printed and "conv_data_in_quantizer" in printed
    x, y = torch.randn(5, 16) * 4, torch.randn(2, 2, 7, 7) * 4
    out_fc, out_cv = graph(x, y)
    ref_fc = F.linear(oracle(x, 6, 2), oracle(w_fc, 4, 3), oracle(b_fc, 5, 6))
    ref_cv = F.conv2d(oracle(y, 6, 2), oracle(w_cv, 4, 3), oracle(b_cv, 5, 6))
    assert torch.equal(out_fc, ref_fc) and torch.equal(out_cv, ref_cv)
    assert (fc.weight[~mask] == 0).all()  # pruned weights stay exactly zero
    # the prune mask stays first in the chain, the quantizer after it
    assert [type(p).__name__ for p in fc.parametrizations.weight] == ["WeightMask", "FixedPoint"]


def test_integer_training_gradient_is_ste_through_mask():
    torch.manual_seed(0)
    graph = MaseGraph(Tiny())
    fc = graph.model.fc
    mask = torch.rand(fc.weight.shape) < 0.5
    apply_mask(fc, mask)
    quantize_transform_pass(graph, {"by": "name", "fc": {"config": INT_CFG}})
    original = fc.parametrizations.weight.original
    x = torch.randn(5, 16)
    with parametrize.cached():
        w = fc.weight
        w.retain_grad()
        graph(x, torch.zeros(1, 2, 3, 3))[0].square().sum().backward()
    w0 = (original.detach() * mask).requires_grad_(True)
    ref = oracle(w0, 4, 3)
    torch.autograd.backward(ref, w.grad)
    assert torch.equal(original.grad, w0.grad * mask)
    assert (original.grad[~mask] == 0).all()


def test_integer_bias_and_input_optional():
    torch.manual_seed(0)
    graph = MaseGraph(Tiny())
    cfg = {**INT_CFG, "data_in_width": "NA", "data_in_frac_width": "NA", "bias_width": "NA", "bias_frac_width": "NA"}
    b = graph.model.fc.bias.detach().clone()
    quantize_transform_pass(graph, {"by": "type", "linear": {"config": cfg}})
    assert "quantizer" not in str(graph)
    assert torch.equal(graph.model.fc.bias, b)
    assert not parametrize.is_parametrized(graph.model.conv)
