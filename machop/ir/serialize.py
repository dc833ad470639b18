"""Save and load a MaseGraph without pickling code (load types ``pt`` and ``mz``).

A saved file is ``torch.save`` of plain data, read back with
``torch.load(weights_only=True)``:

- ``format``: ``"machop.pt"`` or ``"machop.mz"``; ``version``: 1
- ``structure``: a JSON string: the registry name of the model, its dataset
  info, every parametrization chain (prune masks, k-means weight sharing,
  fixed point) and every module inserted into the fx graph (activation masks);
- ``state_dict``: the tensors, masks and codebooks included;
- ``meta`` (``mz`` only): JSON of each node's ``mase`` metadata.

Loading rebuilds the model from the registry, re-creates the recorded
structure from classes registered with `rebuildable` (nothing else can be
named in a file) and loads the state dict strictly. A class is rebuildable
when ``cls(**obj.spec(), **own_tensors)`` recreates it, ``own_tensors`` being
its direct parameters and buffers by name.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from machop.files import atomic_write

from .graph import MaseGraph, PassContext

logger = logging.getLogger(__name__)

REBUILDABLE: dict[str, type[nn.Module]] = {}
FORMAT_VERSION = 1


def rebuildable(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: allow ``cls`` to be named in a saved file."""
    REBUILDABLE[cls.__name__] = cls
    return cls


def _spec(module: nn.Module) -> dict:
    return module.spec() if hasattr(module, "spec") else {}


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}


