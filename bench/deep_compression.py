"""Reproduce Deep Compression's table on Fashion-MNIST: LeNet-300-100 and LeNet-5.

Runs ``./ch transform`` on the shipped configs, then writes per stage (dense,
pruned, quantized, Huffman) test_acc, non-zero weights, bits per weight, size
and compression ratio to ``docs/RESULTS.md`` and ``docs/RESULTS.json``.
Sizes are the storage estimate before Huffman coding and the real file on
disk after it; ratios are against the dense fp32 parameters.

    python bench/deep_compression.py [--models lenet300 lenet5] [--out docs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machop.report import fmt_bytes, summary_rows  # noqa: E402

CONFIGS = {
    "lenet300": "configs/examples/lenet300_fashion_mnist_deep_compression.toml",
    "lenet5": "configs/examples/lenet5_fashion_mnist_deep_compression.toml",
}
PAPER = {"lenet300": "40x (MNIST, 1.6% error)", "lenet5": "39x (MNIST, 0.74% error)"}
TARGET_RATIO, MAX_DROP = 60.0, 0.005  # at least 60x at accuracy parity (at most half a point below dense)
DENSE_FLOOR = {"lenet300": 0.8918, "lenet5": 0.9154}  # the dense baselines of the hand-tuned configs
PARTS = ("values", "positions", "codebooks", "raw", "header")


def stages(report: dict) -> list[dict]:
    """Dense (after the baseline step), pruned (before quantize), quantized (before Huffman), Huffman (last)."""
    rows = summary_rows(report)[1:]  # without the (start) row
    passes = [s["pass"] for s in report["steps"]]
    q, h = passes.index("quantize"), passes.index("huffman")
    picks = {"dense": 0, "pruned": q - 1, "quantized": h - 1, "huffman": len(rows) - 1}
    out = []
    for stage, i in picks.items():
        r = rows[i]
        dense_size = report["initial"]["dense_bytes"]
        size = dense_size if stage == "dense" else r["size_bytes"]
        out.append({
            "stage": stage, "step": r["step"], "test_acc": r["test_acc"], "nonzero_weights": r["nonzero_weights"],
            "weights": r["weights"], "bits_per_weight": 32.0 if stage == "dense" else r["bits_per_weight"],
            "size_bytes": size, "size_is_file": r["size_is_file"], "ratio": dense_size / size,
        })
    return out


def run(model: str, project_dir: Path) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "ch"), "transform", "--config", str(ROOT / CONFIGS[model]),
                    "--project-dir", str(project_dir), "--no-progress"], check=True)
    seconds = time.perf_counter() - start
    report_path = max(project_dir.rglob("report.json"), key=os.path.getmtime)
    report = json.loads(report_path.read_text())
    huffman = next(s for s in report["steps"] if s["pass"] == "huffman")["info"]["total"]
    return {"config": CONFIGS[model], "seconds": round(seconds), "run_dir": str(report_path.parent),
            "stages": stages(report), "parts": huffman["parts"]}


def verdict(model: str, res: dict) -> str:
    """Whether the run shows what we aim at: the ratio, accuracy parity, a dense baseline no weaker than before."""
    dense, final = res["stages"][0], res["stages"][-1]
    checks = [(final["ratio"] >= TARGET_RATIO, f"{final['ratio']:.1f}x >= {TARGET_RATIO:g}x"),
              (dense["test_acc"] - final["test_acc"] <= MAX_DROP,
               f"{100 * (final['test_acc'] - dense['test_acc']):+.2f} points >= {-100 * MAX_DROP:g}"),
              (dense["test_acc"] >= DENSE_FLOOR[model], f"dense {dense['test_acc']:.4f} >= {DENSE_FLOOR[model]}")]
    return "; ".join(("ok: " if ok else "MISSED: ") + text for ok, text in checks)


def markdown(results: dict) -> str:
    lines = ["# Deep Compression on Fashion-MNIST", "",
             f"Command: `{results['command']}`  ", f"Machine: {results['machine']}  ", f"Date: {results['date']}", ""]
    for model, res in results["models"].items():
        dense = res["stages"][0]
        final = res["stages"][-1]
        lines += [f"## {model} ({res['config']}, {res['seconds']} s)", "",
                  "| stage | test_acc | non-zero weights | bits/weight | size | ratio |", "|---|---|---|---|---|---|"]
        for s in res["stages"]:
            size = fmt_bytes(s["size_bytes"]) + ("" if s["size_is_file"] or s["stage"] == "dense" else " (est.)")
            lines.append(f"| {s['stage']} | {s['test_acc']:.4f} | {s['nonzero_weights']:,} "
                         f"({s['nonzero_weights'] / s['weights']:.1%}) | {s['bits_per_weight']:.2f} | {size} | "
                         f"{s['ratio']:.1f}x |")
        lines += ["", f"Compressed {final['ratio']:.1f}x (file on disk vs dense fp32), test_acc "
                  f"{final['test_acc']:.4f} vs dense {dense['test_acc']:.4f} "
                  f"({100 * (final['test_acc'] - dense['test_acc']):+.2f} points). Deep Compression on MNIST: "
                  f"{PAPER[model]}.", "", f"Check: {verdict(model, res)}.", "",
                  "Where the bytes of the file are:", "", "| " + " | ".join(PARTS) + " | file |",
                  "|" + "---|" * (len(PARTS) + 1),
                  "| " + " | ".join(f"{res['parts'][p]:,}" for p in PARTS) + f" | {sum(res['parts'][p] for p in PARTS):,} |",
                  ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--project-dir", default=str(ROOT / "mase_output" / "bench"))
    args = parser.parse_args()
    results = {
        "command": "python bench/deep_compression.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
                   f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "models": {m: run(m, Path(args.project_dir)) for m in args.models},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "RESULTS.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "RESULTS.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
