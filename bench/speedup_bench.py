#!/usr/bin/env python
"""Benchmark: does channel pruning pay at inference? machop's prune + shrink against the dense model and Torch-Pruning.

For each model (VGG7, ResNet-18 from machop's registry) and channel sparsity:

1. **machop**: ``prune_transform_pass`` with ``granularity = "channelwise"``,
   ``method = "l1-norm-single"``, ``scope = "local"`` (every Conv2d / Linear
   but the output layer loses ``round(s * n)`` of its ``n`` output channels,
   scored by the L1 norm of each filter; channels coupled across layers - a
   ResNet's residual streams - scored by the mean of their writers' filter
   norms and pruned together, the default ``group = true``), then
   ``shrink``. Shrink runs twice from the same pruned model: ``borders =
   "carrier"`` (exact: its outputs are checked against the masked model's,
   its parameter count reported as "exact"), and ``--borders`` (default
   ``"bias"``: no carrier channel, so every width is the pruned one; exact
   but at the outputs whose window reaches a zero padding), the model that is
   timed and fine-tuned.
2. **Torch-Pruning** (``torch-pruning`` on PyPI, `tp.pruner.BasePruner`,
   local) with the same score: `filter_l1_importance`, each channel of a
   dependency group scored by the mean of the L1 norms of the filters that
   write it (Torch-Pruning's ``GroupMagnitudeImportance`` reduction, over
   the output-channel layers only), the output layer in
   ``ignored_layers`` and a per-layer ``pruning_ratio_dict`` chosen so that
   each layer loses exactly machop's ``round(s * n)`` channels
   (Torch-Pruning's own count is ``n - int(n * (1 - s))``, one more than
   machop's at e.g. 128 channels x 0.3). The benchmark records which output
   channels each side removed, layer by layer, and reports where they differ.
3. **dense**: the model before pruning.

All three start from the same dense model trained for ``--pretrain-epochs``
(3) epochs on a ``colored_fashion_mnist`` slice (``--train-images``, 2,000),
and both pruned models are fine-tuned with the same plain loop, the same
batches in the same order, the same optimizer (Adam, ``--lr`` 1e-3, batch 64)
for ``--finetune-epochs`` (3). Accuracy is on the first ``--test-images``
(3,000) test images, before and after the fine-tune. How much a fine-tune
this short varies by itself: the Torch-Pruning model is fine-tuned a second
time, from the same start, on the same images in another order
(``test_acc_other_order``); the machop − Torch-Pruning difference is to be
read against that.

Input shape: CIFAR-shaped 3x32x32. The models are built with
``get_dataset_info("colored_fashion_mnist")`` (3 channels, 10 classes) with
``image_size`` set to (32, 32) - VGG7's classifier is sized from it
(512*4*4 inputs) - and the 28x28 colored Fashion-MNIST images are zero-padded
by 2 pixels (after normalisation, so the pad is the data set's mean) to 32x32.

Measured per model (eval mode, ``torch.no_grad``):

- ``params``: every parameter of the plain model (masks folded into the
  weights, BatchNorm affines included);
- ``MACs``: multiply-accumulates of the Conv/Linear layers for one sample,
  machop's counter (``collect_pruning_info``, the one the shrink info uses);
- latency at batch 1 and batch ``--batch`` (64), torch eager and
  onnxruntime (CPUExecutionProvider; the ONNX file is written by machop's
  ``export`` pass, which folds masks and checks onnxruntime's outputs against
  the model's). machop's eager model is the shrunk graph with its remaining
  masks folded into plain weights (what ``remove = true`` or the export pass
  gives): the masks would otherwise be re-applied at every call.

Timing: `timing.interleaved` - each round runs dense, machop and
Torch-Pruning once in turn (the order flips every round); a side's call runs
the forward ``k`` times (``k`` picked in the warm-up so one call takes about
``--call-seconds``) and returns the mean time per forward. Each side gets
warm-up calls first. Quoted: each side's median over ``--rounds`` rounds, and
the per-round ratios dense/machop (the speed-up) and Torch-Pruning/machop
(above 1: machop faster), median (lowest-highest). Threads: torch and
onnxruntime (intra-op) both use ``--threads``, by default every core the
process may run on (``len(os.sched_getaffinity(0))``; 2 on the project's
machine); inter-op 1.

Run::

    python bench/speedup_bench.py [--models vgg7 resnet18] [--sparsities 0.3 0.5 0.7] [--rounds 5]
                                  [--out bench/results] [--quick] [--no-torch-pruning] [--borders bias]

Writes ``speedup.json`` and ``speedup.md`` under ``--out`` (default
``bench/results/``) and prints the same tables.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from timing import interleaved, ratios, spread  # noqa: E402

from machop.datasets import MaseDataModule, get_dataset_info  # noqa: E402
from machop.ir import MaseGraph  # noqa: E402
from machop.models import get_model  # noqa: E402
from machop.passes.graph import PASSES  # noqa: E402
from machop.passes.graph.analysis.pruning import collect_pruning_info  # noqa: E402
from machop.passes.graph.transforms.export.export import folded_copy  # noqa: E402

DATASET = "colored_fashion_mnist"
IMAGE = (32, 32)
OUTPUT_LAYER = {"vgg7": "last_layer", "resnet18": "fc"}
IMPLS = ("dense", "machop", "torch-pruning")


# --------------------------------------------------------------------------- data and training


def dataset_info():
    return dataclasses.replace(get_dataset_info(DATASET), image_size=IMAGE)


def _pad(x: torch.Tensor) -> torch.Tensor:
    dh, dw = IMAGE[0] - x.shape[-2], IMAGE[1] - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)) if dh or dw else x


def load_batches(train_images: int, test_images: int, batch: int, epochs: int, seed: int = 0):
    """(list of training epochs, each a list of (x, y) batches; test batches): materialised so both sides see the same."""
    dm = MaseDataModule(DATASET, batch_size=batch, seed=seed, val_fraction=0.0, train_limit=train_images,
                        test_limit=test_images)
    dm.setup()
    train = [[(_pad(x), y) for x, y in dm.train_dataloader()] for _ in range(epochs)]
    test = [(_pad(x), y) for x, y in dm.test_dataloader()]
    return train, test


def fit(model: nn.Module, epochs: list[list[tuple[torch.Tensor, torch.Tensor]]], lr: float, seed: int = 0) -> float:
    """The plain loop both sides are trained with: Adam, cross-entropy; returns the seconds it took."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    t0 = time.perf_counter()
    for batches in epochs:
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    return time.perf_counter() - t0


