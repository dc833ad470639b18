"""The teacher a train step distills from: the run's dense baseline, or a checkpoint of the same registry model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from machop.config import ConfigError
from machop.models import get_model

from .graph import MaseGraph, copy_model
from .serialize import load_weights

LOAD_TYPES = {".ckpt": "pl", ".mz": "mz"}  # anything else is read as a torch state dict ("pt")


def keep_teacher(graph: MaseGraph) -> None:
    """Remember ``graph``'s model as it is now (a frozen copy) as the run's dense baseline."""
    teacher = copy_model(graph.model).eval()
    teacher.requires_grad_(False)
    graph.context.teacher = teacher


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
