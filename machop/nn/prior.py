"""Soft weight-sharing's prior (Ullrich, Meeds & Welling 2017): a Gaussian mixture the kept weights are trained under.

Training with ``loss + weight * MixturePrior.penalty()`` pulls each kept
weight towards one of a few learned values (the mixture's means) or to zero
(a component fixed at 0): the network becomes *clustered*, so weight sharing
at a low bit width loses little, and *sparser*, since the weights the zero
component claims are pruned afterwards (`MixturePrior.zero_claimed`). The
means, variances and mixing shares are learned with the weights (empirical
Bayes); the zero component's share is fixed.

Only kept weights (mask 1) enter the prior: pruned weights are exact zeros
already, and counting them would let the zero component explain them for free.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .masks import get_mask
from .weights import Weight


def _kept(weight: Weight) -> torch.Tensor:
    """The effective weight's kept entries, differentiable (the forward of its parametrizations)."""
    w = getattr(weight.module, weight.tensor_name).reshape(-1)
    mask = get_mask(weight.module, weight.tensor_name)
    return w if mask is None else w[mask.reshape(-1).bool()]


class MixturePrior(nn.Module):
    """A mixture of ``components`` Gaussians over the kept entries of ``weights``; component 0 sits at zero.

    ``zero_share``: the fixed mixing share of the zero component. The other
    means start evenly spread over the kept weights' range, every standard
    deviation at a quarter of the gap between two means.
    """

    def __init__(self, weights: list[Weight], components: int = 16, zero_share: float = 0.5):
        super().__init__()
        if components < 2:
            raise ValueError(f"components must be >= 2, got {components}")
        if not 0.0 < zero_share < 1.0:
            raise ValueError(f"zero_share must be in (0, 1), got {zero_share}")
        self.weights = list(weights)  # a plain list: the weights stay the model's, not this module's
        with torch.no_grad():
            values = torch.cat([_kept(w).float() for w in self.weights]) if self.weights else torch.zeros(1)
        lo, hi = float(values.min()), float(values.max())
        if hi - lo < 1e-8:
            lo, hi = lo - 1.0, hi + 1.0
        means = torch.linspace(lo, hi, components - 1)
        gap = (hi - lo) / max(components - 2, 1)
        self.means = nn.Parameter(means)
        self.log_var = nn.Parameter(torch.full((components,), math.log((gap / 4) ** 2)))
        self.share_logits = nn.Parameter(torch.zeros(components - 1))
        self.zero_share = zero_share

    def mixture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means, variances, log shares), component 0 first."""
        means = torch.cat([self.means.new_zeros(1), self.means])
        log_shares = torch.cat([self.means.new_tensor([math.log(self.zero_share)]),
                                math.log1p(-self.zero_share) + torch.log_softmax(self.share_logits, 0)])
        return means, self.log_var.exp().clamp_min(1e-10), log_shares

    def log_joint(self, w: torch.Tensor) -> torch.Tensor:
        """``log(share_j * N(w | mean_j, var_j))`` for every entry of ``w`` (rows) and component (columns)."""
        means, var, log_shares = self.mixture()
        w = w.float().reshape(-1, 1)
        return log_shares - 0.5 * (torch.log(2 * math.pi * var) + (w - means) ** 2 / var)

    def penalty(self) -> torch.Tensor:
        """The mean negative log prior of the kept weights (what training adds, times a weight)."""
        kept = torch.cat([_kept(w) for w in self.weights])
        return -torch.logsumexp(self.log_joint(kept), dim=1).mean()

    @torch.no_grad()
    def zero_claimed(self, weight: Weight) -> torch.Tensor:
        """Bool tensor of ``weight``'s shape: kept entries whose likeliest component is the zero one."""
        w = getattr(weight.module, weight.tensor_name)
        claimed = self.log_joint(w).argmax(dim=1).reshape(w.shape) == 0
        mask = get_mask(weight.module, weight.tensor_name)
        return claimed if mask is None else claimed & mask.bool()

    @torch.no_grad()
    def summary(self) -> dict:
        """Means, standard deviations and shares of the components, zero first (JSON-ready)."""
        means, var, log_shares = self.mixture()
        return {"means": [round(float(m), 6) for m in means], "stds": [round(float(v.sqrt()), 6) for v in var],
                "shares": [round(float(s), 6) for s in log_shares.exp()]}