@torch.no_grad()
def accuracy(model: nn.Module, batches) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct / total


# --------------------------------------------------------------------------- pruning


def conv_linear(model: nn.Module) -> dict[str, nn.Module]:
    return {q: m for q, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and ".parametrizations" not in f".{q}"}


def empty_rows(model: nn.Module) -> dict[str, list[int]]:
    """Module path → output channels whose (effective) weights are all zero."""
    out = {}
    for q, m in conv_linear(model).items():
        with torch.no_grad():
            w = m.weight.detach()
        out[q] = (~w.reshape(w.shape[0], -1).ne(0).any(dim=1)).nonzero().flatten().tolist()
    return out


def _outputs(graph: MaseGraph, x: torch.Tensor) -> torch.Tensor:
    graph.model.eval()
    with torch.no_grad():
        return graph.model(x)


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def machop_prune(trained: nn.Module, name: str, sparsity: float, x: torch.Tensor, borders: str = "bias") -> dict:
    """prune (local channelwise l1-norm-single, coupled channels together) + shrink, twice from the same pruned model:

    ``exact`` with ``borders = "carrier"`` (outputs equal to the masked model's), and the model timed and
    fine-tuned, with ``borders`` (default "bias": no carrier channels, exact but at zero-padded borders)."""

    def pruned() -> tuple[MaseGraph, dict]:
        graph = MaseGraph(copy.deepcopy(trained), dummy_input=x[:2])
        graph.context.model_name, graph.context.dataset_info = name, dataset_info()
        return PASSES["prune"](graph, {"weight": {"sparsity": sparsity, "scope": "local", "granularity": "channelwise",
                                                  "method": "l1-norm-single"}})

    graph, prune_info = pruned()
    chosen = {q: set(v) for q, v in empty_rows(graph.model).items()}
    masked = _outputs(graph, x)
    exact, exact_info = PASSES["shrink"](graph, {"borders": "carrier"})
    graph, _ = pruned()
    t0 = time.perf_counter()
    graph, info = PASSES["shrink"](graph, {"borders": borders})
    seconds = time.perf_counter() - t0
    return {"graph": graph, "pruned": chosen, "shrink_info": info, "coupled": prune_info["weight"].get("coupled", []),
            "max_rel_diff": _rel_diff(_outputs(graph, x), masked), "shrink_seconds": seconds,
            "exact": {"params": n_params(folded_copy(exact)), "max_rel_diff": _rel_diff(_outputs(exact, x), masked),
                      "kept": exact_info["kept"], "carriers": exact_info["carriers"]}}


