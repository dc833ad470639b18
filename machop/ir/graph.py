"""MaseGraph: a torch.fx trace of a model plus per-node metadata and the run context."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from machop.config import TrainSettings
from machop.nn import Weight, compressed_kind, flow_of, compressible_weights, fold_foreign_parametrizations, uncompressed_parameters

logger = logging.getLogger(__name__)


@dataclass
class PassContext:
    """What a TOML file cannot hold but a pass may need.

    The transform action fills it; in a notebook you fill it yourself, e.g.
    ``graph.context.data_module = MaseDataModule("fashion_mnist")``, or your
    own data: any Lightning ``LightningDataModule``, or
    ``machop.training.DataLoaders(train_loader, val_loader, test_loader)``.
    """

    data_module: Any = None  # a LightningDataModule; None: passes that need data refuse to run
    output_dir: Path | None = None  # where passes write files (checkpoints, the compressed model)
    model_name: str | None = None  # registry name (None for your own model: pass it when loading a file)
    dataset_info: Any = None  # machop.datasets.DatasetInfo of a registry dataset, if any
    shrunk: bool = False  # the registry model with channels removed (the shrink pass): files record it, load by name
    original_params: int | None = None  # parameters before the first shrink: every ratio is against them
    training: TrainSettings = field(default_factory=TrainSettings)  # train steps override it per step
    progress_bar: bool = True
    step: str | None = None  # label of the pass being run (names its checkpoint folder and its errors)
    loaded_from: str | None = None  # the checkpoint the model was loaded from (None: freshly initialised)
    teacher: nn.Module | None = None  # the run's dense baseline (frozen): what distillation learns from

    def require_data(self, pass_name: str):
        """The data module, or a clear error saying how to provide one."""
        if self.data_module is None:
            raise RuntimeError(
                f"pass '{pass_name}' needs data: set graph.context.data_module to a LightningDataModule "
                "(e.g. MaseDataModule('fashion_mnist'), or machop.training.DataLoaders(train, val, test) "
                "for your own DataLoaders), or run it through `./ch transform`"
            )
        return self.data_module


class GraphTraceError(ValueError):
    """torch.fx could not trace the model; ``str(err)`` says where and how to get around it."""


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: tuple[type[nn.Module], ...]):
        super().__init__()
        self.leaf_modules = leaf_modules

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaf_modules) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaf_modules: tuple[type[nn.Module], ...] = (), concrete_args: dict | None = None) -> fx.Graph:
    """The fx graph of ``model``; a failure is a `GraphTraceError` naming the module and the two ways out."""
    tracer = _Tracer(tuple(leaf_modules))
    try:
        return tracer.trace(model, concrete_args=concrete_args)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError, ... on control flow it cannot follow
        path = next(reversed(tracer.module_stack), "") if tracer.module_stack else ""
        inner = model.get_submodule(path) if path else model
        where = f"module {path!r} ({type(inner).__name__})" if path else f"{type(model).__name__}.forward"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GraphTraceError(
            f"torch.fx cannot trace {where}: {reason}. Keep that module whole as one graph node with "
            f"MaseGraph(model, leaf_modules=({type(inner).__name__},)), or fix the arguments its control flow "
            "depends on with MaseGraph(model, concrete_args={...})"
        ) from None


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, also of an ``fx.GraphModule`` whose root holds a parametrized parameter.

    (fx's own deepcopy rebuilds the root from its ``__dict__`` and misses a
    parametrized attribute: a parameter the graph reads itself, masked or
    shared by a pass. The copy is rebuilt around the copied originals and
    given the same parametrizations, so it has a class of its own.)
    """
    if not (isinstance(model, fx.GraphModule) and parametrize.is_parametrized(model)):
        return copy.deepcopy(model)
    state = copy.deepcopy(model.__dict__)
    chains = state["_modules"].pop("parametrizations")
    root = nn.Module()
    root._modules.update(state["_modules"])
    root._parameters.update(state["_parameters"])
    root._buffers.update(state["_buffers"])
    for name, plist in chains.items():
        root._parameters[name] = plist.original
    new = fx.GraphModule(root, state["_graph"], type(model).__bases__[0].__name__)
    new.train(model.training)
    for name, plist in chains.items():
        for p in plist:
            parametrize.register_parametrization(new, name, p, unsafe=True)
    return new


