"""The run report: the summary table `ch transform` prints (the CLI/report layer)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def summary_rows(report: dict) -> list[dict]:
    """One row per step: test_acc (last measured), non-zero weights, size and ratio where a file was written."""
    rows, acc = [], None
    dense = report["initial"]["dense_bytes"]
    for step in report["steps"]:
        info = step["info"]
        acc = info.get("test_acc", acc)
        size = info.get("file_bytes")
        rows.append({
            "step": step["label"],
            "pass": step["pass"],
            "test_acc": acc,
            "nonzero_weights": step["weights"]["nonzero_weights"],
            "weights": step["weights"]["weights"],
            "bits_per_weight": info.get("bits_per_weight"),
            "size_bytes": size,
            "ratio": dense / size if size else None,
            "seconds": step["seconds"],
        })
    return rows


def print_summary(report: dict, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    table = Table(title=f"{report['model']} on {report['dataset']}")
    for col in ("step", "pass", "test_acc", "non-zero weights", "bits/w", "size", "ratio", "time"):
        table.add_column(col, justify="left" if col in ("step", "pass") else "right")
    init = report["initial"]
    table.add_row("(start)", "", "-", f"{init['nonzero_weights']:,}", "32", _fmt_bytes(init["dense_bytes"]), "1.0x", "")
    for r in summary_rows(report):
        table.add_row(
            r["step"], r["pass"],
            "-" if r["test_acc"] is None else f"{r['test_acc']:.4f}",
            f"{r['nonzero_weights']:,} ({r['nonzero_weights'] / max(1, r['weights']):.1%})",
            "-" if r["bits_per_weight"] is None else f"{r['bits_per_weight']:.2f}",
            _fmt_bytes(r["size_bytes"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.1f}x",
            f"{r['seconds']:.0f}s",
        )
    console.print(table)
