"""The run report (the CLI/report layer): the summary table, report.md and the figures of a run."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from machop.files import atomic_write
from machop.passes.graph import REGISTRY

COLUMNS = ("step", "test_acc", "Δpt", "non-zero", "kept", "bits/w", "size", "ratio", "time")
LEGEND = ("test_acc: of the model after that step (– not evaluated). Δpt: against the dense baseline's test_acc, in percentage points. "
          "size: the compressed file on disk; * an estimate of sparse, quantized storage before Huffman coding. "
          "ratio: the original dense model (every parameter at fp32, before any shrink) over size; kept: non-zero "
          "weights over the original model's weights. bits/w: size in bits per non-zero weight.")
TRAINING = ("", "train", "retrain", "test")  # steps that leave the model dense: the baseline is measured among them


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def baseline_acc(report: dict) -> float | None:
    """The dense baseline's test accuracy: the last one measured before the first step that compresses the model
    (the start's, or a baseline train step's); None if none was."""
    acc = report.get("initial_test_acc")
    for step in report["steps"]:
        entry = REGISTRY.get(step["pass"])
        if step["pass"] not in TRAINING and (entry is None or entry.changes_model):
            break
        acc = step["test_acc"] if step["test_acc"] is not None else acc
    return acc


def summary_rows(report: dict) -> list[dict]:
    """One row per step (plus the start).

    ``test_acc`` is that step's model's (None where it was not evaluated),
    ``acc_change`` its difference to `baseline_acc`. ``size`` is the
    compressed file's bytes on disk after a Huffman step, else the
    sparse/quantized storage estimate
    (`machop.passes.graph.analysis.stats.weight_stats`); ``ratio`` is the
    original model's dense fp32 size (``report["initial"]["dense_bytes"]``:
    every parameter, before any shrink) over that size, ``kept`` the non-zero
    weights over the original model's weights, ``bits_per_weight`` size in
    bits over non-zero weights.
    """
    dense, weights = report["initial"]["dense_bytes"], report["initial"]["weights"]
    base = baseline_acc(report)
    start = {"label": "(start)", "pass": "", "info": {}, "weights": report["initial"], "seconds": None,
             "test_acc": report.get("initial_test_acc")}
    rows, file_bytes = [], None
    for step in [start] + report["steps"]:
        info, w = step["info"], step["weights"]
        # a compressed file stays the model's size until a later step changes the model
        changes_model = step["pass"] in REGISTRY and REGISTRY[step["pass"]].changes_model
        file_bytes = info.get("file_bytes", None if changes_model else file_bytes)
        size = file_bytes or w["estimated_bytes"]
        acc = step["test_acc"]
        rows.append({
            "step": step["label"], "pass": step["pass"], "test_acc": acc,
            "acc_change": None if acc is None or base is None else acc - base,
            "nonzero_weights": w["nonzero_weights"], "weights": w["weights"], "kept": w["nonzero_weights"] / max(1, weights),
            "bits_per_weight": 8 * size / max(1, w["nonzero_weights"]),
            "size_bytes": size, "size_is_file": file_bytes is not None, "estimated_bytes": w["estimated_bytes"],
            "ratio": dense / size, "seconds": step["seconds"],
        })
    return rows


def _cells(r: dict) -> list[str]:
    return [
        r["step"],
        "–" if r["test_acc"] is None else f"{r['test_acc']:.4f}",
        "–" if r["acc_change"] is None else f"{100 * r['acc_change']:+.2f}",
        f"{r['nonzero_weights']:,}",
        f"{r['kept']:.1%}",
        f"{r['bits_per_weight']:.2f}",
        fmt_bytes(r["size_bytes"]) + ("" if r["size_is_file"] else "*"),
        f"{r['ratio']:.1f}x",
        "" if r["seconds"] is None else f"{r['seconds']:.0f}s",
    ]


def print_summary(report: dict, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    table = Table(title=f"{report['model']} on {report['dataset']}", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "step" else "right", no_wrap=True)
    for r in summary_rows(report):
        table.add_row(*_cells(r))
    console.print(table)
    console.print(LEGEND)


# --------------------------------------------------------------------------- report.md


def _md_table(head: list[str], rows: list[list], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(head) - 1)
    return (["| " + " | ".join(head) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _num(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _final_coding(report: dict) -> dict | None:
    """The info of the Huffman step whose file is the final model (no step changed the model after it), or None."""
    coded = None
    for step in report["steps"]:
        info = step["info"]
        if "file_bytes" in info and isinstance(info.get("layers"), list):
            coded = info
        elif step["pass"] in REGISTRY and REGISTRY[step["pass"]].changes_model:
            coded = None
    return coded


def _quantizers(report: dict) -> dict[str, str]:
    """Layer name → how its weight is quantized (the latest quantize step's word for it)."""
    out: dict[str, str] = {}
    for step in report["steps"]:
        if step["pass"] == "quantize":
            for layer in step["info"].get("layers", []):
                if isinstance(layer, dict) and "name" in layer:
                    out[layer["name"]] = f"{layer.get('arithmetic', '?')} {layer.get('bits', '?')}-bit"
        elif step["pass"] == "prune_remove":
            for name in step["info"].get("baked_quantized", {}):
                out.pop(name, None)
    return out


def layer_rows(report: dict) -> tuple[list[dict], dict]:
    """The final model per compressed weight: ``name``, ``kind``, ``shape``, ``weights``, ``nonzero``,
    ``quantized``, ``bits_per_weight``, ``bytes``, ``share``; and the totals (``bytes``, ``other_bytes``, ``is_file``).

    Bytes are the ``.mchz`` file's (the last Huffman step's, if no later step
    changed the model) with biases, raw tensors and the header as
    ``other_bytes``; else the storage estimate. ``share`` is of the file (or estimate).
    """
    final = report["steps"][-1]["weights"] if report["steps"] else report["initial"]
    coded = _final_coding(report)
    quant = _quantizers(report)
    by_name = {layer["layer"]: layer for layer in coded["layers"]} if coded else {}
    total = coded["file_bytes"] if coded else final["estimated_bytes"]
    rows = []
    for layer in final["layers"]:
        c = by_name.get(layer["name"])
        size = c["bytes"] if c else layer["estimated_bits"] / 8
        if c is not None:
            q = f"{c.get('kind', '?')} {c.get('bits', '?')}-bit" if c.get("kind") not in (None, "float") else "float"
        else:
            q = quant.get(layer["name"], "float32")
        rows.append({"name": layer["name"], "kind": layer["kind"], "shape": layer.get("shape"),
                     "weights": layer["weights"], "nonzero": layer["nonzero"], "quantized": q,
                     "bits_per_weight": 8 * size / max(1, layer["nonzero"]), "bytes": size,
                     "share": size / max(1, total)})
    other = total - sum(r["bytes"] for r in rows)
    return rows, {"bytes": total, "other_bytes": other, "is_file": coded is not None}


def layer_table(report: dict) -> list[str]:
    """Markdown lines: the final model per layer (kind, shape, kept, quantization, bits, bytes, share of the file)."""
    rows, totals = layer_rows(report)
    where = "the .mchz file" if totals["is_file"] else "the storage estimate (no .mchz file written after the last change)"
    lines = ["## Final model, per layer", "",
             f"Bytes and shares are of {where}; kept is the layer's non-zero weights over its weights; bits/w its "
             "bytes in bits per non-zero weight (values, positions and codebook).", ""]
    body = [[r["name"], r["kind"], "×".join(map(str, r["shape"])) if r["shape"] else "?",
             f"{r['nonzero']:,}/{r['weights']:,} ({r['nonzero'] / max(1, r['weights']):.1%})", r["quantized"],
             f"{r['bits_per_weight']:.2f}", f"{r['bytes']:,.0f}", f"{r['share']:.1%}"] for r in rows]
    body.append(["(everything else: biases, norms, header)" if totals["is_file"] else "(other parameters, fp32)",
                 "", "", "", "", "", f"{totals['other_bytes']:,.0f}", f"{totals['other_bytes'] / max(1, totals['bytes']):.1%}"])
    body.append(["**total**", "", "", "", "", "", f"**{totals['bytes']:,.0f}**", "100.0%"])
    return lines + _md_table(["layer", "kind", "shape", "kept", "quantized", "bits/w", "bytes", "share"], body,
                             "lllrlrrr")


def _prune_lines(info: dict) -> list[str]:
    lines = []
    for what in ("weight", "activation"):
        s = info.get(what)
        if not isinstance(s, dict):
            continue
        target = s.get("sparsity")
        lines.append(f"- {what}: {s.get('scope', '')} {s.get('granularity', '')} {s.get('method', '')}, target "
                     f"{_num(target) if not isinstance(target, dict) else 'per layer'}, achieved "
                     f"{_num(s.get('achieved'))}" + (f"; left dense: {', '.join(d['name'] for d in s['dense'])}"
                                                     if s.get("dense") else ""))
    layers = info.get("layers")
    if isinstance(layers, dict) and layers:
        body = []
        for name, layer in layers.items():
            w, a = layer.get("weight") or {}, layer.get("activation") or {}
            body.append([name, layer.get("kind", ""), _num(w.get("achieved")) if w else "–",
                         _num(a.get("achieved")) if a else "–",
                         f"{layer.get('nonzero_params', 0):,}/{layer.get('params', 0):,}",
                         f"{layer.get('macs_effective', 0):,.0f}/{layer.get('macs_dense', 0):,}"])
        lines += ["", *_md_table(["layer", "kind", "weight sparsity", "activation sparsity", "non-zero/params",
                                  "MACs effective/dense"], body)]
    if isinstance(info.get("removed"), dict):
        lines.append(f"- masks baked in: {info['removed']}")
    return lines


def _shrink_lines(info: dict) -> list[str]:
    t = info.get("totals", {})
    lines = []
    if "params" in t:
        (p0, p1), (m0, m1) = t["params"], t["macs"]
        lines += [f"- parameters: {p0:,} → {p1:,} ({p1 / max(1, p0):.1%})",
                  f"- MACs per sample: {m0:,} → {m1:,} ({m1 / max(1, m0):.1%})",
                  f"- channels removed: {t.get('removed_channels', 0):,}"]
    lat = info.get("latency")
    if isinstance(lat, dict):
        l0, l1 = lat["ms"]
        lines.append(f"- latency: {l0:.3f} ms → {l1:.3f} ms ({l0 / max(l1, 1e-9):.2f}x faster; median of {lat['runs']} "
                     f"forwards of a batch of {lat['batch']} on {lat['device']}, eval mode)")
    if info.get("kept"):
        lines.append(f"- pruned channel groups kept: {len(info['kept'])} (reasons in report.json)")
    if info.get("layers"):
        body = [[layer["name"], f"{layer['in_channels'][0]} → {layer['in_channels'][1]}",
                 f"{layer['out_channels'][0]} → {layer['out_channels'][1]}",
                 f"{layer['params'][0]:,} → {layer['params'][1]:,}"] for layer in info["layers"]]
        lines += ["", *_md_table(["layer", "in channels", "out channels", "params"], body)]
    return lines


def _quantize_lines(info: dict) -> list[str]:
    layers = [layer for layer in info.get("layers", []) if isinstance(layer, dict) and "name" in layer]
    lines = [f"- by: {info.get('by')}"] if info.get("by") else []
    if isinstance(info.get("total"), dict) and "compression" in info["total"]:
        lines.append(f"- quantized weights and biases: {info['total']['compression']:.1f}x smaller than fp32 "
                     f"({info['total'].get('layers', len(layers))} layer(s))")
    if info.get("skipped"):
        lines.append(f"- left alone: {', '.join(str(s.get('name', s)) if isinstance(s, dict) else str(s) for s in info['skipped'])}")
    if layers:
        body = [[layer["name"], layer.get("arithmetic", ""), _num(layer.get("bits")), _num(layer.get("clusters", "–")),
                 f"{layer.get('kept', 0):,}/{layer.get('numel', 0):,}", _num(layer.get("size_bits")),
                 f"{layer['compression']:.1f}x" if isinstance(layer.get("compression"), (int, float)) else "–"]
                for layer in layers]
        lines += ["", *_md_table(["layer", "arithmetic", "bits", "clusters", "kept", "size (bits)", "vs fp32"], body)]
    return lines


def _huffman_lines(info: dict, dense_bytes: int) -> list[str]:
    if "file_bytes" not in info:
        return []
    total = info.get("total", {})
    size = info["file_bytes"]
    lines = [f"- file: {info.get('path', '')}, {size:,} bytes: {dense_bytes / size:.1f}x smaller than the original "
             f"dense fp32 model ({dense_bytes:,} bytes)"]
    if total.get("dense_bytes") and total["dense_bytes"] != dense_bytes:
        lines.append(f"  (the model it codes, shrunk, is {total['dense_bytes']:,} bytes at dense fp32: of the "
                     f"{dense_bytes / size:.1f}x, shrinking gives {dense_bytes / total['dense_bytes']:.1f}x and the "
                     f"file {total['dense_bytes'] / size:.1f}x)")
    if isinstance(total.get("parts"), dict):
        lines.append("- bytes: " + ", ".join(f"{k} {v:,}" for k, v in total["parts"].items()))
    if "bits_per_weight" in total:
        lines.append(f"- {total['bits_per_weight']:.2f} bits per coded value + {total.get('bits_per_index', 0):.2f} "
                     "bits per position")
    if "verified" in info:
        lines.append(f"- decoded outputs equal the model's: {info['verified']}")
    return lines


def _generic_lines(info: dict) -> list[str]:
    """Scalars (None left out) and small tables of scalars, one line each."""
    lines = []
    for k, v in info.items():
        if v is None or k in ("table",):
            continue
        if isinstance(v, (int, float, str, bool)):
            lines.append(f"- {k}: {_num(v)}")
        elif isinstance(v, dict) and v and all(isinstance(x, (int, float, str, bool)) for x in v.values()):
            lines.append(f"- {k}: " + ", ".join(f"{a}={_num(b)}" for a, b in v.items()))
    return lines


def step_lines(step: dict, row: dict, dense_bytes: int) -> list[str]:
    """Markdown lines of one step: its change against the dense baseline, then what its pass did."""
    info = step["info"]
    acc = "–" if row["test_acc"] is None else f"{row['test_acc']:.4f}"
    change = "" if row["acc_change"] is None else f" ({100 * row['acc_change']:+.2f} points against the dense baseline)"
    lines = [f"## {step['label']} ({step['pass']}, {step['seconds']:.1f} s)", "",
             f"test_acc {acc}{change}; {fmt_bytes(row['size_bytes'])}{'' if row['size_is_file'] else ' (estimate)'}, "
             f"{row['ratio']:.1f}x smaller than the original dense model; {row['kept']:.1%} of its weights kept.", ""]
    name = step["pass"]
    if name == "prune":
        lines += _prune_lines(info)
    elif name == "shrink":
        lines += _shrink_lines(info)
    elif name == "quantize":
        lines += _quantize_lines(info)
    elif "file_bytes" in info:
        lines += _huffman_lines(info, dense_bytes)
    else:
        lines += _generic_lines(info)
    return lines + [""]


def write_markdown(report: dict, path: Path, figures: list[Path]) -> Path:
    """``report.md``: the summary table, the final model per layer, each step's section, the figures."""
    dense = report["initial"]["dense_bytes"]
    rows = summary_rows(report)
    lines = [f"# {report['model']} on {report['dataset']}", "", f"Config: `{report['config']}`", "",
             *_md_table(list(COLUMNS), [_cells(r) for r in rows]), "", LEGEND, "",
             f"Original dense model: {report['initial']['params']:,} parameters, {fmt_bytes(dense)} at fp32 "
             f"({report['initial']['weights']:,} compressible weights); dense baseline test_acc: "
             + ("–" if baseline_acc(report) is None else f"{baseline_acc(report):.4f}") + ".", ""]
    if report["steps"]:
        lines += layer_table(report) + [""]
    for step, row in zip(report["steps"], rows[1:]):
        lines += step_lines(step, row, dense)
        if isinstance(step["info"].get("sensitivity"), dict):
            lines += sensitivity_tables(step["info"]["sensitivity"]) + [""]
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    return atomic_write(path, "\n".join(lines) + "\n")


def sensitivity_tables(sensitivity: dict) -> list[str]:
    """Markdown lines of a sensitivity measurement: layer × sparsity → accuracy, and layer × bits → accuracy
    (entropy of the cluster labels in bits per kept value), each table only if measured."""
    layers = sensitivity["layers"]
    head = (f"Sensitivity ({sensitivity['split']} accuracy on {sensitivity['samples']:,} samples, baseline "
            f"{sensitivity['baseline_acc']:.4f}; one layer at a time, no retraining).")
    lines = [head]
    if not layers:
        return lines + ["", "(no layer measured)"]
    for key in ("sparsity", "bits"):
        columns = sorted({p[0] for layer in layers for p in layer[key]})
        if not columns:
            continue
        caption = ("Accuracy with that layer alone pruned to each sparsity:" if key == "sparsity" else
                   "Accuracy with that layer alone k-means shared at each width in bits (entropy of the cluster "
                   "labels, bits per kept value):")
        lines += ["", caption, "", "| layer | weights | kept | " + " | ".join(f"{c:g}" for c in columns) + " |",
                  "|---|---:|---:|" + "---:|" * len(columns)]
        for layer in layers:
            cells = {p[0]: (f"{p[1]:.4f}" if key == "sparsity" else f"{p[1]:.4f} ({p[2]:.2f})") for p in layer[key]}
            lines.append(f"| {layer['name']} | {layer['weights']:,} | {layer['nonzero']:,} | "
                         + " | ".join(cells.get(c, "") for c in columns) + " |")
    return lines


def write_figures(report: dict, out: Path, histogram: list[dict] | None = None) -> list[Path]:
    """The run's PNG figures: per-layer sparsity, accuracy against size (each step a labelled point), accuracy and
    size per step, weight histograms of the quantized layers (``histogram``: one dict per layer, see
    `machop.figures.plot_weight_histogram`), sensitivity curves (``sensitivity_<step>.png`` for each step whose
    info has a ``sensitivity`` measurement)."""
    from machop.figures import (plot_accuracy_vs_size, plot_layer_sparsity, plot_sensitivity, plot_steps,
                                plot_weight_histogram)

    final = report["steps"][-1]["weights"] if report["steps"] else report["initial"]
    rows = summary_rows(report)
    dense = report["initial"]["dense_bytes"]
    figures = [
        plot_layer_sparsity(final["layers"], out / "sparsity_per_layer.png"),
        plot_accuracy_vs_size(rows, dense, baseline_acc(report), out / "accuracy_vs_size.png"),
        plot_steps(rows, dense, out / "accuracy_size_per_step.png"),
    ]
    if histogram:
        figures.append(plot_weight_histogram(histogram, out / "weight_histogram.png"))
    for step in report["steps"]:
        if isinstance(step["info"].get("sensitivity"), dict):
            figures.append(plot_sensitivity(step["info"]["sensitivity"], out / f"sensitivity_{step['label']}.png"))
    return figures