def filter_l1_importance():
    """A Torch-Pruning importance: each channel of a dependency group scored by the mean, over the group's
    Conv/Linear layers that write it, of their filters' L1 norms - machop's grouped ``l1-norm-single``."""
    import torch_pruning as tp

    class FilterL1Mean(tp.importance.GroupMagnitudeImportance):
        def __init__(self):
            super().__init__(p=1, group_reduction="mean", normalizer=None, bias=False)

        @torch.no_grad()
        def __call__(self, group):
            imps, roots = [], []
            for i, (dep, idxs) in enumerate(group):
                if dep.pruning_fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels) \
                        and not getattr(dep.layer, "transposed", False):
                    imps.append(dep.layer.weight.data[idxs].flatten(1).abs().sum(1))
                    roots.append(group[i].root_idxs)
            return self._reduce(imps, roots) if imps else None

    return FilterL1Mean()


def torch_pruning_prune(trained: nn.Module, name: str, sparsity: float, x: torch.Tensor) -> dict:
    """Torch-Pruning on a copy of ``trained``: same layers, same grouped L1 score, same count per layer as machop."""
    import torch_pruning as tp

    model = copy.deepcopy(trained).eval()
    last = model.get_submodule(OUTPUT_LAYER[name])
    ratio = {}
    for q, m in conv_linear(model).items():
        if m is last:
            continue
        n = m.weight.shape[0]
        k = round(sparsity * n)  # machop's count (prune_count); Torch-Pruning prunes n - int(n * (1 - r)) = k
        ratio[m] = (k - 0.5) / n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner  # (MetaPruner: older name)
        pruner = cls(model, x[:2], importance=filter_l1_importance(), pruning_ratio=sparsity,
                     pruning_ratio_dict=ratio, ignored_layers=[last], global_pruning=False)
    names = {m: q for q, m in model.named_modules()}
    removed: dict[str, set[int]] = {}
    groups = []
    t0 = time.perf_counter()
    for group in pruner.step(interactive=True):
        members = []
        for dep, idxs in group:
            if dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                removed.setdefault(names[dep.target.module], set()).update(int(i) for i in idxs)
                members.append(names[dep.target.module])
        groups.append({"root": names[group[0].dep.target.module], "out_layers": members,
                       "channels": len(group[0].idxs)})
        group.prune()
    seconds = time.perf_counter() - t0
    return {"model": model.eval(), "pruned": removed, "groups": groups, "prune_seconds": seconds}


def compare_channels(dense: nn.Module, machop_pruned: dict[str, set[int]], tp_pruned: dict[str, set[int]]) -> list[dict]:
    """Per layer: channels each side's pruning chose (before shrink), and where they differ.

    Where they differ, ``rel_gap`` is the largest relative difference between
    the float64 L1 norms of a channel only one side pruned and one only the
    other pruned: about 1e-7 means a near-tie at the cut that the two float32
    sums (``torch.linalg.vector_norm`` in machop, ``abs().sum()`` in
    Torch-Pruning) order differently.
    """
    layers = conv_linear(dense)
    rows = []
    for q in machop_pruned:
        a, b = machop_pruned[q], tp_pruned.get(q, set())
        row = {"layer": q, "machop": len(a), "torch_pruning": len(b), "same": a == b,
               "only_machop": len(a - b), "only_torch_pruning": len(b - a)}
        if a != b and a - b and b - a:
            w = layers[q].weight.detach().double()
            l1 = w.reshape(w.shape[0], -1).abs().sum(dim=1)
            gaps = [abs(float(l1[i] - l1[j])) / float(max(l1[i], l1[j])) for i in a - b for j in b - a]
            row["rel_gap"] = max(gaps)
        rows.append(row)
    return rows


