"""The intermediate representation: a traced model plus metadata, and its files."""

from .graph import GraphTraceError, MaseGraph, PassContext, copy_model
from .serialize import ArchitectureMismatch, load_graph, save_graph

__all__ = ["ArchitectureMismatch", "GraphTraceError", "MaseGraph", "PassContext", "copy_model", "load_graph", "save_graph"]
