"""Graph passes and `REGISTRY`, the one table of them.

Every pass is ``fn(graph: MaseGraph, pass_args: dict | None = None) -> (graph, info)``.
A `PassEntry` holds everything else `ch transform` needs to know about a
pass: how to validate its TOML table, whether it changes the model (a
checkpoint is written after it), and an optional check of the table against
the built graph, so every step is checked before step 1 runs.
``PASSES`` is the same registry as name → function.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial, wraps
from typing import Any, Callable

from machop.config import NoOptions, from_dict
from machop.ir import MaseGraph

from .analysis.metadata import CommonMetadataArgs, add_common_metadata, init_metadata
from .analysis.pruning import add_pruning_metadata
from .analysis.quantization import summarize_quantization
from .analysis.sensitivity import check_sensitivity_args, parse_sensitivity_args, sensitivity_analysis_pass
from .transforms.huffman import (
    check_decode_args,
    check_encode_args,
    huffman_decode_pass,
    huffman_encode_pass,
    huffman_pass,
    parse_huffman_args,
)
from .transforms.prune import check_prune_args, parse_prune_args, prune_remove_pass, prune_transform_pass
from .transforms.shrink import check_shrink_args, parse_shrink_args, shrink_transform_pass
from .transforms.export import check_export_args, export_pass, parse_export_args
from .transforms.quantize import check_quantize_args, parse_quantize_args, quantize_transform_pass
from .transforms.train import check_train_args, parse_test_args, parse_train_args, test_pass, train_transform_pass

Check = Callable[[MaseGraph, Any, str, list[str]], None]


@dataclass(frozen=True)
class PassEntry:
    """One pass: its function, its table's parser, whether it changes the model, and its graph check.

    ``parse(table, path)`` returns the typed arguments or raises `ConfigError`
    naming the key; ``check(graph, args, path, earlier)`` sees the graph as
    built before step 1 and the names of the passes planned before this one.
    """

    fn: Callable[..., tuple[MaseGraph, dict]]
    parse: Callable[[dict | None, str], Any]
    changes_model: bool = True
    check: Check | None = None


_no_options = partial(from_dict, NoOptions)

REGISTRY: dict[str, PassEntry] = {
    "init_metadata": PassEntry(init_metadata, _no_options, changes_model=False),
    "add_common_metadata": PassEntry(add_common_metadata, partial(from_dict, CommonMetadataArgs), changes_model=False),
    "train": PassEntry(train_transform_pass, parse_train_args, check=check_train_args),
    "retrain": PassEntry(train_transform_pass, parse_train_args, check=check_train_args),  # the seed's name
    "test": PassEntry(test_pass, parse_test_args, changes_model=False),
    "prune": PassEntry(prune_transform_pass, parse_prune_args, check=check_prune_args),
    "prune_remove": PassEntry(prune_remove_pass, _no_options),
    "shrink": PassEntry(shrink_transform_pass, parse_shrink_args, check=check_shrink_args),
    "export": PassEntry(export_pass, parse_export_args, changes_model=False, check=check_export_args),  # ONNX
    "add_pruning_metadata": PassEntry(add_pruning_metadata, _no_options, changes_model=False),
    "quantize": PassEntry(quantize_transform_pass, parse_quantize_args, check=check_quantize_args),
    "summarize_quantization": PassEntry(summarize_quantization, _no_options, changes_model=False),
    "sensitivity": PassEntry(sensitivity_analysis_pass, parse_sensitivity_args, changes_model=False,
                             check=check_sensitivity_args),
    # the seed's [passes.huffman]: encode, decode, verify
    "huffman": PassEntry(huffman_pass, parse_huffman_args, check=check_encode_args),
    "huffman_encode": PassEntry(huffman_encode_pass, parse_huffman_args, changes_model=False, check=check_encode_args),
    "huffman_decode": PassEntry(huffman_decode_pass, parse_huffman_args, check=check_decode_args),
}



def _takes_graph(fn: Callable[..., tuple[MaseGraph, dict]]) -> Callable[..., tuple[MaseGraph, dict]]:
    """``fn``, refusing anything but a `MaseGraph` in one line (a plain model has no ``context``, no graph)."""

    @wraps(fn)
    def run(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
        if not isinstance(graph, MaseGraph):
            raise TypeError(f"{fn.__name__} takes a MaseGraph, not a {type(graph).__name__}: wrap the model first, "
                            "graph = MaseGraph(model, dummy_input=...)")
        return fn(graph, pass_args)

    return run


PASSES: dict[str, Callable[..., tuple[MaseGraph, dict]]] = {name: _takes_graph(entry.fn) for name, entry in REGISTRY.items()}

__all__ = [
    "PASSES", "REGISTRY", "PassEntry", "huffman_decode_pass", "huffman_encode_pass", "huffman_pass",
    "prune_transform_pass", "quantize_transform_pass", "train_transform_pass", "test_pass",
]