def removed_channels(model: nn.Module, dense: nn.Module) -> dict[str, list[int]]:
    """Module path → [output channels before, after]."""
    before = {q: m.weight.shape[0] for q, m in conv_linear(dense).items()}
    return {q: [before[q], m.weight.shape[0]] for q, m in conv_linear(model).items() if q in before}


# --------------------------------------------------------------------------- size and latency


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, x: torch.Tensor) -> int:
    return int(collect_pruning_info(MaseGraph(model, dummy_input=x[:1]))["totals"]["macs_dense"])


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> dict:
    """machop's export pass on a plain model (verifies onnxruntime against the model)."""
    _, info = PASSES["export"](MaseGraph(model, dummy_input=x[:2]), {"path": str(path), "check": True})
    return info


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _side(run, reps: int):
    def call() -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        return (time.perf_counter() - t0) / reps
    return call


def time_sides(runs: dict, rounds: int, warmup: int, call_seconds: float) -> dict:
    """Warm up each side, pick its repetitions per call, then `interleaved` rounds; per side, per-forward seconds."""
    sides = {}
    for name, run in runs.items():
        for _ in range(warmup):
            run()
        t0 = time.perf_counter()
        run()
        one = max(time.perf_counter() - t0, 1e-6)
        sides[name] = _side(run, max(1, min(1000, round(call_seconds / one))))
    return interleaved(sides, rounds)


def latency(models: dict[str, nn.Module], onnx: dict[str, Path] | None, batches: list[int], threads: int,
            rounds: int, warmup: int, call_seconds: float) -> dict:
    """{runtime: {batch: {side: [seconds per round]}}}."""
    out: dict = {"eager": {}, "onnxruntime": {}}
    sessions = {k: ort_session(p, threads) for k, p in onnx.items()} if onnx else {}
    for b in batches:
        x = torch.randn(b, 3, *IMAGE, generator=torch.Generator().manual_seed(b))

        def eager(m):
            def run():
                with torch.no_grad():
                    m(x)
            return run

        out["eager"][b] = time_sides({k: eager(m) for k, m in models.items()}, rounds, warmup, call_seconds)
        if sessions:
            feed = x.numpy()

            def ort_run(s):
                name = s.get_inputs()[0].name
                return lambda: s.run(None, {name: feed})

            out["onnxruntime"][b] = time_sides({k: ort_run(s) for k, s in sessions.items()}, rounds, warmup,
                                               call_seconds)
    if not sessions:
        del out["onnxruntime"]
    return out


# --------------------------------------------------------------------------- one model


def run_model(name: str, sparsities: list[float], args, log) -> dict:
    """Train ``name`` dense, then prune, fine-tune, export and time it at each sparsity; ONNX files in a temp folder."""
    with tempfile.TemporaryDirectory(prefix="speedup_bench_") as workdir:
        return _run_model(name, sparsities, args, log, Path(workdir))