def _rebuild(cls_name: str, spec: dict, state: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    if cls_name not in REBUILDABLE:
        raise ValueError(f"saved model names unknown class {cls_name!r}; known: {', '.join(sorted(REBUILDABLE))}")
    tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
    return REBUILDABLE[cls_name](**spec, **tensors)


def describe_structure(graph: MaseGraph) -> dict:
    """The JSON-able record of everything passes added to the base model."""
    ctx = graph.context
    if ctx.model_name is None or ctx.dataset_info is None:
        raise ValueError("cannot save: graph.context.model_name and dataset_info must name the registry model")
    inserted = []
    for node in graph.nodes:
        module = graph.module_of(node)
        if module is not None and type(module).__name__ in REBUILDABLE:
            user = next(iter(node.users))
            inserted.append({
                "name": node.target,
                "user": user.name,
                "arg": user.args.index(node),
                "class": type(module).__name__,
                "spec": _spec(module),
            })
    chains = []
    for qualname, module in graph.model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name, plist in module.parametrizations.items():
                for p in plist:
                    if type(p).__name__ not in REBUILDABLE:
                        raise ValueError(f"cannot save: parametrization {type(p).__name__} of {qualname} is not rebuildable")
                chains.append({
                    "module": qualname,
                    "tensor": tensor_name,
                    "chain": [{"class": type(p).__name__, "spec": _spec(p)} for p in plist],
                })
    return {
        "model": ctx.model_name,
        "dataset_info": asdict(ctx.dataset_info),
        "inserted": inserted,
        "parametrizations": chains,
    }


def save_graph(graph: MaseGraph, path: str | os.PathLike, load_type: str = "mz") -> Path:
    """Write ``graph`` to ``path`` atomically (``pt``: model; ``mz``: plus node metadata)."""
    if load_type not in ("pt", "mz"):
        raise ValueError(f"load_type must be 'pt' or 'mz', got {load_type!r}")
    payload: dict[str, Any] = {
        "format": f"machop.{load_type}",
        "version": FORMAT_VERSION,
        "structure": json.dumps(describe_structure(graph)),
        "state_dict": {k: v.detach().cpu() for k, v in graph.model.state_dict().items()},
    }
    if load_type == "mz":
        meta = {n.name: n.meta.get("mase", {}) for n in graph.nodes}
        payload["meta"] = json.dumps(meta, default=str)
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_payload(path: str | os.PathLike) -> dict:
    """``torch.load(weights_only=True)`` with a one-line error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise ValueError(f"{path} is not a readable PyTorch weights file ({type(e).__name__})") from None


def read_checkpoint(path: str | os.PathLike, load_type: str) -> tuple[dict[str, torch.Tensor], dict | None, dict | None]:
    """(state dict, structure or None, node metadata or None) of a ``pl``, ``pt`` or ``mz`` file.

    ``pl`` is a Lightning checkpoint (its ``model.`` prefix removed), ``pt`` a
    machop file or a plain state dict from any tool, ``mz`` a machop file.
    """
    payload = load_payload(path)
    if not isinstance(payload, dict):
        raise ValueError(f"{path} does not hold a state dict")
    if load_type == "pl":
        if "state_dict" not in payload:
            raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'); try --load-type pt")
        from machop.training.module import strip_prefix

        structure = payload.get("machop_structure")
        return strip_prefix(payload["state_dict"]), json.loads(structure) if structure else None, None
    fmt = payload.get("format")
    if fmt in ("machop.pt", "machop.mz"):
        if payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} has format version {payload.get('version')}, this machop reads {FORMAT_VERSION}")
        meta = json.loads(payload["meta"]) if "meta" in payload else None
        return payload["state_dict"], json.loads(payload["structure"]), meta
    if load_type == "mz":
        raise ValueError(f"{path} is not a machop mz file")
    if not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{path} is neither a machop file nor a plain state dict")
    return payload, None, None


def load_model(
    path: str | os.PathLike,
    load_type: str,
    model_name: str | None = None,
    dataset_info: Any = None,
    context: PassContext | None = None,
) -> MaseGraph:
    """Rebuild a MaseGraph from a ``pl``/``pt``/``mz``/``huffman`` file.

    Files that record their structure rebuild themselves; a plain state dict
    needs ``model_name`` and ``dataset_info`` to pick the architecture.
    """
    if load_type == "huffman":
        from machop.passes.graph.transforms.huffman import load_compressed

        return load_compressed(path, context)
    from machop.datasets import DatasetInfo
    from machop.models import get_model

    state, structure, meta = read_checkpoint(path, load_type)
    if structure is not None:
        model_name, dataset_info = structure["model"], DatasetInfo(**structure["dataset_info"])
    elif model_name is None or dataset_info is None:
        raise ValueError(f"{path} does not name its model: give the model and dataset")
    context = context or PassContext()
    context.model_name, context.dataset_info = model_name, dataset_info
    graph = MaseGraph(get_model(model_name, dataset_info), context=context)
    if structure is not None:
        apply_structure(graph, structure, state)
    try:
        graph.model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"{path} does not fit model {model_name!r}: {' '.join(first[1:2] or first[:1]).strip()}") from None
    for node in graph.nodes:
        if meta and node.name in meta:
            node.meta["mase"] = meta[node.name]
    return graph


def load_graph(path: str | os.PathLike, context: PassContext | None = None) -> MaseGraph:
    """Rebuild a MaseGraph saved by `save_graph` (either load type)."""
    return load_model(path, "pt", context=context)  # "pt" reads both machop formats


def load_weights(graph: MaseGraph, path: str | os.PathLike, load_type: str) -> None:
    """Load a checkpoint's weights into ``graph`` in place, keeping its masks and codebooks.

    A dense checkpoint's ``X.weight`` fills ``X.parametrizations.weight.original``
    of a pruned layer; every other key must match exactly.
    """
    state, _, _ = read_checkpoint(path, load_type)
    own = graph.model.state_dict()
    mapped = {}
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        reparam = f"{module}.parametrizations.{tensor}.original".lstrip(".")
        mapped[reparam if key not in own and reparam in own else key] = value
    missing = [k for k in own if k not in mapped and ".parametrizations." not in k]
    unexpected = [k for k in mapped if k not in own]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    graph.model.load_state_dict(mapped, strict=False)


def apply_structure(graph: MaseGraph, structure: dict, state: dict[str, torch.Tensor]) -> None:
    """Re-create inserted modules and parametrization chains on a fresh graph."""
    by_name = {n.name: n for n in graph.nodes}
    pending = list(structure["inserted"])
    while pending:  # in saved order, but a module feeding another inserted one waits until that one exists
        ready = [rec for rec in pending if rec["user"] in by_name]
        if not ready:
            raise ValueError(f"saved structure inserts before unknown node {pending[0]['user']!r}")
        for rec in ready:
            module = _rebuild(rec["class"], rec["spec"], state, rec["name"] + ".")
            new = graph.insert_before(by_name[rec["user"]], rec["arg"], rec["name"], module)
            by_name[new.name] = new
        pending = [rec for rec in pending if not any(rec is r for r in ready)]
    for rec in structure["parametrizations"]:
        module = graph.model.get_submodule(rec["module"])
        for i, p in enumerate(rec["chain"]):
            prefix = f"{rec['module']}.parametrizations.{rec['tensor']}.{i}."
            prefix = prefix.lstrip(".")
            parametrize.register_parametrization(
                module, rec["tensor"], _rebuild(p["class"], p["spec"], state, prefix), unsafe=True
            )
