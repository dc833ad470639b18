#!/usr/bin/env python
"""Benchmark: machop's int8 ONNX export against the fp32 export and onnxruntime's own static quantization.

For each model (VGG7, ResNet-18 from machop's registry, CIFAR-shaped 3x32x32
colored Fashion-MNIST as in `speedup_bench`) and each variant - ``dense``
and ``shrunk`` (50% of the channels removed by machop's channelwise prune +
shrink, then fine-tuned) - three ONNX files of the same trained model:

1. **fp32**: machop's ``export`` pass (plain weights);
2. **machop int8**: ``quantize`` with the ``integer`` arithmetic, 8 bits,
   ``weight_frac_width = data_in_frac_width = "auto"`` (calibrated on
   ``--calib-images`` training images), every Conv2d and Linear, biases
   float; then ``export`` with ``int8 = true`` (QDQ; the check against
   machop's fake-quantized model runs in the pass);
3. **ort static**: ``onnxruntime.quantization.quantize_static`` of file 1
   (QDQ, its defaults: uint8 activations, int8 weights, MinMax calibration,
   per-tensor) calibrated on the same images.

Measured per file: size, test accuracy in onnxruntime on ``--test-images``
test images, and latency at batch 1 and ``--batch`` (64): onnxruntime
(CPUExecutionProvider, ``--threads`` intra-op threads (2), inter-op 1,
sequential), `timing.interleaved` rounds over the three files of a variant
(order flipped every round), each call the mean of ``k`` runs (about
``--call-seconds``); quoted: median and (lowest-highest) per-round ratios.
machop's fake-quantized model's accuracy (torch) is the reference for the
int8 file's. The combined figure is shrunk int8 against dense fp32, timed
in the same rounds as the shrunk variant's files (dense fp32 joins them).

Run::

    python bench/int8_bench.py [--models vgg7 resnet18] [--rounds 7] [--quick] [--out bench/results]

Writes ``int8.json`` and ``int8.md`` under ``--out``. Timings from a shared or
loaded machine are only indicative: the load average is recorded.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import speedup_bench as sb  # noqa: E402
from timing import ratios, spread  # noqa: E402

from machop.ir import MaseGraph  # noqa: E402
from machop.models import get_model  # noqa: E402
from machop.passes.graph import PASSES  # noqa: E402

FILES = ("fp32", "machop_int8", "ort_static")
GROUP3 = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 8, "weight_frac_width": 4,
          "bias_width": 8, "bias_frac_width": 4}  # ADLS group 3's fixed widths (configs/examples/group3.toml)
INTEGER = {"name": "integer", "data_in_width": 8, "data_in_frac_width": "auto", "weight_width": 8,
           "weight_frac_width": "auto", "bias_width": "NA", "bias_frac_width": "NA"}


class _Calibration:
    """A data module with only the calibration images (what the quantize pass asks for)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def calibration_batch(self, n: int):
        return self.x[:n], torch.zeros(min(n, len(self.x)), dtype=torch.long)


def machop_int8(model: torch.nn.Module, calib: torch.Tensor, x: torch.Tensor, path: Path) -> dict:
    """quantize (integer 8-bit, auto frac widths) + export int8; the fake-quantized graph and the infos."""
    graph = MaseGraph(copy.deepcopy(model).eval(), dummy_input=x[:2])
    graph.context.data_module = _Calibration(calib)
    graph, qinfo = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": dict(INTEGER)},
                                              "linear": {"config": dict(INTEGER)},
                                              "calibration_samples": len(calib)})
    graph.model.eval()
    graph, einfo = PASSES["export"](graph, {"path": str(path), "int8": True})
    return {"graph": graph, "quantize": qinfo, "export": einfo}


def fixed_8_4_accuracy(model: torch.nn.Module, x: torch.Tensor, test) -> dict:
    """The group's hand-picked 8.4 fixed point on the same model (no fine-tune): accuracy and how many warnings."""
    graph = MaseGraph(copy.deepcopy(model).eval(), dummy_input=x[:2])
    graph, qinfo = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": dict(GROUP3)},
                                              "linear": {"config": dict(GROUP3)}})
    return {"test_acc": sb.accuracy(graph.model.eval(), test), "zeroed_layers": len(qinfo["warnings"])}


def ort_static(fp32: Path, calib: torch.Tensor, path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib[i:i + 32].numpy()} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ)