def _run_model(name: str, sparsities: list[float], args, log, workdir: Path) -> dict:
    info = dataset_info()
    torch.manual_seed(args.seed)
    dense = get_model(name, info)
    epochs_pre, test = load_batches(args.train_images, args.test_images, args.train_batch, args.pretrain_epochs,
                                    args.seed)
    epochs_other, _ = load_batches(args.train_images, args.test_images, args.train_batch, args.finetune_epochs,
                                   args.seed + 2)
    epochs_ft, _ = load_batches(args.train_images, args.test_images, args.train_batch, args.finetune_epochs,
                                args.seed + 1)
    x = test[0][0][:8].clone()
    seconds = fit(dense, epochs_pre, args.lr, args.seed)
    dense.eval()
    acc_dense = accuracy(dense, test)
    log(f"{name}: dense trained {args.pretrain_epochs} epoch(s) on {args.train_images} images in {seconds:.0f} s, "
        f"test_acc {acc_dense:.4f}")
    dense_onnx = None
    if args.onnx:
        dense_onnx = workdir / f"{name}_dense.onnx"
        export_onnx(dense, x, dense_onnx)
    result = {"model": name, "dense": {"params": n_params(dense), "macs": macs(dense, x), "test_acc": acc_dense,
                                       "pretrain_seconds": seconds}, "sparsities": []}
    for s in sparsities:
        entry: dict = {"sparsity": s}
        m = machop_prune(dense, name, s, x, args.borders)
        sinfo = m["shrink_info"]
        entry["machop"] = {
            "borders": args.borders, "max_rel_diff_shrunk_vs_masked": m["max_rel_diff"],
            "shrink_seconds": m["shrink_seconds"], "kept": sinfo["kept"], "carriers": sinfo["carriers"],
            "approximate": sinfo["approximate"], "biases_added": sinfo["biases_added"],
            "shrink_totals": sinfo["totals"], "coupled": m["coupled"], "exact": m["exact"],
            "test_acc_before_finetune": accuracy(m["graph"].model, test),
        }
        log(f"{name} @ {s:.0%}: machop shrink (borders {args.borders}) in {m['shrink_seconds']:.1f} s, shrunk vs "
            f"masked max rel diff {m['max_rel_diff']:.2e}; exact shrink (carriers): {m['exact']['params']:,} params, "
            f"max rel diff {m['exact']['max_rel_diff']:.2e}; {len(sinfo['kept'])} kept-channel entr(ies)")
        seconds = fit(m["graph"].model, epochs_ft, args.lr, args.seed)
        machop_model = folded_copy(m["graph"]).eval()
        entry["machop"].update(test_acc=accuracy(machop_model, test), finetune_seconds=seconds,
                               params=n_params(machop_model), macs=macs(machop_model, x),
                               channels=removed_channels(machop_model, dense))
        models = {"dense": dense, "machop": machop_model}
        if args.torch_pruning:
            t = torch_pruning_prune(dense, name, s, x)
            entry["torch_pruning"] = {"test_acc_before_finetune": accuracy(t["model"], test),
                                      "groups": t["groups"], "prune_seconds": t["prune_seconds"]}
            entry["channel_choice"] = compare_channels(dense, m["pruned"], t["pruned"])
            other = copy.deepcopy(t["model"])
            fit(other, epochs_other, args.lr, args.seed)
            entry["torch_pruning"]["test_acc_other_order"] = accuracy(other, test)
            seconds = fit(t["model"], epochs_ft, args.lr, args.seed)
            entry["torch_pruning"].update(test_acc=accuracy(t["model"], test), finetune_seconds=seconds,
                                          params=n_params(t["model"]), macs=macs(t["model"], x),
                                          channels=removed_channels(t["model"], dense))
            models["torch-pruning"] = t["model"]
        onnx = None
        if args.onnx:
            onnx = {"dense": dense_onnx}
            for k, mod in models.items():
                if k != "dense":
                    onnx[k] = workdir / f"{name}_{s}_{k}.onnx"
                    export_onnx(mod, x, onnx[k])
        entry["latency"] = latency(models, onnx, sorted({1, args.batch}), args.threads, args.rounds, args.warmup,
                                   args.call_seconds)
        result["sparsities"].append(entry)
        log(f"{name} @ {s:.0%}: " + "; ".join(_brief(entry, args.batch)))
    return result


def _brief(entry: dict, batch: int) -> list[str]:
    out = []
    for rt, per_batch in entry["latency"].items():
        t = per_batch[batch]
        out.append(f"{rt} b{batch} dense/machop {spread(ratios(t['dense'], t['machop']))}")
        if "torch-pruning" in t:
            out.append(f"{rt} b{batch} torch-pruning/machop {spread(ratios(t['torch-pruning'], t['machop']))}")
    return out


