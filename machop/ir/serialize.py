"""Save and load a MaseGraph without pickling code (load types ``pt`` and ``mz``).

A saved file is ``torch.save`` of plain data, read back with
``torch.load(weights_only=True)``:

- ``format``: ``"machop.pt"`` or ``"machop.mz"``; ``version``: 1
- ``structure``: a JSON string: the registry name of the model and its
  dataset info (None for your own model), its class name, the tensors tied
  together, every parametrization chain (prune masks, k-means weight
  sharing, fixed point) and every module inserted into the fx graph
  (activation masks);
- ``state_dict``: the tensors, masks and codebooks included;
- ``meta`` (``mz`` only): JSON of each node's ``mase`` metadata.

A file holds no code, so loading takes the model: a registry model is built
by name; your own model is passed in (``load_graph(path, model=MyNet())``).
The file's architecture is checked against the model first (an error names
the first tensor that differs, nothing is touched), then the recorded
structure is re-created from the classes of `machop.nn` (`REBUILDABLE`:
nothing else can be named in a file) and the state dict is loaded strictly.
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

from machop.datasets import DatasetInfo
from machop.files import atomic_write
from machop.models import MODELS, get_model
from machop.nn import is_rebuildable, rebuild, spec_of, stored, tied_tensors

from .graph import MaseGraph, PassContext

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class ArchitectureMismatch(ValueError):
    """A file's model differs from the model given to load it into; ``str(err)`` names the first difference."""


# --------------------------------------------------------------------------- signatures


def signature_of(state: dict[str, torch.Tensor]) -> list[list]:
    """``[key, shape, dtype]`` for every entry of a state dict, in its order."""
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]


def state_signature(model: nn.Module) -> list[list]:
    """The `signature_of` the model's state dict."""
    return signature_of(model.state_dict())


def base_signature(signature: list[list], structure: dict) -> list[list]:
    """The signature of the dense architecture underneath ``structure``.

    ``a.parametrizations.w.original`` becomes ``a.w``; other parametrization
    tensors and those of inserted modules are dropped.
    """
    inserted = tuple(rec["name"] + "." for rec in structure.get("inserted", []))
    out = []
    for key, shape, dtype in signature:
        if inserted and key.startswith(inserted):
            continue
        if ".parametrizations." in f".{key}":
            head, _, tail = f".{key}".partition(".parametrizations.")
            tensor, _, rest = tail.partition(".")
            if rest != "original":
                continue
            key = f"{head}.{tensor}".lstrip(".")
        out.append([key, shape, dtype])
    return out


def same_signature(a: list[list], b: list[list]) -> bool:
    """Signatures equal as sets of (key, shape, dtype): state-dict order does not matter for loading."""
    return len(a) == len(b) and {k: (s, d) for k, s, d in a} == {k: (s, d) for k, s, d in b}


def first_mismatch(got: list[list], want: list[list]) -> str:
    """The first difference between the model's signature ``got`` and the file's ``want``, in words."""
    got_map, want_map = {k: (s, d) for k, s, d in got}, {k: (s, d) for k, s, d in want}
    for key, shape, dtype in want:
        if key not in got_map:
            return f"the model has no tensor {key!r}"
        if got_map[key] != (shape, dtype):
            s, d = got_map[key]
            return f"{key!r} is {d}{s} in the model but {dtype}{shape} in the file"
    for key, _, _ in got:
        if key not in want_map:
            return f"the model has a tensor {key!r} that the file does not"
    return "no difference"


def check_architecture(graph: MaseGraph, signature: list[list], structure: dict | None) -> None:
    """Raise `ArchitectureMismatch` unless ``graph``'s dense model is the one the file was saved from."""
    structure = structure or {}
    got = state_signature(graph.model)
    want = base_signature(signature, structure) if structure else signature
    if not same_signature(got, want):
        raise ArchitectureMismatch(first_mismatch(got, want))
    want_ties = sorted(sorted(g) for g in structure.get("ties", []))
    got_ties = sorted(sorted(g) for g in tied_tensors(graph.model))
    if "ties" in structure and want_ties != got_ties:
        raise ArchitectureMismatch(f"tied tensors differ: the file ties {want_ties or 'none'}, the model {got_ties or 'none'}")


