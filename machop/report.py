"""The run report (the CLI/report layer): the summary table, report.md and the figures of a run."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from machop.files import atomic_write
from machop.passes.graph import REGISTRY

COLUMNS = ("step", "test_acc", "non-zero", "kept", "bits/w", "size", "ratio", "time")
LEGEND = ("test_acc: of the model after that step (– not evaluated). size: the compressed file on disk; * an estimate "
          "of sparse, quantized storage before Huffman coding. ratio: dense fp32 parameters over size. bits/w: size "
          "in bits per non-zero weight.")


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def summary_rows(report: dict) -> list[dict]:
    """One row per step (plus the start).

    ``test_acc`` is that step's model's (None where it was not evaluated). ``size`` is the compressed file's
    bytes on disk after a Huffman step, else the sparse/quantized storage
    estimate (`machop.passes.graph.analysis.stats.weight_stats`); ``ratio`` is
    dense fp32 over that size, ``bits_per_weight`` size in bits over non-zero weights.
    """
    dense = report["initial"]["dense_bytes"]
    start = {"label": "(start)", "pass": "", "info": {}, "weights": report["initial"], "seconds": None,
             "test_acc": report.get("initial_test_acc")}
    rows, file_bytes = [], None
    for step in [start] + report["steps"]:
        info, w = step["info"], step["weights"]
        # a compressed file stays the model's size until a later step changes the model
        changes_model = step["pass"] in REGISTRY and REGISTRY[step["pass"]].changes_model
        file_bytes = info.get("file_bytes", None if changes_model else file_bytes)
        size = file_bytes or w["estimated_bytes"]
        rows.append({
            "step": step["label"], "pass": step["pass"], "test_acc": step["test_acc"],
            "nonzero_weights": w["nonzero_weights"], "weights": w["weights"],
            "bits_per_weight": 8 * size / max(1, w["nonzero_weights"]),
            "size_bytes": size, "size_is_file": file_bytes is not None, "estimated_bytes": w["estimated_bytes"],
            "ratio": dense / size, "seconds": step["seconds"],
        })
    return rows


def _cells(r: dict) -> list[str]:
    return [
        r["step"],
        "–" if r["test_acc"] is None else f"{r['test_acc']:.4f}",
        f"{r['nonzero_weights']:,}",
        f"{r['nonzero_weights'] / max(1, r['weights']):.1%}",
        f"{r['bits_per_weight']:.2f}",
        fmt_bytes(r["size_bytes"]) + ("" if r["size_is_file"] else "*"),
        f"{r['ratio']:.1f}x",
        "" if r["seconds"] is None else f"{r['seconds']:.0f}s",
    ]


def print_summary(report: dict, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    table = Table(title=f"{report['model']} on {report['dataset']}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "step" else "right", no_wrap=True)
    for r in summary_rows(report):
        table.add_row(*_cells(r))
    console.print(table)
    console.print(LEGEND)


def write_markdown(report: dict, path: Path, figures: list[Path]) -> Path:
    """``report.md``: the summary table, each step's figures and the figures' links."""
    lines = [f"# {report['model']} on {report['dataset']}", "", f"Config: `{report['config']}`", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in summary_rows(report)]
    lines += ["", LEGEND, ""]
    for step in report["steps"]:
        simple = {k: v for k, v in step["info"].items() if isinstance(v, (int, float, str, bool)) or v is None}
        lines.append(f"## {step['label']} ({step['pass']}, {step['seconds']:.1f} s)")
        lines += [""] + [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in simple.items()] + [""]
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


def write_figures(report: dict, out: Path, histogram: dict | None = None) -> list[Path]:
    """The run's PNG figures: per-layer sparsity, accuracy/size per step, weight histogram (if quantized),
    sensitivity curves (``sensitivity_<step>.png`` for each step whose info has a ``sensitivity`` measurement)."""
    from machop.figures import plot_layer_sparsity, plot_sensitivity, plot_steps, plot_weight_histogram

    final = report["steps"][-1]["weights"] if report["steps"] else report["initial"]
    figures = [
        plot_layer_sparsity(final["layers"], out / "sparsity_per_layer.png"),
        plot_steps(summary_rows(report), report["initial"]["dense_bytes"], out / "accuracy_size_per_step.png"),
    ]
    if histogram is not None:
        figures.append(plot_weight_histogram(**histogram, path=out / "weight_histogram.png"))
    for step in report["steps"]:
        if isinstance(step["info"].get("sensitivity"), dict):
            figures.append(plot_sensitivity(step["info"]["sensitivity"], out / f"sensitivity_{step['label']}.png"))
    return figures