# --------------------------------------------------------------------------- tables


def _ms(ts: list[float]) -> str:
    return f"{statistics.median(ts) * 1e3:.2f}"


def _m(v: float) -> str:
    return f"{v / 1e6:.2f}M"


def tables(results: dict) -> str:
    batch = results["settings"]["batch"]
    runtimes = ["eager"] + (["onnxruntime"] if results["settings"]["onnx"] else [])
    head = ["model", "sparsity", "impl", "params", "MACs"]
    for rt in runtimes:
        head += [f"{rt} b1 ms", f"{rt} b{batch} ms", f"{rt} b{batch} speed-up vs dense"]
    head += ["test_acc before FT", "test_acc after FT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["models"]:
        d = r["dense"]
        for e in r["sparsities"]:
            for impl in IMPLS:
                key = impl.replace("-", "_")
                if impl != "dense" and key not in e:
                    continue
                src = d if impl == "dense" else e[key]
                row = [r["model"], f"{e['sparsity']:.0%}", impl, f"{src['params']:,}", _m(src["macs"])]
                for rt in runtimes:
                    lat = e["latency"][rt]
                    row += [_ms(lat[1][impl]), _ms(lat[batch][impl]),
                            "1" if impl == "dense" else spread(ratios(lat[batch]["dense"], lat[batch][impl]))]
                row += ["" if impl == "dense" else f"{src['test_acc_before_finetune']:.4f}",
                        f"{src['test_acc']:.4f}"]
                lines.append("| " + " | ".join(row) + " |")
    out = ["## Size and latency (medians over the rounds; speed-up = dense / impl per round, median (lowest-highest))",
           "", *lines]
    if any("torch_pruning" in e for r in results["models"] for e in r["sparsities"]):
        head = ["model", "sparsity", "params TP/machop", "MACs TP/machop"]
        for rt in runtimes:
            head += [f"{rt} b1 TP/machop", f"{rt} b{batch} TP/machop"]
        head += ["acc machop − TP (points)", "TP other batch order − TP (points)", "same channels chosen", "pruned channels machop keeps",
                 "params exact shrink / TP"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in results["models"]:
            for e in r["sparsities"]:
                if "torch_pruning" not in e:
                    continue
                mo, tpr = e["machop"], e["torch_pruning"]
                row = [r["model"], f"{e['sparsity']:.0%}", f"{tpr['params'] / mo['params']:.3f}",
                       f"{tpr['macs'] / mo['macs']:.3f}"]
                for rt in runtimes:
                    lat = e["latency"][rt]
                    row += [spread(ratios(lat[b]["torch-pruning"], lat[b]["machop"])) for b in (1, batch)]
                same = sum(c["same"] for c in e["channel_choice"])
                ties = sum(not c["same"] and c.get("rel_gap", 1.0) < 1e-5 for c in e["channel_choice"])
                choice = f"{same}/{len(e['channel_choice'])} layers" + (f" (+{ties} float near-tie)" if ties else "")
                row += [f"{(mo['test_acc'] - tpr['test_acc']) * 100:+.2f}",
                        f"{(tpr['test_acc_other_order'] - tpr['test_acc']) * 100:+.2f}", choice,
                        str(sum(len(k["channels"]) for k in mo["kept"])),
                        f"{mo['exact']['params'] / tpr['params']:.4f}"]
                lines.append("| " + " | ".join(row) + " |")
        out += ["", "## machop shrink vs Torch-Pruning (ratios TP / machop: above 1, machop is smaller or faster)",
                "", *lines]
    notes = []
    for r in results["models"]:
        for e in r["sparsities"]:
            kept = e["machop"]["kept"]
            if kept:
                by_reason: dict[str, int] = {}
                for k in kept:
                    reason = k["reason"].split(" with ")[0] if k["reason"].startswith("coupled") else k["reason"]
                    reason = reason.split(" into ")[0] if reason.startswith("kept to carry") else reason
                    by_reason[reason] = by_reason.get(reason, 0) + len(k["channels"])
                notes.append(f"- {r['model']} @ {e['sparsity']:.0%}: pruned channels shrink keeps: "
                             + "; ".join(f"{n} x {why}" for why, n in by_reason.items()))
        for e in r["sparsities"]:
            if "torch_pruning" not in e:
                continue
            mc, tc = e["machop"]["channels"], e["torch_pruning"]["channels"]
            diff = [f"{q} {mc[q][1]}/{tc[q][1]}" for q in mc if q in tc and mc[q][1] != tc[q][1]]
            if diff:
                notes.append(f"- {r['model']} @ {e['sparsity']:.0%}: output channels left, machop/Torch-Pruning: "
                             + ", ".join(diff))
    if notes:
        out += ["", "## What shrink kept (from the shrink info), and where the widths differ", "", *notes]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg7", "resnet18"], choices=sorted(OUTPUT_LAYER))
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (numbers mean little)")
    p.add_argument("--no-torch-pruning", dest="torch_pruning", action="store_false", help="skip Torch-Pruning")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the onnxruntime timings")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: every core)")
    p.add_argument("--batch", type=int, default=None, help="the large inference batch (default 64; --quick: 8)")
    p.add_argument("--train-images", type=int, default=None, help="training slice (default 2000; --quick: 128)")
    p.add_argument("--test-images", type=int, default=None, help="test slice (default 3000; --quick: 128)")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per side (default 3; --quick: 1)")
    p.add_argument("--call-seconds", type=float, default=None,
                   help="target seconds of one timed call (default 0.25; --quick: 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--borders", choices=["bias", "carrier", "keep"], default="bias",
                   help="shrink's borders for the timed machop model (default bias; an exact carrier shrink is "
                        "always measured too)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {"rounds": (5, 1), "batch": (64, 8), "train_images": (2000, 128), "test_images": (3000, 128),
                "warmup": (3, 1), "call_seconds": (0.25, 0.0)}
    for key, (full, small) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    if args.threads is None:
        args.threads = _threads()
    for s in args.sparsities:
        if not 0 < s < 1:
            p.error(f"--sparsities: each must be in (0, 1), got {s}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.torch_pruning:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            print("torch-pruning is not installed (pip install torch-pruning, or pip install -e '.[dev]'): "
                  "skipping the Torch-Pruning comparison", file=sys.stderr)
            args.torch_pruning = False
    if args.onnx:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime is not installed (pip install 'machop[onnx]'): skipping the onnxruntime timings",
                  file=sys.stderr)
            args.onnx = False
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only once per process, before any inter-op work (e.g. a second main() in one process)
        pass

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.perf_counter()
    log(f"threads {args.threads} (torch intra-op and onnxruntime intra-op), rounds {args.rounds}, batch 1 and "
        f"{args.batch}, {args.train_images} train / {args.test_images} test images{' (quick)' if args.quick else ''}")
    results = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cores": _threads(), "load_before": os.getloadavg()},
        "models": [run_model(name, args.sparsities, args, log) for name in args.models],
    }
    results["machine"]["load_after"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - t0
    for pkg in ("onnxruntime", "torch_pruning"):
        try:
            results["machine"][pkg] = __import__(pkg).__version__
        except ImportError:
            pass
    text = tables(results)
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speedup.json").write_text(json.dumps(results, indent=1, default=_jsonable))
    header = (f"# Channel pruning at inference: machop shrink vs dense vs Torch-Pruning\n\n"
              f"`python bench/speedup_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {results['machine']['platform']}, "
              f"{args.threads} thread(s), load {results['machine']['load_before'][0]:.2f} before / "
              f"{results['machine']['load_after'][0]:.2f} after; {results['seconds']:.0f} s"
              f"{' (quick: tiny settings)' if args.quick else ''}.\n\n")
    (out / "speedup.md").write_text(header + text + "\n")
    print(f"\n{out / 'speedup.json'}\n{out / 'speedup.md'}")
    results["table"] = text
    return results


def _jsonable(v):
    if isinstance(v, set):
        return sorted(v)
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(type(v).__name__)


if __name__ == "__main__":
    main()
