"""`ch export`: a file machop made (any load type) as an ONNX file, through the export pass."""

from __future__ import annotations

from machop.config import Config, ConfigError
from machop.passes.graph import REGISTRY

from .common import build_graph, console, print_effective

OPTIONS = {"export.path": "--output", "export.int8": "--int8"}  # the pass's keys as the command line names them


def export(config: Config, output: str | None, int8: bool = False, progress: bool = True) -> int:
    """Open ``config.load_name`` (type and model read from the file), export it to ``output`` (``.onnx``).

    ``int8``: the export pass's ``int8`` argument (integer weights where the
    model's quantization allows). The file is checked with onnxruntime, as
    the pass checks it.
    """
    if config.load_name is None:
        raise ConfigError("--load", "is required: the file to export (.ckpt, .pt, .mz or .mchz; its type is read "
                                    "from the file)")
    if output is None:
        raise ConfigError("--output", "is required: the ONNX file to write (PATH.onnx)")
    table = {"path": output} | ({"int8": True} if int8 else {})
    entry = REGISTRY["export"]
    try:
        args = entry.parse(table, "export")
        graph = build_graph(config, progress)
        entry.check(graph, args, "export", [])
    except ConfigError as e:
        raise ConfigError(OPTIONS.get(e.key, e.key), e.message) from None
    print_effective(config, ["model", "dataset", "load_name", "load_type"])
    try:
        graph, info = entry.fn(graph, table)
    except RuntimeError as e:  # the exporter or onnxruntime refused this model: one line, nothing written
        message = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = message.removeprefix("export: ")
        raise ConfigError("--load", f"{config.load_name} cannot be exported: {why}") from None
    checked = f", onnxruntime max |diff| {info['max_abs_diff']:.3g}" if info.get("verified") else ""
    console.print(f"ONNX file: {info['path']} ({info['onnx_bytes']} bytes, opset {info['opset']}, {info['dtype']}"
                  f"{checked})")
    return 0
