"""The Huffman passes: write the compressed file, read it back, or both with a bit-exact check.

```toml
[passes.huffman]
is_huffman = true      # false: skip (the seed's switch)
index_bits = 5         # width of a relative position (gap) symbol, 1..16; a longer gap uses fillers
allow_raw = false      # true: store compressible weights that are not quantized uncompressed instead of failing
path = "NA"            # file to write/read; default: <graph.context.output_dir>/model.mchz
verify = true          # huffman: check the decoded model's outputs equal the encoded one's, bit for bit
saved_class = "NA"     # huffman_decode: the class the file was saved from, when yours has been renamed since
```

A file opens only into a model of the class it records (``MyNet``'s file
into a graph of ``MyNet()``): two classes with the same shapes would take
each other's weights silently. ``saved_class`` names the recorded class
for a class renamed since.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from machop.config import ConfigError, check_path, check_range, from_dict, join, pass_path
from machop.files import BadFileError, NoSuchFile, output_problem
from machop.ir import MaseGraph, PassContext, copy_model
from machop.ir.serialize import class_name
from machop.nn import is_rebuildable, require_finite, weight_codes

from machop.ir.mchz import decode_model, encode_model, load_compressed, read_file, read_header
from machop.ir.mchz.format import write_atomic

logger = logging.getLogger(__name__)

DEFAULT_FILENAME = "model.mchz"


@dataclass
class HuffmanArgs:
    """``[passes.huffman]`` (also ``huffman_encode`` / ``huffman_decode``)."""

    is_huffman: bool = True
    index_bits: int = 5
    allow_raw: bool = False
    path: str | None = None
    verify: bool = True
    saved_class: str | None = None
    live_maps: bool = True  # false: every layer's positions over its whole weight (no keep-bitmaps; for comparison)

    def validate(self, path: str) -> None:
        check_range(self.index_bits, join(path, "index_bits"), 1, 16)
        if self.saved_class is not None and not self.saved_class.isidentifier():
            raise ConfigError(join(path, "saved_class"), f"must be a class name or \"NA\", got {self.saved_class!r}")
        if self.path is not None and not self.path.strip():
            raise ConfigError(join(path, "path"), "must be a file path or \"NA\", got an empty string")
        check_path(self.path, join(path, "path"))


def parse_huffman_args(pass_args: dict | None, path: str = "passes.huffman") -> HuffmanArgs:
    """Validate a ``[passes.huffman]`` table (unknown keys are errors); ``pass_args`` is not modified."""
    return from_dict(HuffmanArgs, pass_args, path)


def check_encode_args(graph: MaseGraph, args: HuffmanArgs, path: str, earlier: list[str]) -> None:
    """Refuse a file ``path`` that cannot be written, and a Huffman step planned before any quantize step while
    ``graph`` has unquantized weights."""
    if not args.is_huffman:
        return
    if args.path is not None and (problem := output_problem(args.path)) is not None:
        raise ConfigError(join(path, "path"), problem)
    if args.allow_raw or "quantize" in earlier:
        return
    raw = [w.name for w in graph.weights() if weight_codes(w.module, w.tensor_name) is None]
    if raw:
        raise ConfigError(path, f"comes before any quantize step, but weight(s) {', '.join(raw[:5])} are not quantized: "
                                "put a [passes.quantize] table before it, or set allow_raw = true")


def check_decode_args(graph: MaseGraph, args: HuffmanArgs, path: str, earlier: list[str]) -> None:
    """Refuse a decode step whose file is not written by an earlier step and is not a machop model file.

    Cheap: reads the file's 20-byte prefix and its (bounded) header only
    (`model.read_header`): a missing path, a directory, a FIFO or device, a
    file of another kind, or one whose size or header is inconsistent is
    refused before the run starts. Sections and architecture are checked when
    the step runs.
    """
    if not args.is_huffman or {"huffman", "huffman_encode"} & set(earlier):
        return
    if args.path is None:
        raise ConfigError(join(path, "path"), "no earlier huffman_encode step writes the file: give the path of one")
    try:
        read_header(args.path)
    except NoSuchFile:
        raise ConfigError(join(path, "path"), f"no such file: {args.path}") from None
    except BadFileError as e:  # a CompressedFileError, or a path that is not a regular file
        raise ConfigError(join(path, "path"), str(e)) from None


def compressed_path(graph: MaseGraph, args: HuffmanArgs, path: str = "passes.huffman") -> Path:
    """``args.path``, else ``<graph.context.output_dir>/model.mchz``."""
    if args.path is not None:
        return Path(args.path)
    if graph.context.output_dir is None:
        raise ConfigError(
            join(path, "path"),
            "no file given and graph.context.output_dir is not set; set one of them (./ch transform sets output_dir)",
        )
    return Path(graph.context.output_dir) / DEFAULT_FILENAME


def huffman_encode_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Write the Deep Compression file of ``graph`` (atomically) and report its size.

    ``info``: ``path``, ``file_bytes`` (size on disk), ``layers`` (per layer:
    nnz, bits per weight, bits per index, bytes and their split into
    ``values_bytes``, ``positions_bytes``, ``codebook_bytes``, ...) and
    ``total`` (dense fp32 bytes = 4 x float parameters of the dense model,
    weights and biases; ``ratio`` = dense bytes / file bytes; ``parts``:
    values, positions, codebooks, raw, header bytes, adding up to the
    file). The graph is unchanged.
    """
    path = pass_path(graph.context.step, "passes.huffman_encode")
    args = parse_huffman_args(pass_args, path)
    _decode_only(args, path)
    if not args.is_huffman:
        return graph, {"is_huffman": False}
    return graph, _encode(graph, args, path)


