"""machop: Deep Compression (prune, quantize, retrain, Huffman-code) as torch.fx graph passes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"


def load_compressed(path: str | os.PathLike, model: nn.Module | None = None, saved_class: str | None = None) -> nn.Module:
    """The model decoded from a compressed ``.mchz`` file, ready to run.

    ``model``: an instance of your own model class (its weights are
    replaced; its architecture is checked against the file first; a shrunk
    model's layers are resized to the file's shapes), or None for a model of
    machop's registry, which the file names. The file records the class it
    was saved from and opens only into that class: a file of ``TinyNet``
    into ``OtherNet()`` is an error naming both, even with the same shapes.
    ``saved_class="TinyNet"`` opens it into a class renamed since.
    """
    from machop.ir.mchz import load_compressed as load  # torch: not at `import machop`

    graph = load(path, model=model, saved_class=saved_class)
    graph.model.meta["machop_context"] = graph.context  # the registry model it is: `plain_model` rebuilds it
    return graph.model


def plain_model(source: nn.Module | str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """The compressed model as an instance of its own class, every compressed weight baked into a plain tensor.

    ``source``: a `MaseGraph`, the ``fx.GraphModule`` `load_compressed`
    returns (or ``graph.model``), a ``.mchz`` path, or your own model whose
    layers carry machop's parametrizations. The result is ``model`` (an
    instance of your class, changed in place and returned; a copy if it is
    the instance the graph was traced from) or, with ``model=None``, a new
    instance of the registry model the graph or file names (for your own
    model's graph or file, pass ``model=MyNet()``). Layers the shrink pass
    made smaller are resized to the compressed shapes first. Its parameters
    are plain dense tensors holding exactly the values the compressed model
    computes with (masks applied, k-means ``centroids[index]``, fixed point
    rounded, 16-bit biases rounded): no parametrization, no ``original``,
    no mask or codebook; outputs equal the compressed model's bit for bit.
    A ``weight_norm`` / ``spectral_norm`` of your class is folded into a
    plain weight, as `MaseGraph` folded it before compressing.

    Modules a pass inserted into the graph (activation pruning, input
    quantizers) change a layer's input, which a plain class cannot hold:
    such a source is refused with a `ValueError` naming them
    (``PASSES["prune_remove"]`` folds activation channel masks into the next
    layer's weights first). Any other mismatch (class, a tensor the class
    does not have, a shape) is a one-line `ValueError`.
    """
    import copy

    import torch.fx as fx

    from machop.ir import MaseGraph
    from machop.ir.mchz import load_compressed as load
    from machop.ir.serialize import class_name
    from machop.ir.skeleton import ShrunkShapeError, resize_layers
    from machop.models import get_model
    from machop.nn import (baked_state, fold_foreign_parametrizations, has_compression, inserted_modules, load_baked,
                           unparametrized_copy)

    context = None
    if isinstance(source, (str, os.PathLike)):
        graph = load(source, model=None if model is None else copy.deepcopy(model))
        root, context = graph.model, graph.context
    elif isinstance(source, MaseGraph):
        root, context = source.model, source.context
    elif isinstance(source, fx.GraphModule):
        root = source
    elif hasattr(source, "state_dict"):
        root = source
        if model is None:
            model = unparametrized_copy(source)
    else:
        raise TypeError(f"plain_model takes a MaseGraph, a model or a .mchz path, not {type(source).__name__}")
    if context is None or context.model_name is None:
        context = getattr(root, "meta", {}).get("machop_context", context)

    inserted = inserted_modules(root)
    if inserted:
        kinds = sorted({type(root.get_submodule(q)).__name__ for q in inserted})
        raise ValueError(f"{', '.join(inserted[:4])}{' ...' if len(inserted) > 4 else ''}: module(s) a pass inserted "
                         f"into the graph ({', '.join(kinds)}) change a layer's input, which a plain model cannot "
                         "hold; run PASSES['prune_remove'] first to fold activation channel masks into weights, "
                         "or keep the graph's model (activation quantizers and per-sample pruning need it)")
    if model is None:
        if context is None or context.model_name is None:
            raise ValueError(f"{class_name(root)} is not a registry model: pass model={class_name(root)}(), a fresh "
                             "instance of your class, to get it back")
        model = get_model(context.model_name, context.dataset_info)
    elif model is not root and ({id(m) for m in model.modules()} & {id(m) for m in root.modules()}
                                or has_compression(model)):
        model = unparametrized_copy(model)  # the instance the graph was traced from (it may still hold its masks)
    if class_name(model) != class_name(root):
        raise ValueError(f"the compressed model is a {class_name(root)}, not the {class_name(model)} given")

    fold_foreign_parametrizations(model)  # weight_norm, spectral_norm: the graph compressed the weight they computed
    state = baked_state(root)
    try:
        resize_layers(model, {k: list(v.shape) for k, v in state.items()}, bounded=True)
    except ShrunkShapeError as e:
        raise ValueError(str(e)) from None
    load_baked(model, state, source=f"the compressed {class_name(root)}")
    return model.train(root.training)
