"""MaseGraph: a torch.fx trace of a model plus per-node metadata and the run context."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.fx as fx
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class PassContext:
    """What a TOML file cannot hold but a pass may need.

    The transform action fills it; in a notebook you fill it yourself, e.g.
    ``graph.context.data_module = MaseDataModule("fashion_mnist")``.
    """

    data_module: Any = None  # a MaseDataModule (Lightning); None: passes that need data refuse to run
    output_dir: Path | None = None  # where passes write files (checkpoints, the compressed model)
    model_name: str | None = None  # registry name, needed to rebuild the model from a saved file
    dataset_info: Any = None  # machop.datasets.DatasetInfo
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    seed: int = 0
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    max_epochs: int = 1
    limit_train_batches: float | int = 1.0
    log_every_n_steps: int = 50
    progress_bar: bool = True
    step: str | None = None  # label of the pass being run (names its checkpoint folder)
    loaded_from: str | None = None  # the checkpoint the model was loaded from (None: freshly initialised)

    def require_data(self, pass_name: str):
        """The data module, or a clear error saying how to provide one."""
        if self.data_module is None:
            raise RuntimeError(
                f"pass '{pass_name}' needs data: set graph.context.data_module "
                "(e.g. MaseDataModule('fashion_mnist')) or run it through `./ch transform`"
            )
        return self.data_module


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: tuple[type[nn.Module], ...]):
        super().__init__()
        self.leaf_modules = leaf_modules

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaf_modules) or super().is_leaf_module(m, qualname)


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
    ):
        if isinstance(model, fx.GraphModule):
            self.model = model
        else:
            graph = _Tracer(tuple(leaf_modules)).trace(model)
            name = model.__class__.__name__
            self.model = fx.GraphModule(model, graph, name)
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

    def layer_nodes(self, types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)) -> list[fx.Node]:
        """``call_module`` nodes whose module is one of ``types``, in graph order."""
        return [n for n in self.nodes if n.op == "call_module" and isinstance(self.module_of(n), types)]

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
        self.model.recompile()

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __str__(self) -> str:
        return str(self.model.graph)