class MaseGraph:
    """A traced model. ``graph.model`` is the ``fx.GraphModule`` that passes edit.

    Args:
        model: the eager model (an ``fx.GraphModule`` is taken as it is).
        dummy_input: one batch used by ``add_common_metadata`` for shapes.
        leaf_modules: module types to keep as single ``call_module`` nodes.
        context: the run context; a fresh empty one by default.
    """

    def __init__(
        self,
        model: nn.Module,
        dummy_input: torch.Tensor | None = None,
        leaf_modules: tuple[type[nn.Module], ...] = (),
        context: PassContext | None = None,
        concrete_args: dict[str, Any] | None = None,
    ):
        folded = fold_foreign_parametrizations(model)
        if folded:
            logger.info("folded into plain weights (machop compresses the effective weight): %s", ", ".join(folded))
        if isinstance(model, fx.GraphModule):
            self.model = model
        else:
            self.model = fx.GraphModule(model, trace(model, leaf_modules, concrete_args), model.__class__.__name__)
        self.dummy_input = dummy_input
        self.leaf_modules = tuple(leaf_modules)
        self.context = context if context is not None else PassContext()

    # ------------------------------------------------------------------ helpers
    @property
    def fx_graph(self) -> fx.Graph:
        return self.model.graph

    @property
    def nodes(self) -> Iterator[fx.Node]:
        return iter(self.model.graph.nodes)

    def modules(self) -> dict[str, nn.Module]:
        """Qualified name → submodule of the traced model."""
        return dict(self.model.named_modules())

    def module_of(self, node: fx.Node) -> nn.Module | None:
        """The module a ``call_module`` node calls, else None."""
        return self.model.get_submodule(node.target) if node.op == "call_module" else None

    def layer_nodes(self, types: tuple[type[nn.Module], ...] | None = None) -> list[fx.Node]:
        """``call_module`` nodes of layers that mix channels (convolutions, Linear: `machop.nn.flow_of`), or whose
        module is one of ``types``, in graph order."""
        def wanted(m: nn.Module) -> bool:
            return flow_of(m) == "mix" if types is None else isinstance(m, types)

        return [n for n in self.nodes if n.op == "call_module" and wanted(self.module_of(n))]

    @property
    def dummy_inputs(self) -> tuple[torch.Tensor, ...] | None:
        """``dummy_input`` as the tuple of the model's positional inputs (a tensor, or several); None if unset."""
        x = self.dummy_input
        if isinstance(x, torch.Tensor):
            return (x,)
        if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
            return tuple(x)
        return None

    @property
    def device(self) -> torch.device:
        """Where the model lives: the device of its first parameter or buffer (CPU for a model with neither)."""
        for t in (*self.model.parameters(), *self.model.buffers()):
            return t.device
        return torch.device("cpu")

    def node_names(self) -> dict[str, str]:
        """Module qualname → the name of the first ``call_module`` node that calls it."""
        names: dict[str, str] = {}
        for n in self.nodes:
            if n.op == "call_module":
                names.setdefault(str(n.target), n.name)
        return names

    def call_nodes(self, qualname: str) -> list[fx.Node]:
        """Every ``call_module`` node calling the module ``qualname`` (several for a module used twice)."""
        return [n for n in self.nodes if n.op == "call_module" and n.target == qualname]

    def direct_parameters(self) -> dict[str, str]:
        """Qualified name of each parameter the graph reads itself (a ``get_attr`` node) → that node's name."""
        params = {}
        for n in self.nodes:
            if n.op == "get_attr":
                params.setdefault(str(n.target), n.name)
        return params

    def weights(self) -> list[Weight]:
        """Every compressible weight of the model, once each (see `machop.nn.compressible_weights`)."""
        return compressible_weights(self.model, self.node_names(), self.direct_parameters())

    def uncompressed(self) -> list[dict]:
        """Floating parameters of two or more dimensions that no pass compresses, with the reason."""
        return uncompressed_parameters(self.model, self.weights())

    def output_layers(self) -> set[str]:
        """Names of the layer nodes that produce the model's output.

        Walks back from the graph output through every node that is not a
        layer machop compresses (activations, pooling, reshapes, additions,
        getitem) and stops at the first layer on each path. The output
        channels of these layers are the model's outputs (a classifier's
        classes): channelwise pruning must not remove them by default.
        """
        found: set[str] = set()
        seen: set[fx.Node] = set()
        stack = [n for n in self.nodes if n.op == "output"]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            module = self.module_of(node)
            if module is not None and compressed_kind(module) is not None:
                found.add(node.name)
                continue
            stack.extend(node.all_input_nodes)
        return found

    def meta(self, node: fx.Node) -> dict:
        """The node's ``mase`` metadata dict (``common``, ``software`` sub-dicts)."""
        return node.meta.setdefault("mase", {"common": {}, "software": {}})

    def insert_before(self, user: fx.Node, arg_index: int, name: str, module: nn.Module) -> fx.Node:
        """Insert ``module`` (as submodule ``name``) on input ``arg_index`` of ``user``.

        Used by activation pruning: the new node is visible in ``print(graph)``
        and is saved and restored with the graph.
        """
        source = user.args[arg_index]
        self.model.add_submodule(name, module)
        with self.fx_graph.inserting_before(user):
            new = self.fx_graph.call_module(name, (source,))
        user.update_arg(arg_index, new)
        self.recompile()
        return new

    def remove_module_node(self, node: fx.Node) -> None:
        """Remove a single-input ``call_module`` node inserted by `insert_before`."""
        (source,) = node.args
        node.replace_all_uses_with(source)
        self.fx_graph.erase_node(node)
        self.model.delete_submodule(node.target)
        self.recompile()

    def recompile(self) -> None:
        self.fx_graph.lint()
        cls = type(self.model)
        if parametrize.is_parametrized(self.model) and "_wrapped_call" not in vars(cls):
            # a parametrized root is a subclass; fx would wrap its call around the base's, which calls back into it
            cls._wrapped_call = cls.__bases__[0]._wrapped_call
        self.model.recompile()

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __str__(self) -> str:
        return str(self.model.graph)
