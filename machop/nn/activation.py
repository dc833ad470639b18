"""`ActivationPrune`: the module activation pruning inserts into the fx graph in front of a layer."""

from __future__ import annotations

import torch
from torch import nn

from .ranking import lowest_k_mask, prune_count
from .rebuild import RebuildError, Schema, check_how, check_int, check_number, check_tensor, is_int, rebuildable, short


_SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def _check_saved(spec: dict, tensors: dict, target: torch.Tensor | None, where: str) -> None:
    if "channel_dim" in spec:
        check_int(spec, "channel_dim", -64, 64, where)
    if "channel_how" in spec:
        check_how(spec["channel_how"], "channel_how", where)
    stages = spec.get("stages", [])
    if stages is not None:
        if not isinstance(stages, list) or len(stages) > 1000:
            raise RebuildError(f"{where}: stages must be a list of at most 1000 tables")
        for i, stage in enumerate(stages):
            check_how(stage, f"stages[{i}]", where)
            if stage.get("rank") not in ("magnitude", "random"):
                raise RebuildError(f"{where}: stages[{i}].rank must be 'magnitude' or 'random', got {short(stage.get('rank'))}")
            check_number(stage.get("sparsity"), f"stages[{i}].sparsity", 0, 1, where)
            if stage["rank"] == "random":
                seed = stage.get("seed")
                if not is_int(seed) or not _SEEDS[0] <= seed <= _SEEDS[1]:
                    raise RebuildError(f"{where}: stages[{i}].seed must be a 64-bit integer, got {short(seed)}")
    if tensors.get("channel_mask") is not None:
        check_tensor(tensors["channel_mask"], "channel_mask", where, kind="bool", ndim=1)


@rebuildable(schema=Schema(spec=frozenset({"channel_dim", "stages", "channel_how"}), tensors=frozenset({"channel_mask"}),
                            check=_check_saved))
class ActivationPrune(nn.Module):
    """Zero part of a layer's input: a static channel mask, then per-sample elementwise stages.

    Args:
        channel_dim: the channel dimension of the input (1 for Conv2d, -1 for Linear).
        stages: ``[{"rank": "magnitude" | "random", "sparsity": float, "seed": int, ...}]``;
            extra keys (method, scope, target) are kept for reports.
        channel_how: how the channel mask was made (method, target), for reports.
        channel_mask: bool ``(C,)``, True = keep; None for no channel mask.
    """

    def __init__(
        self,
        channel_dim: int = 1,
        stages: list[dict] | None = None,
        channel_how: dict | None = None,
        channel_mask: torch.Tensor | None = None,
    ):
        super().__init__()
        self.channel_dim = channel_dim
        self.stages = [dict(s) for s in stages or []]
        self.channel_how = dict(channel_how or {})
        self.register_buffer("channel_mask", None if channel_mask is None else channel_mask.to(torch.bool))
        self._random_cache: dict[tuple, torch.Tensor] = {}

    def spec(self) -> dict:
        return {"channel_dim": self.channel_dim, "stages": self.stages, "channel_how": self.channel_how}

    def add_channel_mask(self, mask: torch.Tensor, how: dict) -> None:
        """AND ``mask`` into the channel mask (pruned channels never come back)."""
        mask = mask.to(torch.bool)
        self.channel_mask = mask if self.channel_mask is None else self.channel_mask & mask.to(self.channel_mask.device)
        self.channel_how = dict(how)

    def _channel_keep(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return self.channel_mask.view(shape)

    def _random_scores(self, seed: int, n: int, device: torch.device) -> torch.Tensor:
        key = (seed, n, str(device))
        if key not in self._random_cache:
            g = torch.Generator().manual_seed(seed)
            self._random_cache[key] = torch.rand(n, generator=g).to(device)
        return self._random_cache[key]

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Bool mask of ``x``'s shape: True where the input is kept."""
        keep = torch.ones_like(x, dtype=torch.bool)
        if self.channel_mask is not None:
            keep = keep & self._channel_keep(x)
        if not self.stages:
            return keep
        batch = x.shape[0]
        flat, keep = x.detach().reshape(batch, -1), keep.reshape(batch, -1)
        n = flat.shape[1]
        for stage in self.stages:
            if stage["rank"] == "random":
                scores = self._random_scores(int(stage["seed"]), n, x.device).expand(batch, n)
            else:
                scores = flat.abs()
            scores = scores.masked_fill(~keep, float("-inf"))
            keep = keep & lowest_k_mask(scores, prune_count(stage["sparsity"], n), rowwise=True)
        return keep.reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_mask is not None and not self.stages:
            return x * self._channel_keep(x).to(x.dtype)
        return x * self.keep_mask(x).to(x.dtype)

    def extra_repr(self) -> str:
        parts = []
        if self.channel_mask is not None:
            parts.append(f"channels kept={int(self.channel_mask.sum())}/{self.channel_mask.numel()}")
        parts += [f"{s['rank']} sparsity={s['sparsity']:.4g}" for s in self.stages]
        return ", ".join(parts)
