"""The teacher a train step distills from: the run's dense baseline (alone, or with more dense models trained
beside it: an ensemble), or a checkpoint of the same registry model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from machop.config import ConfigError
from machop.models import get_model
from machop.training import logits_of

from .graph import MaseGraph, copy_model
from .serialize import load_weights

logger = logging.getLogger(__name__)

LOAD_TYPES = {".ckpt": "pl", ".mz": "mz"}  # anything else is read as a torch state dict ("pt")


class Ensemble(nn.Module):
    """Models that teach together: the mean of their logits (Hinton et al. 2015 distil an ensemble)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return torch.stack([logits_of(m(*args, **kwargs)) for m in self.members]).mean(dim=0)


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every module's ``reset_parameters`` run under ``seed`` (the global RNG is left
    as it was): the same architecture, newly initialised. Parameters of modules without one keep their values."""
    copy = copy_model(model)
    kept = [name or "(the model)" for name, m in copy.named_modules()
            if not hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]
    if kept:
        logger.warning("a fresh copy keeps the trained values of %s (no reset_parameters)", ", ".join(kept))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in copy.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return copy


def keep_teacher(graph: MaseGraph, others: Sequence[nn.Module] = ()) -> None:
    """Remember ``graph``'s model as it is now (a frozen copy) as the run's dense baseline; with ``others``
    (more trained dense models), later steps learn from the `Ensemble` of the baseline and them."""
    teacher = copy_model(graph.model)
    if others:
        teacher = Ensemble([teacher, *others])
    graph.context.teacher = teacher.eval().requires_grad_(False)


def _check_file(graph: MaseGraph, teacher: str, where: str) -> None:
    if not Path(teacher).is_file():
        raise ConfigError(where, f"no such file: {teacher}")
    if graph.context.model_name is None:
        raise ConfigError(where, "a teacher checkpoint needs a registry model; for your own model set "
                                 "graph.context.teacher = the trained model")


def check_teacher(graph: MaseGraph, distill: dict | None, path: str, earlier: list[str] = ()) -> None:
    """Before step 1: refuse a step's ``distill`` table whose teacher cannot exist when the step runs."""
    if distill is None or not isinstance(distill.get("teacher", "baseline"), str):
        return  # no table, or a wrong type the table's parser names
    teacher, where = distill.get("teacher", "baseline"), f"{path}.distill.teacher"
    if teacher != "baseline":
        _check_file(graph, teacher, where)
    elif graph.context.teacher is None and "train" not in earlier:
        raise ConfigError(where, '"baseline" needs an earlier train step with baseline = true')


def find_teacher(graph: MaseGraph, teacher: str, where: str) -> nn.Module:
    """``"baseline"``: the model `keep_teacher` kept (a baseline step's); otherwise a checkpoint file of
    ``graph``'s registry model, dense. ConfigError at ``where`` when there is none."""
    if teacher == "baseline":
        if graph.context.teacher is None:
            raise ConfigError(where, '"baseline" needs an earlier train step with baseline = true (or, from '
                                     "Python, graph.context.teacher = your trained model)")
        return graph.context.teacher
    _check_file(graph, teacher, where)
    model = MaseGraph(get_model(graph.context.model_name, graph.context.dataset_info))
    try:
        load_weights(model, teacher, LOAD_TYPES.get(Path(teacher).suffix, "pt"))
    except ValueError as e:
        raise ConfigError(where, str(e)) from None
    return model.model.eval().requires_grad_(False)
