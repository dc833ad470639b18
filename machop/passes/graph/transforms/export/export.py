"""The export pass: ONNX through ``torch.onnx.export`` (the TorchScript exporter), weights folded first."""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from machop.config import ConfigError, check_path, check_range, from_dict, join, pass_path
from machop.files import atomic_write, output_problem
from machop.ir import MaseGraph

logger = logging.getLogger(__name__)

DEFAULT_FILENAME = "model.onnx"


@dataclass
class ExportArgs:
    """``[passes.export]``."""

    path: str | None = None
    opset: int = 17
    check: bool = True
    tolerance: float = 1e-4

    def validate(self, path: str) -> None:
        if self.path is not None and not self.path.strip():
            raise ConfigError(join(path, "path"), "must be a file path or \"NA\", got an empty string")
        check_path(self.path, join(path, "path"))
        check_range(self.opset, join(path, "opset"), 9, 25)
        check_range(self.tolerance, join(path, "tolerance"), 0, 1)


def parse_export_args(pass_args: dict | None, path: str = "passes.export") -> ExportArgs:
    """Validate a ``[passes.export]`` table (unknown keys are errors); ``pass_args`` is not modified."""
    return from_dict(ExportArgs, pass_args, path)


def check_export_args(graph: MaseGraph, args: ExportArgs, path: str, earlier: list[str] = ()) -> None:
    """Refuse, before step 1, a path that cannot be written and ``check = true`` without onnxruntime."""
    if args.path is not None and (problem := output_problem(args.path)) is not None:
        raise ConfigError(join(path, "path"), problem)
    if args.check:
        _onnxruntime(join(path, "check"))


def _onnxruntime(key: str):
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(key, "checking the file needs onnxruntime: pip install 'machop[onnx]' "
                               "(or onnx onnxruntime), or set check = false") from None
    return onnxruntime


def folded_copy(graph: MaseGraph) -> nn.Module:
    """A copy of ``graph.model`` whose parametrized tensors are plain parameters holding their effective values.

    ``graph`` is untouched. (The copy shares its parametrized classes with the
    original, so each copied module gets its plain class back instead of
    torch's ``remove_parametrizations``, which would edit that shared class.)
    """
    model = copy.deepcopy(graph.model)
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            with torch.no_grad():
                values = {name: getattr(module, name).detach().clone() for name in module.parametrizations.keys()}
            module.__class__ = type(module).__bases__[0]
            del module._modules["parametrizations"]
            for name, value in values.items():
                module._parameters[name] = nn.Parameter(value, requires_grad=False)
    return model.eval()


def _inputs(graph: MaseGraph) -> tuple[torch.Tensor, ...]:
    if graph.dummy_inputs is not None:
        return tuple(t.detach() for t in graph.dummy_inputs)
    info = graph.context.dataset_info
    if info is not None:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(2, info.in_channels, *info.image_size, generator=g),)
    raise ValueError("export needs an example input: set graph.dummy_input (or graph.context.dataset_info)")


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


def export_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Write ``graph``'s model as ONNX (weights folded), and (``check``) compare onnxruntime's outputs with the model's."""
    key = pass_path(graph.context.step, "passes.export")
    args = parse_export_args(pass_args, key)
    ort = _onnxruntime(join(key, "check")) if args.check else None
    if args.path is not None:
        target = Path(args.path)
    elif graph.context.output_dir is not None:
        target = Path(graph.context.output_dir) / DEFAULT_FILENAME
    else:
        raise ConfigError(join(key, "path"), "no file given and graph.context.output_dir is not set; set one of them")
    model = folded_copy(graph).cpu()
    inputs = tuple(t.cpu() for t in _inputs(graph))
    with torch.no_grad():
        expected = [t.float() for t in _tensors(model(*inputs))]
    in_names = [f"input_{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    out_names = [f"output_{i}" if len(expected) > 1 else "output" for i in range(len(expected))]
    axes = {name: {0: "batch"} for name in in_names + out_names}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(model, inputs, buffer, dynamo=False, opset_version=args.opset, input_names=in_names,
                              output_names=out_names, dynamic_axes=axes, do_constant_folding=True)
    except Exception as e:  # the exporter raises many types for an op ONNX cannot express
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RuntimeError(f"export: torch.onnx.export cannot write this model ({type(e).__name__}: {first})") from None
    data = buffer.getvalue()
    info = {"path": str(target), "onnx_bytes": len(data), "opset": args.opset,
            "inputs": [[n, list(t.shape)] for n, t in zip(in_names, inputs)],
            "outputs": [[n, list(t.shape)] for n, t in zip(out_names, expected)],
            "max_abs_diff": None, "verified": None}
    if ort is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        got = session.run(None, {n: t.numpy() for n, t in zip(in_names, inputs)})
        diff = max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected)) if expected else 0.0
        scale = max([float(e.abs().max()) for e in expected] + [1e-30])
        info["max_abs_diff"] = diff
        info["verified"] = diff <= args.tolerance * scale
        if not info["verified"]:
            raise RuntimeError(f"export: onnxruntime's outputs differ from the model's by {diff:.3g} "
                               f"(more than tolerance {args.tolerance} x {scale:.3g}); file not written")
    atomic_write(target, data)
    info["onnx_bytes"] = os.path.getsize(target)
    logger.info("wrote %s: %d bytes (ONNX opset %d)%s", target, info["onnx_bytes"], args.opset,
                f", onnxruntime max |diff| {info['max_abs_diff']:.3g}" if info["verified"] else "")
    return graph, info