def ort_accuracy(session, batches) -> float:
    name = session.get_inputs()[0].name
    correct = total = 0
    for x, y in batches:
        out = session.run(None, {name: x.numpy()})[0]
        correct += int((out.argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / total


def latency(sessions: dict, batches: list[int], rounds: int, warmup: int, call_seconds: float,
            shape: tuple[int, ...] = (3, *sb.IMAGE)) -> dict:
    """{batch: {file: [seconds per forward, per round]}} over interleaved rounds, on random inputs of ``shape``."""
    out = {}
    for b in batches:
        feed = torch.randn(b, *shape, generator=torch.Generator().manual_seed(b)).numpy()

        def run(s, feed=feed):
            name = s.get_inputs()[0].name
            return lambda: s.run(None, {name: feed})

        out[b] = sb.time_sides({k: run(s) for k, s in sessions.items()}, rounds, warmup, call_seconds)
    return out


def variant(name: str, label: str, model: torch.nn.Module, calib, test, x, args, workdir: Path, log,
            extra_sessions: dict | None = None) -> dict:
    paths = {k: workdir / f"{name}_{label}_{k}.onnx" for k in FILES}
    sb.export_onnx(model, x, paths["fp32"])
    t0 = time.perf_counter()
    m = machop_int8(model, calib, x, paths["machop_int8"])
    seconds = time.perf_counter() - t0
    ort_static(paths["fp32"], calib, paths["ort_static"])
    sessions = {k: sb.ort_session(p, args.threads) for k, p in paths.items()}
    entry = {"params": sb.n_params(model), "torch_fp32_acc": sb.accuracy(model, test),
             "machop_fake_quant_acc": sb.accuracy(m["graph"].model, test), "quantize_export_seconds": seconds,
             "frac_widths": {r["name"]: r["frac_widths"] for r in m["quantize"]["layers"]},
             "zeroed_warnings": m["quantize"]["warnings"], "fixed_8_4": fixed_8_4_accuracy(model, x, test),
             "int8_layers": m["export"]["int8"]["layers"], "float_layers": m["export"]["int8"]["float_layers"],
             "int8_ops": m["export"]["int8"]["ops"],
             "float_kernels": [k["node"] for k in m["export"]["int8"]["float_kernels"]], "export_check_max_abs_diff": m["export"]["max_abs_diff"],
             "files": {}}
    for k, p in paths.items():
        entry["files"][k] = {"bytes": p.stat().st_size, "test_acc": ort_accuracy(sessions[k], test)}
    log(f"{name} {label}: sizes " + ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB" for k, v in entry["files"].items())
        + "; acc " + ", ".join(f"{k} {v['test_acc']:.4f}" for k, v in entry["files"].items())
        + f", machop fake-quant {entry['machop_fake_quant_acc']:.4f}")
    timed = dict(sessions)
    if extra_sessions:
        timed.update(extra_sessions)
    entry["latency"] = latency(timed, sorted({1, args.batch}), args.rounds, args.warmup, args.call_seconds)
    t = entry["latency"][args.batch]
    log(f"{name} {label} b{args.batch}: fp32/machop_int8 {spread(ratios(t['fp32'], t['machop_int8']))}, "
        f"fp32/ort_static {spread(ratios(t['fp32'], t['ort_static']))}")
    return entry


def run_model(name: str, args, log) -> dict:
    info = sb.dataset_info()
    torch.manual_seed(args.seed)
    dense = get_model(name, info)
    epochs, test = sb.load_batches(args.train_images, args.test_images, args.train_batch, args.pretrain_epochs,
                                   args.seed)
    ft, _ = sb.load_batches(args.train_images, args.test_images, args.train_batch, args.finetune_epochs,
                            args.seed + 1)
    calib = torch.cat([xb for xb, _ in epochs[0]])[: args.calib_images]
    x = test[0][0][:8].clone()
    seconds = sb.fit(dense, epochs, args.lr, args.seed)
    dense.eval()
    log(f"{name}: dense trained {args.pretrain_epochs} epoch(s) on {args.train_images} images in {seconds:.0f} s, "
        f"test_acc {sb.accuracy(dense, test):.4f}")
    out = {"model": name}
    with tempfile.TemporaryDirectory(prefix="int8_bench_") as tmp:
        workdir = Path(tmp)
        out["dense"] = variant(name, "dense", dense, calib, test, x, args, workdir, log)
        pruned = sb.machop_prune(dense, name, args.sparsity, x, "bias")
        sb.fit(pruned["graph"].model, ft, args.lr, args.seed)
        shrunk = sb.folded_copy(pruned["graph"]).eval()
        dense_fp32 = {"dense_fp32": sb.ort_session(workdir / f"{name}_dense_fp32.onnx", args.threads)}
        out["shrunk"] = variant(name, f"shrunk{args.sparsity:.0%}", shrunk, calib, test, x, args, workdir, log,
                                dense_fp32)
        t = out["shrunk"]["latency"][args.batch]
        log(f"{name}: shrunk int8 vs dense fp32, b{args.batch}: {spread(ratios(t['dense_fp32'], t['machop_int8']))}")
    return out


def _ms(ts: list[float]) -> str:
    return f"{statistics.median(ts) * 1e3:.2f}"


def tables(results: dict) -> str:
    b = results["settings"]["batch"]
    head = ["model", "variant", "file", "MB", "size / fp32", "test_acc (ort)", "acc − machop fake-quant (points)",
            "b1 ms", f"b{b} ms", "b1 fp32/file", f"b{b} fp32/file"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    combined = []
    for r in results["models"]:
        for v in ("dense", "shrunk"):
            e = r[v]
            lat = e["latency"]
            fp32 = e["files"]["fp32"]
            for k in FILES:
                f = e["files"][k]
                row = [r["model"], v, k, f"{f['bytes'] / 1e6:.2f}", f"{f['bytes'] / fp32['bytes']:.3f}",
                       f"{f['test_acc']:.4f}",
                       f"{(f['test_acc'] - e['machop_fake_quant_acc']) * 100:+.2f}", _ms(lat[1][k]), _ms(lat[b][k]),
                       "1" if k == "fp32" else spread(ratios(lat[1]["fp32"], lat[1][k])),
                       "1" if k == "fp32" else spread(ratios(lat[b]["fp32"], lat[b][k]))]
                lines.append("| " + " | ".join(row) + " |")
        s = r["shrunk"]["latency"]
        combined.append(f"| {r['model']} | {spread(ratios(s[1]['dense_fp32'], s[1]['machop_int8']))} | "
                        f"{spread(ratios(s[b]['dense_fp32'], s[b]['machop_int8']))} | "
                        f"{r['shrunk']['files']['machop_int8']['bytes'] / r['dense']['files']['fp32']['bytes']:.3f} | "
                        f"{r['dense']['torch_fp32_acc']:.4f} | {r['shrunk']['files']['machop_int8']['test_acc']:.4f} |")
    out = ["## int8 ONNX files in onnxruntime (latency medians; ratios fp32 / file per round: median (lowest-highest))",
           "", *lines, "",
           f"## shrink ({results['settings']['sparsity']:.0%} channels) + machop int8 against the dense fp32 file",
           "", f"| model | b1 speed-up | b{b} speed-up | size / dense fp32 | dense fp32 acc (torch) | shrunk int8 acc (ort) |",
           "|---|---|---|---|---|---|", *combined]
    notes = []
    for r in results["models"]:
        for v in ("dense", "shrunk"):
            e = r[v]
            floats = [f["name"] for f in e["float_layers"]] + [x["name"] for x in e["int8_layers"]
                                                               if x["arithmetic"] != "int8"]
            notes.append(f"- {r['model']} {v}: machop fake-quant acc (auto frac widths, no fine-tune) "
                         f"{e['machop_fake_quant_acc']:.4f}, torch fp32 {e['torch_fp32_acc']:.4f}, the group's fixed "
                         f"8.4 {e['fixed_8_4']['test_acc']:.4f} ({e['fixed_8_4']['zeroed_layers']} layer(s) zeroed); "
                         f"int8 layers {len(e['int8_layers'])} ({len(e['float_kernels'])} run as float kernels: output not "
                         f"quantized), float {', '.join(floats) or 'none'}; ops {e['int8_ops']}")
    return "\n".join(out + ["", "## Details", "", *notes])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg7", "resnet18"], choices=sorted(sb.OUTPUT_LAYER))
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 7; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (numbers mean little)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="the large batch (default 64; --quick: 8)")
    p.add_argument("--train-images", type=int, default=None, help="training slice (default 2000; --quick: 128)")
    p.add_argument("--test-images", type=int, default=None, help="test slice (default 2000; --quick: 128)")
    p.add_argument("--calib-images", type=int, default=None, help="calibration images (default 256; --quick: 32)")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default 3; --quick: 1")
    p.add_argument("--finetune-epochs", type=int, default=None, help="default 1; --quick: 1")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per file (default 2; --quick: 1)")
    p.add_argument("--call-seconds", type=float, default=None, help="seconds of one timed call (default 0.3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    defaults = {"rounds": (7, 1), "batch": (64, 8), "train_images": (2000, 128), "test_images": (2000, 128),
                "calib_images": (256, 32), "pretrain_epochs": (3, 1), "finetune_epochs": (1, 1), "warmup": (2, 1),
                "call_seconds": (0.3, 0.0)}
    for key, (full, small) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if args.quick else full)
    if not 0 < args.sparsity < 1:
        p.error(f"--sparsity must be in (0, 1), got {args.sparsity}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    log(f"threads {args.threads}, rounds {args.rounds}, batch 1 and {args.batch}"
        f"{' (quick)' if args.quick else ''}; load {load_before[0]:.2f}")
    results = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "torch": torch.__version__, "load_before": load_before},
               "models": [run_model(name, args, log) for name in args.models]}
    import onnxruntime

    results["machine"].update(load_after=os.getloadavg(), onnxruntime=onnxruntime.__version__)
    results["seconds"] = time.perf_counter() - t0
    text = tables(results)
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8.json").write_text(json.dumps(results, indent=1, default=_jsonable))
    header = (f"# int8 ONNX: machop fixed point vs fp32 vs onnxruntime quantize_static\n\n"
              f"`python bench/int8_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {results['machine']['platform']}, "
              f"{args.threads} thread(s), load {load_before[0]:.2f} before / {results['machine']['load_after'][0]:.2f} "
              f"after; {results['seconds']:.0f} s{' (quick: tiny settings)' if args.quick else ''}.\n\n")
    (out / "int8.md").write_text(header + text + "\n")
    print(f"\n{out / 'int8.json'}\n{out / 'int8.md'}")
    results["table"] = text
    return results


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, set):
        return sorted(v)
    raise TypeError(type(v).__name__)


if __name__ == "__main__":
    main()
