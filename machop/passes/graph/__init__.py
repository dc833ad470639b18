"""Graph passes and PASSES, the one registry (name → pass function).

Every pass is ``fn(graph: MaseGraph, pass_args: dict | None = None) -> (graph, info)``.
``PASS_ARGS`` maps the same names to the function that validates a pass's
TOML table (``parse(table, path) -> typed args``), so that `ch transform`
checks every table before anything runs.
"""

from __future__ import annotations

from typing import Callable

from machop.config import ConfigError

from .analysis.metadata import add_common_metadata, init_metadata
from .analysis.pruning import add_pruning_metadata
from .analysis.quantization import summarize_quantization
from .transforms.huffman import huffman_decode_pass, huffman_encode_pass, huffman_pass, parse_huffman_args
from .transforms.prune import parse_prune_args, prune_remove_pass, prune_transform_pass
from .transforms.quantize import parse_quantize_args, quantize_transform_pass
from .transforms.train import parse_test_args, parse_train_args, test_pass, train_transform_pass


def _no_args(pass_args: dict | None, path: str) -> None:
    if pass_args:
        raise ConfigError(f"{path}.{next(iter(pass_args))}", "unknown key; this pass takes no options")


PASSES: dict[str, Callable] = {
    "init_metadata": init_metadata,
    "add_common_metadata": add_common_metadata,
    "train": train_transform_pass,
    "retrain": train_transform_pass,  # the seed's name
    "test": test_pass,
    "prune": prune_transform_pass,
    "prune_remove": prune_remove_pass,
    "add_pruning_metadata": add_pruning_metadata,
    "quantize": quantize_transform_pass,
    "summarize_quantization": summarize_quantization,
    "huffman": huffman_pass,  # the seed's [passes.huffman]: encode, decode, verify
    "huffman_encode": huffman_encode_pass,
    "huffman_decode": huffman_decode_pass,
}

PASS_ARGS: dict[str, Callable] = {
    "init_metadata": _no_args,
    "add_common_metadata": _no_args,
    "train": parse_train_args,
    "retrain": parse_train_args,
    "test": parse_test_args,
    "prune": parse_prune_args,
    "prune_remove": _no_args,
    "add_pruning_metadata": _no_args,
    "quantize": parse_quantize_args,
    "summarize_quantization": _no_args,
    "huffman": parse_huffman_args,
    "huffman_encode": parse_huffman_args,
    "huffman_decode": parse_huffman_args,
}

# passes that only read the model: `ch transform` writes no checkpoint after them
READ_ONLY = {"init_metadata", "add_common_metadata", "add_pruning_metadata", "test", "summarize_quantization", "huffman_encode"}

__all__ = [
    "PASSES", "PASS_ARGS", "READ_ONLY", "huffman_decode_pass", "huffman_encode_pass", "huffman_pass",
    "prune_transform_pass", "quantize_transform_pass", "train_transform_pass", "test_pass",
]
