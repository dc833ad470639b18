"""The export pass: ONNX through ``torch.onnx.export`` (the TorchScript exporter), weights folded first.

The file keeps the model's dtype (float32, float64, float16, bfloat16). With
``check``, onnxruntime's CPU provider must run it; where it cannot run that
dtype (it has no bfloat16 kernels, and no float64 convolution), the model is
exported in float32 instead (16-bit weights widened exactly, float64 ones
rounded), checked in float32, and ``info["fallback"]`` and a warning say why:
a checked file that runs beats an unchecked one. ``check = false`` writes the
model's dtype unchecked.
"""

from __future__ import annotations

import importlib
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
from machop.ir import MaseGraph, copy_model

from .int8 import MIN_OPSET, gather_kmeans, int8_plan, kmeans_layers, prepare, rewrite

logger = logging.getLogger(__name__)

DEFAULT_FILENAME = "model.onnx"


@dataclass
class ExportArgs:
    """``[passes.export]``."""

    path: str | None = None
    opset: int = 17
    check: bool = True
    tolerance: float | None = None  # None: TOLERANCE of the file's dtype (int8: INT8_TOLERANCE)
    int8: bool = False  # fixed-point layers as int8 operators (QDQ), see `int8`
    kmeans_gather: bool = False  # k-means weights stored as uint8 indices + codebook (a Gather)

    def validate(self, path: str) -> None:
        if self.path is not None and not self.path.strip():
            raise ConfigError(join(path, "path"), "must be a file path or \"NA\", got an empty string")
        check_path(self.path, join(path, "path"))
        check_range(self.opset, join(path, "opset"), 9, 25)
        check_range(self.tolerance, join(path, "tolerance"), 0, 1)
        if self.int8 and self.opset < MIN_OPSET:
            raise ConfigError(join(path, "opset"), f"int8 = true needs opset {MIN_OPSET} or later (per-channel "
                                                   f"QuantizeLinear), got {self.opset}")


# int8 = true: onnxruntime's outputs against machop's fake-quantized model, relative to the largest output.
# A folded batch norm and the int32 bias round differently from float (a fraction of a step), which can move
# a value across a rounding boundary of the next layer's input: one step there, not a wrong model.
INT8_TOLERANCE = 0.05


# check: max |difference| allowed, relative to the largest output, per dtype of the file (float16's 11-bit
# significand: onnxruntime and torch round and sum in other orders, ~1e-3 of the output apart)
TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-4, torch.float64: 1e-4, torch.float16: 1e-2,
                                       torch.bfloat16: 5e-2}


def parse_export_args(pass_args: dict | None, path: str = "passes.export") -> ExportArgs:
    """Validate a ``[passes.export]`` table (unknown keys are errors); ``pass_args`` is not modified."""
    return from_dict(ExportArgs, pass_args, path)


def check_export_args(graph: MaseGraph, args: ExportArgs, path: str, earlier: list[str] = ()) -> None:
    """Refuse, before step 1, a path that cannot be written and ``check = true`` without onnxruntime."""
    if args.path is not None and (problem := output_problem(args.path)) is not None:
        raise ConfigError(join(path, "path"), problem)
    if args.check:
        _onnxruntime(join(path, "check"))
    for key in ("int8", "kmeans_gather"):
        if getattr(args, key):
            _onnx(join(path, key))