def describe_structure(graph: MaseGraph) -> dict:
    """The JSON-able record of the model and of everything passes added to it."""
    ctx = graph.context
    inserted = []
    for node in graph.nodes:
        module = graph.module_of(node)
        if module is not None and is_rebuildable(module):
            user = next(iter(node.users))
            inserted.append({
                "name": node.target,
                "user": user.name,
                "arg": user.args.index(node),
                "class": type(module).__name__,
                "spec": spec_of(module),
            })
    chains = []
    for qualname, module in graph.model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name, plist in module.parametrizations.items():
                for p in plist:
                    if not is_rebuildable(p):
                        raise ValueError(f"cannot save: parametrization {type(p).__name__} of {qualname} is not rebuildable")
                chains.append({
                    "module": qualname,
                    "tensor": tensor_name,
                    "chain": [{"class": type(p).__name__, "spec": spec_of(p)} for p in plist],
                })
    return {
        "model": ctx.model_name,
        "dataset_info": asdict(ctx.dataset_info) if ctx.dataset_info is not None else None,
        "class": type(graph.model).__name__,
        "ties": tied_tensors(graph.model),
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


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """A Lightning checkpoint's state dict with the LightningModule's ``model.`` prefix removed."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


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


def base_graph(
    structure: dict | None,
    model: nn.Module | MaseGraph | None,
    source: str,
    context: PassContext | None = None,
    model_name: str | None = None,
    dataset_info: Any = None,
) -> MaseGraph:
    """The dense graph a file's weights go into: ``model`` if given, else the registry model the file names.

    ``model_name`` and ``dataset_info`` name the registry model of a file
    that does not record one (a plain state dict).
    """
    if model is not None:
        graph = model if isinstance(model, MaseGraph) else MaseGraph(model)
        if context is not None:
            graph.context = context
        if structure and structure.get("model") and graph.context.model_name is None:
            graph.context.model_name = structure["model"]
        return graph
    if structure is not None and structure.get("model") is None:
        cls = structure.get("class") or "model"
        raise ValueError(
            f"{source} holds your own model ({cls}), not a registry model: a file holds no code, so pass the "
            f"model to load it into, e.g. load_graph(path, model={cls}(...)) or load_compressed(path, model={cls}(...))"
        )
    if structure is not None:
        model_name = structure["model"]
        dataset_info = DatasetInfo(**structure["dataset_info"]) if structure.get("dataset_info") else None
    if model_name is None or dataset_info is None:
        raise ValueError(f"{source} does not name its model: give the model and dataset")
    if model_name not in MODELS:
        raise ValueError(f"{source} holds a {model_name!r}, which is not in this machop's model registry")
    context = context if context is not None else PassContext()
    context.model_name, context.dataset_info = model_name, dataset_info
    return MaseGraph(get_model(model_name, dataset_info), context=context)


def load_model(
    path: str | os.PathLike,
    load_type: str,
    model: nn.Module | MaseGraph | None = None,
    model_name: str | None = None,
    dataset_info: Any = None,
    context: PassContext | None = None,
) -> MaseGraph:
    """Rebuild a MaseGraph from a ``pl``/``pt``/``mz`` file (see `base_graph` for which model)."""
    state, structure, meta = read_checkpoint(path, load_type)
    graph = base_graph(structure, model, str(path), context, model_name, dataset_info)
    try:
        check_architecture(graph, signature_of(state), structure)
    except ArchitectureMismatch as e:
        raise ArchitectureMismatch(f"{path} does not fit the model: {e}") from None
    if structure is not None:
        apply_structure(graph, structure, state)
    try:
        graph.model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ArchitectureMismatch(f"{path} does not fit the model: {' '.join(first[1:2] or first[:1]).strip()}") from None
    for node in graph.nodes:
        if meta and node.name in meta:
            node.meta["mase"] = meta[node.name]
    return graph


def load_graph(
    path: str | os.PathLike, model: nn.Module | MaseGraph | None = None, context: PassContext | None = None
) -> MaseGraph:
    """Rebuild a MaseGraph saved by `save_graph` (either load type).

    A registry model is rebuilt by the name in the file; for your own model
    pass it (``model=MyNet()``, or a `MaseGraph` of it when tracing needs
    ``leaf_modules``): its architecture is checked against the file first.
    """
    return load_model(path, "pt", model=model, context=context)  # "pt" reads both machop formats


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
    """Re-create inserted modules and parametrization chains on a fresh graph.

    Sites that hold one tied parameter get the same chain objects, so the
    tie (one parameter, one mask, one codebook) is kept.
    """
    by_name = {n.name: n for n in graph.nodes}
    pending = list(structure["inserted"])
    while pending:  # in saved order, but a module feeding another inserted one waits until that one exists
        ready = [rec for rec in pending if rec["user"] in by_name]
        if not ready:
            raise ValueError(f"saved structure inserts before unknown node {pending[0]['user']!r}")
        for rec in ready:
            module = rebuild(rec["class"], rec["spec"], state, rec["name"] + ".")
            new = graph.insert_before(by_name[rec["user"]], rec["arg"], rec["name"], module)
            by_name[new.name] = new
        pending = [rec for rec in pending if not any(rec is r for r in ready)]
    built: dict[int, list[nn.Module]] = {}  # id(stored parameter) → its chain
    for rec in structure["parametrizations"]:
        module = graph.model.get_submodule(rec["module"])
        key = id(stored(module, rec["tensor"]))
        if key not in built:
            prefix = f"{rec['module']}.parametrizations.{rec['tensor']}.".lstrip(".")
            built[key] = [rebuild(p["class"], p["spec"], state, f"{prefix}{i}.") for i, p in enumerate(rec["chain"])]
        for p in built[key]:
            parametrize.register_parametrization(module, rec["tensor"], p, unsafe=True)
