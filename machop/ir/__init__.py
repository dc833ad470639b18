"""The intermediate representation: a traced model plus metadata."""

from .graph import MaseGraph, PassContext
from .serialize import load_graph, rebuildable, save_graph

__all__ = ["MaseGraph", "PassContext", "load_graph", "save_graph", "rebuildable"]
