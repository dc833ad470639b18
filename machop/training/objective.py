"""What a train step minimises beyond cross-entropy: distillation from a teacher, soft weight-sharing's prior.

The teacher's logits come with the batch when the data module worked them
out once before training (`MaseDataModule.train_targets`), else the teacher
runs on the batch. Both are tables of any step that trains (``[passes.X.distill]``,
``[passes.X.prior]``, and the same under a prune step's ``gradual``):

```toml
[passes.finetune.distill]        # learn from a teacher (Hinton et al. 2015)
teacher = "baseline"             # the run's dense baseline; or a checkpoint of the same model (registry models)
temperature = 4.0
weight = 0.5                     # loss = (1 - weight) * CE + weight * T^2 * KL(teacher || student)

[passes.finetune.prior]          # soft weight-sharing (Ullrich et al. 2017): cluster the kept weights, prune more
components = 16                  # Gaussians, one fixed at zero
zero_share = 0.5                 # the zero component's fixed share of the kept weights
weight = 0.03                    # loss += weight * mean negative log prior of the kept weights
learning_rate = 5e-4             # of the mixture's means, variances and shares
prune = true                     # afterwards prune the kept weights the zero component claims
```
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from machop.config import ConfigError, check_range, from_dict, join
from machop.nn import MixturePrior, Weight, apply_mask

from .outputs import logits_of


def _positive(value: float, path: str) -> None:
    if not value > 0:
        raise ConfigError(path, f"must be > 0, got {value}")


@dataclass
class DistillArgs:
    """``[passes.X.distill]``: learn from ``teacher``'s softened outputs as well as from the labels."""

    teacher: str = "baseline"
    temperature: float = 4.0
    weight: float = 0.5

    def validate(self, path: str) -> None:
        if not self.teacher:
            raise ConfigError(join(path, "teacher"), 'must be "baseline" or a checkpoint path')
        _positive(self.temperature, join(path, "temperature"))
        check_range(self.temperature, join(path, "temperature"), 0, 1000)
        check_range(self.weight, join(path, "weight"), 0, 1)


@dataclass
class PriorArgs:
    """``[passes.X.prior]``: train the kept weights under a Gaussian mixture prior (`machop.nn.MixturePrior`)."""

    components: int = 16
    zero_share: float = 0.5
    weight: float = 0.03
    learning_rate: float = 5e-4
    prune: bool = True

    def validate(self, path: str) -> None:
        check_range(self.components, join(path, "components"), 2, 256)
        _positive(self.zero_share, join(path, "zero_share"))
        check_range(self.zero_share, join(path, "zero_share"), 0, 1, hi_open=True)
        check_range(self.weight, join(path, "weight"), 0, 1e6)
        _positive(self.learning_rate, join(path, "learning_rate"))
        check_range(self.learning_rate, join(path, "learning_rate"), 0, 10)


def parse_objective_args(distill: dict | None, prior: dict | None, path: str) -> tuple[DistillArgs | None,
                                                                                       PriorArgs | None]:
    """The step's distill and prior tables, validated (None where absent)."""
    return (None if distill is None else from_dict(DistillArgs, distill, join(path, "distill")),
            None if prior is None else from_dict(PriorArgs, prior, join(path, "prior")))


class Objective(nn.Module):
    """The extra loss terms of one train step; a submodule of the Lightning module so the prior's parameters train.

    ``teacher`` is held outside the module tree: it is not trained, not saved
    and not counted as the student's.
    """

    def __init__(self, teacher: nn.Module | None = None, distill: DistillArgs | None = None,
                 prior: MixturePrior | None = None, prior_args: PriorArgs | None = None):
        super().__init__()
        if (teacher is None) != (distill is None) or (prior is None) != (prior_args is None):
            raise ValueError("give the teacher with its DistillArgs and the prior with its PriorArgs")
        self._teacher = [teacher] if teacher is not None else []
        self.distill = distill
        self.prior = prior
        self.prior_args = prior_args

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for inputs ``x`` (eval mode, no gradient), on ``x``'s device."""
        with torch.no_grad():
            return logits_of(self.teacher.to(x.device).eval()(x))

    def loss(self, ce: torch.Tensor, logits: torch.Tensor, x: torch.Tensor,
             teacher_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"loss": the training loss, ...its parts}`` for a batch ``x`` with the student's ``logits`` and
        cross-entropy ``ce``; ``teacher_logits``: the teacher's for ``x`` if already known."""
        out = {"loss": ce}
        if self.teacher is not None:
            t = self.distill.temperature
            if teacher_logits is None:
                teacher_logits = self.teacher_logits(x)
            soft = F.softmax(teacher_logits.to(logits.device, logits.dtype) / t, dim=1)
            kl = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean") * t * t
            out["distill_loss"] = kl
            out["loss"] = (1 - self.distill.weight) * ce + self.distill.weight * kl
        if self.prior is not None:
            penalty = self.prior.penalty()
            out["prior_loss"] = penalty
            out["loss"] = out["loss"] + self.prior_args.weight * penalty
        return out

    def param_groups(self, learning_rate: float) -> list[dict]:
        """The prior's parameters at their own learning rate (none without a prior)."""
        if self.prior is None:
            return []
        return [{"params": list(self.prior.parameters()), "lr": self.prior_args.learning_rate}]

    def finish(self) -> dict:
        """After training: prune what the prior's zero component claims (``prune = true``); what it did, for info."""
        if self.prior is None:
            return {}
        pruned = {}
        if self.prior_args.prune:
            for w in self.prior.weights:
                claimed = self.prior.zero_claimed(w)
                if claimed.any():
                    apply_mask(w, ~claimed)
                    pruned[w.name] = int(claimed.sum())
        return {"prior": {**self.prior.summary(), "pruned": pruned}}


def build_objective(weights: list[Weight], teacher: nn.Module | None, distill: DistillArgs | None,
                    prior: PriorArgs | None) -> Objective | None:
    """The step's `Objective` over the compressed ``weights`` (None when the step has neither table)."""
    if distill is None and prior is None:
        return None
    mixture = None if prior is None else MixturePrior(weights, prior.components, prior.zero_share)
    return Objective(teacher if distill is not None else None, distill, mixture, prior)