def _optional(module: str, key: str, needs: str, otherwise: str):
    """``module`` imported, or a ConfigError at ``key`` saying how to install it (``needs``: what for)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(key, f"{needs}: pip install 'machop[onnx]' (or onnx onnxruntime), or {otherwise}") from None


def _onnx(key: str):
    return _optional("onnx", key, "rewriting the file needs the onnx package", "set it to false")


def _onnxruntime(key: str):
    return _optional("onnxruntime", key, "checking the file needs onnxruntime", "set check = false")


def folded_copy(graph: MaseGraph) -> nn.Module:
    """A copy of ``graph.model`` whose parametrized tensors are plain parameters holding their effective values.

    ``graph`` is untouched. (The copy shares its parametrized classes with the
    original, so each copied module gets its plain class back instead of
    torch's ``remove_parametrizations``, which would edit that shared class.)
    """
    model = copy_model(graph.model)
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            with torch.no_grad():
                values = {name: getattr(module, name).detach().clone() for name in module.parametrizations.keys()}
            module.__class__ = type(module).__bases__[0]
            del module._modules["parametrizations"]
            for name, value in values.items():
                module._parameters[name] = nn.Parameter(value, requires_grad=False)
    return model.eval()


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The one float dtype of ``model``'s parameters and buffers; None when it has none or several."""
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _inputs(graph: MaseGraph, dtype: torch.dtype | None) -> tuple[torch.Tensor, ...]:
    """``graph.dummy_inputs``, else a random image batch shaped by the data set, in the model's ``dtype``."""
    if graph.dummy_inputs is not None:
        return tuple(t.detach() for t in graph.dummy_inputs)
    info = graph.context.dataset_info
    if info is not None:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(2, info.in_channels, *info.image_size, generator=g).to(dtype or torch.float32),)
    raise ValueError("export needs an example input: set graph.dummy_input (or graph.context.dataset_info)")


def _widened(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Float inputs as float32 (for the float32 copy of a model onnxruntime cannot run in its dtype)."""
    return tuple(t.float() if t.is_floating_point() else t for t in inputs)


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _onnx_bytes(model: nn.Module, inputs: tuple[torch.Tensor, ...], in_names: list[str], out_names: list[str],
                opset: int, keep_batchnorm: bool = False) -> bytes:
    """``model`` as an ONNX file (batch dimension dynamic); a one-line RuntimeError if the exporter refuses it.

    ``keep_batchnorm``: export in the model's own mode (eval) without the exporter's Conv + BatchNorm fusion,
    so every weight is a constant of the file as the model holds it (onnxruntime fuses them when it loads)."""
    axes = {name: {0: "batch"} for name in in_names + out_names}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
            torch.onnx.export(model, inputs, buffer, dynamo=False, opset_version=opset, input_names=in_names,
                              output_names=out_names, dynamic_axes=axes, do_constant_folding=True, training=mode)
    except Exception as e:  # the exporter raises many types for an op ONNX cannot express
        raise RuntimeError(f"export: torch.onnx.export cannot write this model ({type(e).__name__}: "
                           f"{_first_line(e)})") from None
    return buffer.getvalue()


def _ort_outputs(ort, data: bytes, in_names: list[str], inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """onnxruntime's (CPU provider) outputs of the file ``data``; whatever it raises (no kernel for a dtype:
    NOT_IMPLEMENTED, INVALID_GRAPH; numpy has no bfloat16 for the inputs) propagates."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(g) for g in session.run(None, {n: t.numpy() for n, t in zip(in_names, inputs)})]