def huffman_decode_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Load a compressed file into ``graph`` (see `decode_model` for when a new graph is returned).

    A graph of your own model must be of the class the file records
    (``saved_class``: the class it was saved as, for a renamed one); a
    shrunk model's graph is resized to the file's shapes first.
    """
    path = pass_path(graph.context.step, "passes.huffman_decode")
    args = parse_huffman_args(pass_args, path)
    if not args.is_huffman:
        return graph, {"is_huffman": False}
    return _decode(graph, compressed_path(graph, args, path), args.saved_class)


def huffman_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """``[passes.huffman]``: encode, rebuild the model from the file alone, and (``verify``) check outputs are bit-identical.

    A registry model is rebuilt by name; your own model is rebuilt on a
    dense copy of it (every mask, codebook and inserted module taken away
    first), so the check covers everything the file must restore. It runs the
    model in eval mode on ``graph.dummy_input``, or on a fixed random batch
    shaped by ``graph.context.dataset_info``. ``info`` is the encode info plus ``verified``.
    """
    path = pass_path(graph.context.step, "passes.huffman")
    args = parse_huffman_args(pass_args, path)
    _decode_only(args, path)
    if not args.is_huffman:
        return graph, {"is_huffman": False}
    batch = _check_batch(graph) if args.verify else None
    before = _outputs(graph, batch) if batch is not None else None
    info = _encode(graph, args, path)
    # rebuild from the file alone, so the check also covers what a fresh reader restores (structure, specs)
    model = None if graph.context.model_name is not None else dense_copy(graph)
    decoded = load_compressed(info["path"], model=model, context=graph.context)
    decoded.dummy_input = graph.dummy_input
    graph = decoded
    info["verified"] = False
    if before is not None:
        after = _outputs(graph, batch)
        if len(before) != len(after) or not all(torch.equal(a, b) for a, b in zip(before, after)):
            diff = max(((a.float() - b.float()).abs().max().item() for a, b in zip(before, after)), default=float("inf"))
            raise RuntimeError(f"huffman: the decoded model's outputs differ from the encoded model's (max |diff| {diff})")
        info["verified"] = True
    return graph, info


def _decode_only(args: HuffmanArgs, path: str) -> None:
    """Refuse ``saved_class`` on a step that writes the file: it names the class of a file being read."""
    if args.saved_class is not None:
        raise ConfigError(join(path, "saved_class"), "only huffman_decode reads a file saved from another class; "
                                                     "remove it here")


def _encode(graph: MaseGraph, args: HuffmanArgs, key_path: str) -> dict:
    require_finite(graph.model, key_path)  # a NaN has no code: name its tensor
    target = compressed_path(graph, args, key_path)
    data, report = encode_model(graph, index_bits=args.index_bits, allow_raw=args.allow_raw, live_maps=args.live_maps)
    write_atomic(target, data)
    file_bytes = os.path.getsize(target)
    total = report["total"]
    logger.info("wrote %s: %d bytes, %.1fx smaller than dense fp32 (%d bytes); %.2f bits/weight + %.2f bits/index",
                target, file_bytes, total["ratio"], total["dense_bytes"], total["bits_per_weight"],
                total["bits_per_index"])
    logger.info("bytes: %s", ", ".join(f"{part} {n}" for part, n in total["parts"].items()))
    return {"is_huffman": True, "path": str(target), "file_bytes": file_bytes, **report}


def _decode(graph: MaseGraph, source: Path, saved_class: str | None = None) -> tuple[MaseGraph, dict]:
    """Decode ``source`` into ``graph`` (see `decode_model`); a missing file is `machop.files.NoSuchFile`."""
    graph = decode_model(read_file(source), graph, name=str(source), saved_class=saved_class)
    return graph, {"is_huffman": True, "path": str(source), "file_bytes": os.path.getsize(source)}


def dense_copy(graph: MaseGraph) -> MaseGraph:
    """A copy of ``graph`` with every mask, codebook and inserted module taken away: the dense architecture.

    ``graph`` itself is untouched. (torch's ``remove_parametrizations`` would
    delete the weight property from the parametrized class the copy shares
    with the original, so each copied module gets its plain class back instead.)
    """
    model = copy_model(graph.model)
    type(model).__name__ = class_name(graph.model)  # fx's deepcopy names its own new class "GraphModule"
    copied = MaseGraph(model, context=graph.context)
    for node in [n for n in copied.nodes if n.op == "call_module" and is_rebuildable(copied.module_of(n))]:
        copied.remove_module_node(node)
    for module in list(copied.model.modules()):
        if parametrize.is_parametrized(module):
            originals = {name: plist.original for name, plist in module.parametrizations.items()}
            module.__class__ = type(module).__bases__[0]  # the class parametrize derived the Parametrized* one from
            del module._modules["parametrizations"]
            module._parameters.update(originals)
    return copied


def _check_batch(graph: MaseGraph) -> tuple[torch.Tensor, ...] | None:
    """The model's inputs for the check: ``graph.dummy_inputs``, else a random batch shaped by the data set."""
    if graph.dummy_inputs is not None:
        return graph.dummy_inputs
    info = graph.context.dataset_info
    if info is None:
        logger.warning("huffman: no dummy_input and no dataset_info; outputs not compared")
        return None
    g = torch.Generator().manual_seed(0)
    return (torch.randn(4, info.in_channels, *info.image_size, generator=g),)


def _tensors(out) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or tuples, lists and dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu()]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


@torch.no_grad()
def _outputs(graph: MaseGraph, batch: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    model = graph.model
    training = model.training
    model.eval()
    try:
        return _tensors(model(*(t.to(graph.device) for t in batch)))
    finally:
        model.train(training)
