"""The ranking code every prune method shares.

A method only decides a *score* per group (a weight, a k×k kernel, an output
channel, an input feature map); these helpers turn scores into an exact mask:

- `prune_count`: how many groups a sparsity means, ``round(sparsity * n)``
  (Python's round, as ``torch.nn.utils.prune`` rounds);
- `group_scores`: the p-norm of each group (vary ``p`` for L1/L2);
- `lowest_k_mask`: keep-mask that drops exactly the ``k`` lowest scores, ties
  broken by position (the lower index is dropped first), so the result is
  deterministic and the sparsity exact. It uses ``kthvalue`` (linear time,
  no size limit) rather than ``torch.quantile`` (16M-element limit, and a
  threshold cannot break ties) or a full sort.

Groups already pruned by an earlier pass are given the score ``-inf`` by the
callers, so they are always among the ``k`` dropped: they count towards the
target.
"""

from __future__ import annotations

import torch


def prune_count(sparsity: float, n: int) -> int:
    """Number of groups out of ``n`` that ``sparsity`` prunes: ``round(sparsity * n)``."""
    return int(round(sparsity * n))


def group_scores(groups: torch.Tensor, p: float) -> torch.Tensor:
    """The ``p``-norm of each row of ``groups`` (shape ``(G, S)`` → ``(G,)``).

    For single-element groups every p-norm is ``|x|``, so it is computed as
    that directly (no pow/sqrt).
    """
    if groups.shape[1] == 1:
        return groups.reshape(-1).abs()
    return torch.linalg.vector_norm(groups, ord=p, dim=1)


def lowest_k_mask(scores: torch.Tensor, k: int, rowwise: bool = False) -> torch.Tensor:
    """Bool keep-mask of ``scores``' shape with exactly ``k`` entries False: the lowest scores.

    Ties at the k-th value are broken by position: the entry with the lower
    (flattened) index is pruned first. With ``rowwise=True`` the ranking is
    done independently along the last dimension (``k`` per row), as
    activation pruning does per sample.
    """
    if not rowwise:
        flat = scores.reshape(-1)
        n = flat.numel()
        k = int(k)
        if k <= 0:
            return torch.ones_like(scores, dtype=torch.bool)
        if k >= n:
            return torch.zeros_like(scores, dtype=torch.bool)
        kth = flat.kthvalue(k).values
        prune = flat < kth
        short = k - int(torch.count_nonzero(prune))
        if short > 0:  # ties at the k-th value: drop the first `short` of them
            tied = (flat == kth).nonzero().squeeze(1)[:short]
            prune[tied] = True
        return (~prune).reshape(scores.shape)

    n = scores.shape[-1]
    k = int(k)
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.zeros_like(scores, dtype=torch.bool)
    kth = scores.kthvalue(k, dim=-1, keepdim=True).values
    prune = scores < kth
    short = k - torch.count_nonzero(prune, dim=-1).unsqueeze(-1)
    tied = scores == kth
    prune |= tied & (tied.cumsum(dim=-1) <= short)
    return ~prune