def export_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Write ``graph``'s model as ONNX (weights folded), and (``check``) compare onnxruntime's outputs with the model's.

    The file is in the model's dtype. With ``check``, where onnxruntime's CPU
    provider cannot run that dtype (bfloat16; float64 convolutions; float16
    where a kernel is missing), the model is exported in float32 instead
    (16-bit weights widened exactly, float64 ones rounded) and checked
    against the model in float32; ``info["fallback"]`` says why and a
    warning is logged. Set ``check = false`` to write the model's dtype
    unchecked. ``tolerance`` ("NA": `TOLERANCE` of the file's dtype, 1e-4
    for float32 and float64, 1e-2 for float16) bounds the difference,
    relative to the largest output.

    ``info``: ``path``, ``onnx_bytes``, ``opset``, ``inputs`` / ``outputs``
    (names, shapes), ``dtype`` (the file's) and ``model_dtype`` (None for a
    model of several float dtypes), ``fallback`` (None, or why the file is in
    float32), ``max_abs_diff``, ``tolerance`` and ``verified`` (None without
    ``check``), ``model_max_abs_diff`` (with a fallback: onnxruntime's float32
    outputs against the model's own, for information).
    """
    key = pass_path(graph.context.step, "passes.export")
    args = parse_export_args(pass_args, key)
    ort = _onnxruntime(join(key, "check")) if args.check else None
    if args.path is not None:
        target = Path(args.path)
    elif graph.context.output_dir is not None:
        target = Path(graph.context.output_dir) / DEFAULT_FILENAME
    else:
        raise ConfigError(join(key, "path"), "no file given and graph.context.output_dir is not set; set one of them")
    if args.int8 or args.kmeans_gather:
        info = _export_rewritten(graph, args, key, target, ort)
        atomic_write(target, info.pop("data"))
        info["onnx_bytes"] = os.path.getsize(target)
        logger.info("wrote %s: %d bytes (ONNX opset %d%s%s)%s", target, info["onnx_bytes"], args.opset,
                    ", int8" if args.int8 else "", ", k-means as Gather" if args.kmeans_gather else "",
                    f", onnxruntime max |diff| {info['max_abs_diff']:.3g}" if info["verified"] else "")
        return graph, info
    model = folded_copy(graph).cpu()
    dtype = model_dtype(model)
    inputs = tuple(t.cpu() for t in _inputs(graph, dtype))
    with torch.no_grad():
        expected = _tensors(model(*inputs))
    in_names = [f"input_{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    out_names = [f"output_{i}" if len(expected) > 1 else "output" for i in range(len(expected))]
    data = _onnx_bytes(model, inputs, in_names, out_names, args.opset)
    info = {"path": str(target), "onnx_bytes": len(data), "opset": args.opset,
            "inputs": [[n, list(t.shape)] for n, t in zip(in_names, inputs)],
            "outputs": [[n, list(t.shape)] for n, t in zip(out_names, expected)],
            "dtype": _name(dtype), "model_dtype": _name(dtype), "fallback": None,
            "max_abs_diff": None, "tolerance": None, "verified": None, "model_max_abs_diff": None}
    if ort is not None:
        try:
            got = _ort_outputs(ort, data, in_names, inputs)
        except Exception as e:  # onnxruntime raises plain Exceptions; numpy has no bfloat16
            if dtype in (None, torch.float32):
                raise RuntimeError(f"export: onnxruntime cannot run the file ({type(e).__name__}: "
                                   f"{_first_line(e)})") from None
            why = (f"onnxruntime's CPU provider cannot run this {_name(dtype)} model "
                   f"({type(e).__name__}: {_first_line(e)})")
            how = "rounded" if dtype.itemsize > 4 else "widened exactly"
            logger.warning("export: %s; exporting it in float32 (weights %s)", why, how)
            own, model, inputs, dtype = expected, model.float(), _widened(inputs), torch.float32
            with torch.no_grad():
                expected = _tensors(model(*inputs))
            data = _onnx_bytes(model, inputs, in_names, out_names, args.opset)
            info.update(dtype="float32", fallback=f"{why}: exported in float32, weights {how}")
            try:
                got = _ort_outputs(ort, data, in_names, inputs)
            except Exception as e2:
                raise RuntimeError(f"export: onnxruntime cannot run the file, in {info['model_dtype']} nor in float32 "
                                   f"({type(e2).__name__}: {_first_line(e2)})") from None
            info["model_max_abs_diff"] = _max_diff(got, own)
        tolerance = args.tolerance if args.tolerance is not None else TOLERANCE.get(dtype, TOLERANCE[torch.float32])
        diff = _max_diff(got, expected)
        scale = max([float(e.double().abs().max()) for e in expected] + [1e-30])
        info.update(max_abs_diff=diff, tolerance=tolerance, verified=diff <= tolerance * scale)
        if not info["verified"]:
            raise RuntimeError(f"export: onnxruntime's outputs differ from the model's by {diff:.3g} "
                               f"(more than tolerance {tolerance} x {scale:.3g}); file not written")
    atomic_write(target, data)
    info["onnx_bytes"] = os.path.getsize(target)
    logger.info("wrote %s: %d bytes (ONNX opset %d, %s)%s", target, info["onnx_bytes"], args.opset, info["dtype"],
                f", onnxruntime max |diff| {info['max_abs_diff']:.3g}" if info["verified"] else "")
    return graph, info


def _export_rewritten(graph: MaseGraph, args: ExportArgs, key: str, target: Path, ort) -> dict:
    """``int8`` and/or ``kmeans_gather``: the file rewritten (see `int8`), in float32, checked against the model.

    Returns the info with the file's bytes under ``"data"``.
    """
    _onnx(join(key, "int8" if args.int8 else "kmeans_gather"))
    model = folded_copy(graph).cpu()
    own = model_dtype(model)
    if own not in (None, torch.float32):
        model = model.float()
    inputs = _widened(tuple(t.cpu() for t in _inputs(graph, torch.float32)))
    with torch.no_grad():
        expected = _tensors(model(*inputs))
    in_names = [f"input_{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    out_names = [f"output_{i}" if len(expected) > 1 else "output" for i in range(len(expected))]
    info = {"path": str(target), "onnx_bytes": None, "opset": args.opset,
            "inputs": [[n, list(t.shape)] for n, t in zip(in_names, inputs)],
            "outputs": [[n, list(t.shape)] for n, t in zip(out_names, expected)],
            "dtype": "float32", "model_dtype": _name(own),
            "fallback": None if own in (None, torch.float32) else f"the {_name(own)} model is rewritten in float32",
            "max_abs_diff": None, "tolerance": None, "verified": None, "model_max_abs_diff": None,
            "int8": None, "kmeans_gather": None}
    if args.int8:
        plan, floats = int8_plan(graph)
        rows = prepare(model, plan)
    data = _onnx_bytes(model, inputs, in_names, out_names, args.opset, keep_batchnorm=args.kmeans_gather)
    if args.int8:
        try:
            data, counts = rewrite(data)
        except Exception as e:  # onnx's checker and protobuf raise their own types
            raise RuntimeError(f"export: the int8 rewrite failed ({type(e).__name__}: {_first_line(e)})") from None
        int8_rows = [r for r in rows if r["arithmetic"] == "int8"]
        info["int8"] = {"layers": rows, "float_layers": floats, **counts}
        if counts["float_kernels"]:
            logger.info("int8: %d of %d int8 layer(s) run as float kernels in onnxruntime (output not quantized): %s",
                        len(counts["float_kernels"]), len(int8_rows),
                        ", ".join(k["node"] for k in counts["float_kernels"]))
        logger.info("int8: %d layer(s) in integer arithmetic (%s); float: %s", len(int8_rows),
                    ", ".join(r["name"] for r in int8_rows) or "none",
                    "; ".join(f"{f['name']} ({f['reason']})" for f in floats
                              + [r for r in rows if r["arithmetic"] != "int8"]) or "none")
    if args.kmeans_gather:
        data, stored, missing = gather_kmeans(data, kmeans_layers(graph))
        info["kmeans_gather"] = {"layers": stored, "not_stored": missing}
        for m in missing:
            logger.warning("export: k-means layer %s kept as float weights: %s", m["name"], m["reason"])
    if ort is not None:
        try:
            got = _ort_outputs(ort, data, in_names, inputs)
        except Exception as e:
            raise RuntimeError(f"export: onnxruntime cannot run the file ({type(e).__name__}: {_first_line(e)})") from None
        tolerance = args.tolerance if args.tolerance is not None else (
            INT8_TOLERANCE if args.int8 else TOLERANCE[torch.float32])
        diff = _max_diff(got, expected)
        scale = max([float(e.double().abs().max()) for e in expected] + [1e-30])
        info.update(max_abs_diff=diff, tolerance=tolerance, verified=diff <= tolerance * scale)
        if got and got[0].dim() == 2 and got[0].shape[1] > 1:
            info["argmax_agreement"] = float((got[0].argmax(1) == expected[0].argmax(1)).float().mean())
        if not info["verified"]:
            raise RuntimeError(f"export: onnxruntime's outputs differ from the model's by {diff:.3g} "
                               f"(more than tolerance {tolerance} x {scale:.3g}); file not written")
    info["data"] = data
    return info


def _max_diff(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest |difference| between onnxruntime's outputs and torch's, compared in float64."""
    return max((float((g.double() - e.double()).abs().max()) for g, e in zip(got, expected)), default=0.0)


def _name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")
