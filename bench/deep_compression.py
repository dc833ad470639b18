"""Past Deep Compression on Fashion-MNIST: LeNet-300-100 and LeNet-5, measured end to end.

Runs ``./ch transform`` on the shipped configs and writes, per model, the
stages (dense, pruned, quantized, Huffman: test_acc, non-zero weights, bits
per weight, size, ratio against dense fp32 of every parameter), where the
file's bytes are, and per layer the position bits per kept weight beside the
i.i.d. bound ``H(d)/d``, to ``docs/RESULTS.md`` and ``docs/RESULTS.json``.

    python bench/deep_compression.py [--models lenet300 lenet5] [--seeds 0 1]   # rows it runs replace RESULTS.json's
    python bench/deep_compression.py --rewrite   # RESULTS.md again from RESULTS.json and the kept runs, running none
    python bench/deep_compression.py --ablation [ROW ...]   # LeNet-5: what each part adds, alone and together
    python bench/deep_compression.py --sweep [agp new]      # LeNet-5: accuracy against file size, both pipelines

``--ablation`` and ``--sweep`` start every variant from the dense baseline
the main LeNet-5 run trained (``--load`` its best checkpoint, so every row
shares one baseline) and write ``docs/ABLATION.md`` / ``docs/SWEEP.md`` and
``imgs/lenet5_accuracy_vs_size.png``. Every variant's run is kept as a JSON
file and reused while its config and baseline are unchanged: the sweep's
runs at the shipped target are the ablation's "agp" and "all" rows, and two
processes may split the rows between them. Each part of the pipeline is one switch
(`VARIANT_SWITCHES`); "agp" is the pipeline before them: gradual magnitude
pruning with one-shot sensitivity curves, k-means, fine-tune, Huffman coding.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machop.report import fmt_bytes, summary_rows  # noqa: E402

CONFIGS = {
    "lenet300": "configs/examples/lenet300_fashion_mnist_deep_compression.toml",
    "lenet5": "configs/examples/lenet5_fashion_mnist_deep_compression.toml",
}
PEERS = {"lenet300": "Deep Compression 40x; soft weight-sharing 64x (MNIST)",
         "lenet5": "Deep Compression 39x; soft weight-sharing 162x; Bayesian Compression 361-419x (MNIST)"}
TARGET_RATIO, MAX_DROP = 100.0, 0.005  # at least 100x at accuracy parity (at most half a point below dense)
DENSE_FLOOR = {"lenet300": 0.8918, "lenet5": 0.9146}  # the dense baselines of earlier runs
PARTS = ("values", "positions", "codebooks", "raw", "header")
SWEEP_RATIOS = (60, 80, 150)  # ``auto.ratio`` targets of the --sweep runs, beside the shipped config's own
# the file before structure, compressibility training, distillation and retraining-aware allocation (AGP + k-means
# + Huffman): LeNet-5 as measured on a fresh machine on 2026-12-05 (63.8x), LeNet-300-100 on 2026-11-26 (63.6x)
BEFORE_PARTS = {"lenet5": {"values": 9330, "positions": 15578, "codebooks": 324, "raw": 1160, "header": 647},
                "lenet300": {"values": 5660, "positions": 9209, "codebooks": 552, "raw": 820, "header": 533}}


# --------------------------------------------------------------------------- reading a run


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
            "weights": report["initial"]["weights"], "bits_per_weight": 32.0 if stage == "dense" else r["bits_per_weight"],
            "size_bytes": size, "size_is_file": r["size_is_file"], "ratio": dense_size / size,
        })
    return out


def layers(huffman: dict) -> list[dict]:
    """Per coded layer: density, kept weights, position bits per kept weight and the i.i.d. bound H(d)/d."""
    return [{"layer": l["layer"], "shape_numel": l["numel"], "kept": l["nnz"], "density": l["density"],
             "position_bits": l.get("position_bits_per_weight", l.get("bits_per_index")),
             "iid_bound": l.get("iid_bound_bits_per_weight"), "position_map": l.get("position_map"),
             "value_bits": l["bits_per_weight"], "bytes": l["bytes"]} for l in huffman["layers"]]


def run(config: Path, project_dir: Path, *extra: str) -> dict:
    """``./ch transform`` on ``config``; the figures of its report."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "ch"), "transform", "--config", str(config),
                    "--project-dir", str(project_dir), "--no-progress", *extra], check=True)
    return read_run(max(project_dir.rglob("report.json"), key=os.path.getmtime), config, time.perf_counter() - start)


def read_run(report_path: Path, config: Path, seconds: float) -> dict:
    """The figures of a run's ``report.json``."""
    report = json.loads(report_path.read_text())
    steps = {s["pass"]: s["info"] for s in report["steps"]}
    huffman = steps["huffman"]
    test = [s["info"] for s in report["steps"] if s["pass"] == "test"]
    return {"config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else config.name,
            "seconds": round(seconds), "run_dir": str(report_path.parent), "stages": stages(report),
            "parts": huffman["total"]["parts"], "layers": layers(huffman), "file": huffman["path"],
            "decoded_test_acc": test[-1]["test_acc"] if test else None,
            "baseline_checkpoint": str(report_path.parent / "checkpoints" / "baseline" / "best.ckpt")}


def nncodec(file: str) -> dict:
    """`nncodec_peer.compare` of the file's model, or why not (NNCodec not installed)."""
    try:
        import nncodec_peer  # noqa: PLC0415 (a bench script beside this one; needs nncodec)
    except ImportError as e:
        return {"error": f"{e}; install with pip install --no-deps nncodec==2.1.3"}
    from machop.ir.mchz import load_compressed  # noqa: PLC0415 (the graph, not the bare model)
    return nncodec_peer.compare(load_compressed(file))


def drop_points(res: dict) -> float:
    """The compressed model's test_acc against the run's own dense baseline, in points."""
    return 100 * (res["stages"][-1]["test_acc"] - res["stages"][0]["test_acc"])


def within_drop(res: dict) -> bool:
    """No more than `MAX_DROP` below the run's dense baseline (test sets count images: exactly -0.50 holds)."""
    return -drop_points(res) <= 100 * MAX_DROP + 1e-6


def at_ratio(res: dict) -> bool:
    """The file at least `TARGET_RATIO` smaller than the dense fp32 model."""
    return res["stages"][-1]["ratio"] >= TARGET_RATIO


def at_parity(res: dict) -> bool:
    """At least `TARGET_RATIO` within `MAX_DROP` of the run's dense baseline."""
    return at_ratio(res) and within_drop(res)


def verdict(model: str, res: dict) -> str:
    """Whether the run shows what we aim at: the ratio, accuracy parity, a dense baseline no weaker than before."""
    dense, final = res["stages"][0], res["stages"][-1]
    checks = [(at_ratio(res), f"{final['ratio']:.1f}x >= {TARGET_RATIO:g}x"),
              (within_drop(res), f"{drop_points(res):+.2f} points >= {-100 * MAX_DROP:g}"),
              (dense["test_acc"] >= DENSE_FLOOR[model], f"dense {dense['test_acc']:.4f} >= {DENSE_FLOOR[model]}")]
    return "; ".join(("ok: " if ok else "MISSED: ") + text for ok, text in checks)


# --------------------------------------------------------------------------- variants of a config

VARIANT_SWITCHES = ("structure", "prior", "distill", "retrain")
PRIOR_STEP = {"pass": "train", "training": {"max_epochs": 3, "learning_rate": 5e-4}, "prior": {"weight": 0.3}}


def variant(config: dict, *, structure: bool, prior: bool, distill: bool, retrain: bool,
            ratio: float | None = None) -> dict:
    """The shipped pipeline with each part on or off: ``structure`` (neurons and filters removed before the
    gradual step, and keep-bitmaps in the file), ``prior`` (soft weight-sharing: the config's, in the gradual
    step or a step of its own, or else `PRIOR_STEP` before quantize), ``distill`` (every ``distill`` table and
    the baseline step's extra ``teachers``), ``retrain`` (retraining-aware sensitivity curves); ``ratio``
    replaces the target."""
    c = copy.deepcopy(config)
    if prior and not any("prior" in t or "prior" in t.get("gradual", {}) for t in c["passes"].values()):
        step = copy.deepcopy(PRIOR_STEP) | ({"distill": {"teacher": "baseline"}} if distill else {})
        c["passes"] = {k2: v2 for k, v in c["passes"].items()
                       for k2, v2 in ((("cluster", step), (k, v)) if k == "quantize" else ((k, v),))}
    passes = c["passes"]
    for label in list(passes):
        table = passes[label]
        kind = table.get("pass", label)
        if not structure and (kind == "shrink" or label == "structure"):
            del passes[label]
            continue
        if not prior and "prior" in table:  # a step of its own
            del passes[label]
            continue
        if not prior:
            table.get("gradual", {}).pop("prior", None)
        if not distill:
            table.pop("distill", None)
            table.pop("teachers", None)
            table.get("gradual", {}).pop("distill", None)
        auto = table.get("weight", {}).get("auto")
        if auto is not None:
            if not retrain:
                auto["retrain_steps"] = 0
            if ratio is not None:
                auto["ratio"] = ratio
        if kind == "huffman" and not structure:
            table["live_maps"] = False
    return c


def earlier_run(config: dict, name: str, folder: Path, baseline: str) -> dict | None:
    """The figures of an earlier run of the same variant config from the same baseline, if any."""
    done = folder / f"{name}.json"
    earlier = json.loads(done.read_text()) if done.is_file() else {}
    return earlier if earlier.get("variant") == config and earlier.get("baseline") == baseline else None


def run_variant(config: dict, name: str, folder: Path, baseline: str) -> dict:
    """One variant's run from the dense ``baseline``, kept as ``folder/name.json``: the ablation and the sweep
    share rows, two processes may split them, and a stopped bench resumes."""
    earlier = earlier_run(config, name, folder, baseline)
    if earlier is not None:
        return earlier
    path = folder / f"{name}.toml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    result = run(path, folder / name, "--load", baseline, "--load-type", "pl") | {"variant": config,
                                                                                  "baseline": baseline}
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------- writing


def part_row(parts: dict) -> str:
    return "| " + " | ".join(f"{parts[p]:,}" for p in PARTS) + f" | {sum(parts[p] for p in PARTS):,} |"


def model_markdown(title: str, model: str, res: dict) -> list[str]:
    dense, final = res["stages"][0], res["stages"][-1]
    lines = [f"## {title} ({res['config']}, {res['seconds']} s, {res['date']})", "",
             "| stage | test_acc | non-zero weights | bits/weight | size | ratio |", "|---|---|---|---|---|---|"]
    for s in res["stages"]:
        size = fmt_bytes(s["size_bytes"]) + ("" if s["size_is_file"] or s["stage"] == "dense" else " (est.)")
        lines.append(f"| {s['stage']} | {s['test_acc']:.4f} | {s['nonzero_weights']:,} "
                     f"({s['nonzero_weights'] / s['weights']:.2%}) | {s['bits_per_weight']:.2f} | {size} | "
                     f"{s['ratio']:.1f}x |")
    lines += ["", f"Compressed {final['ratio']:.1f}x (file on disk vs dense fp32), test_acc "
              f"{final['test_acc']:.4f} vs dense {dense['test_acc']:.4f} "
              f"({drop_points(res):+.2f} points); the decoded file tests at "
              f"{res['decoded_test_acc']:.4f}. Peers on MNIST: {PEERS[model]}.", "",
              f"Check: {verdict(model, res)}.", "", "Where the bytes of the file are:", "",
              "| | " + " | ".join(PARTS) + " | file |", "|" + "---|" * (len(PARTS) + 2),
              "| before (AGP pipeline) " + part_row(BEFORE_PARTS[model]), "| this run " + part_row(res["parts"]), "",
              "Positions per layer, bits per kept weight, beside the i.i.d. bound H(d)/d of the layer's density "
              "(below the bound: the mask's structure is paid for once, in keep-bitmaps):", "",
              "| layer | weights | kept | density | position bits | H(d)/d | map | value bits | bytes |",
              "|---|---|---|---|---|---|---|---|---|"]
    for l in res["layers"]:
        bound = "-" if l["iid_bound"] is None else f"{l['iid_bound']:.2f}"
        lines.append(f"| {l['layer']} | {l['shape_numel']:,} | {l['kept']:,} | {l['density']:.2%} | "
                     f"{l['position_bits']:.2f} | {bound} | {l['position_map'] or '-'} | {l['value_bits']:.2f} | "
                     f"{l['bytes']:,} |")
    n = res.get("nncodec")
    if n is not None and "error" in n:
        lines += ["", f"NNCodec: not measured ({n['error']})."]
    elif n is not None:
        lines += ["", f"NNCodec (MPEG NNC's reference coder) on the same integer levels: {n['nncodec_weight_bytes']:,} "
                      f"bytes against machop's {n['machop_weight_bytes']:,} (values + positions; "
                      f"{n['ratio']:.3f}x); the whole file with NNCodec's stream instead: {n['nncodec_file_bytes']:,} "
                      f"bytes, machop's {n['file_bytes']:,}."]
    return lines + [""]


def header(results: dict, title: str) -> list[str]:
    return [f"# {title}", "", f"Command: `{results['command']}`  ", f"Machine: {results['machine']}  ",
            f"Date: {results['date']}", ""]


def seeds_markdown(models: dict) -> list[str]:
    """LeNet-5 at every seed run: one seed's result may be luck, so how many seeds hold parity, and the spread."""
    runs = {key: res for key, res in models.items() if key.split(" ")[0] == "lenet5"}
    if len(runs) < 2:
        return []
    lines = ["## LeNet-5 across seeds", "", f"| run | dense | compressed | Δ points | ratio | "
             f"{TARGET_RATIO:g}x within {100 * MAX_DROP:g} points |", "|---|---|---|---|---|---|"]
    for key, res in runs.items():
        lines.append(f"| {key} | {res['stages'][0]['test_acc']:.4f} | {res['stages'][-1]['test_acc']:.4f} | "
                     f"{drop_points(res):+.2f} | {res['stages'][-1]['ratio']:.1f}x | "
                     f"{'yes' if at_parity(res) else 'no'} |")
    drops = [drop_points(res) for res in runs.values()]
    held = sum(at_parity(res) for res in runs.values())
    return lines + ["", f"{held} of {len(runs)} seeds hold {TARGET_RATIO:g}x within {100 * MAX_DROP:g} points; "
                        f"Δ mean {sum(drops) / len(drops):+.2f} points, {min(drops):+.2f} to {max(drops):+.2f}.", ""]


def markdown(results: dict) -> str:
    lines = header(results, "Past Deep Compression on Fashion-MNIST")
    if results.get("rewritten"):
        lines += ["Written from the runs of earlier bench commands (`--rewrite`); each section gives its run's date.",
                  ""]
    for key, res in results["models"].items():
        model = key.split(" ")[0]
        lines += model_markdown(key, model, res)
    lines += seeds_markdown(results["models"])
    lines += ["## LeNet-5: accuracy against file size, and what each part adds", "",
              "From one dense baseline: `--sweep` ([SWEEP.md](SWEEP.md)), `--ablation` ([ABLATION.md](ABLATION.md)).",
              "", "![accuracy against size](../imgs/lenet5_accuracy_vs_size.png)", ""]
    return "\n".join(lines)


def table_rows(rows: dict, dense_acc: float) -> list[str]:
    lines = ["| run | test_acc | Δ points | file | ratio | time |", "|---|---|---|---|---|---|"]
    for name, res in rows.items():
        final = res["stages"][-1]
        lines.append(f"| {name} | {final['test_acc']:.4f} | {100 * (final['test_acc'] - dense_acc):+.2f} | "
                     f"{final['size_bytes']:,} B | {final['ratio']:.1f}x | {res['seconds']} s |")
    return lines


def plot_sweep(sweep: dict, dense: dict, path: Path) -> None:
    dense_acc = dense["test_acc"]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for pipeline, runs in sweep.items():
        pts = sorted((r["stages"][-1]["size_bytes"] / 1000, r["stages"][-1]["test_acc"]) for r in runs.values())
        ax.plot(*zip(*pts), marker="o", label=pipeline)
    ax.axhline(dense_acc, color="gray", ls="--", lw=1, label=f"dense fp32 ({dense_acc:.4f})")
    ax.axhline(dense_acc - MAX_DROP, color="gray", ls=":", lw=1, label="parity (-0.5 points)")
    ax.axvline(dense["size_bytes"] / 1000 / TARGET_RATIO, color="tab:red", ls=":", lw=1, label=f"{TARGET_RATIO:g}x")
    ax.set_xlabel("file size (kB, .mchz on disk)")
    ax.set_ylabel("test_acc")
    ax.set_title("LeNet-5 on Fashion-MNIST: accuracy against file size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


ABLATION_ROWS = {"agp": {}, **{k: {k: True} for k in VARIANT_SWITCHES}, "all": dict.fromkeys(VARIANT_SWITCHES, True)}
SWEEP_PIPELINES = {"agp": "agp", "new": "all"}  # each pipeline of the sweep is an ablation row at several targets


def rows_markdown(results: dict, rows: dict, sweep: dict, baseline: str) -> str:
    dense = next(iter([*rows.values(), *[r for runs in sweep.values() for r in runs.values()]]))["stages"][0]
    dense_acc = dense["test_acc"]
    lines = header(results, "LeNet-5 on Fashion-MNIST: " + ("ablation" if rows else "accuracy against size"))
    shown = Path(baseline).resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    parts = ("each part of the pipeline on or off (`bench/deep_compression.py`'s `variant`): structure (neurons "
             "and filters removed, keep-bitmaps in the file), prior (soft weight-sharing), distill (distillation "
             "from the baseline), retrain (retraining-aware sensitivity curves)" if rows else
             "agp: the pipeline before structure, prior, distillation and retraining-aware curves; new: the shipped "
             "config with all four; each at several targets (`auto.ratio`)")
    lines += [f"Every run starts from the same dense baseline (`{shown}`, test_acc {dense_acc:.4f}); {parts}.", ""]
    if rows:
        lines += table_rows(rows, dense_acc) + [""]
    for pipeline, runs in sweep.items():
        lines += [f"### {pipeline}", ""] + table_rows(runs, dense_acc) + [""]
    if sweep:
        plot_sweep(sweep, dense, ROOT / "imgs" / "lenet5_accuracy_vs_size.png")
        lines += ["![accuracy against size](../imgs/lenet5_accuracy_vs_size.png)", ""]
    return "\n".join(lines)


def write_rows(out: Path, name: str, results: dict, text: str) -> None:
    """``docs/NAME.json`` and ``docs/NAME.md``, and the table on stdout."""
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="LeNet-5 runs at each of these seeds (the config's is 0)")
    parser.add_argument("--rewrite", action="store_true",
                        help="run nothing: write RESULTS.md and RESULTS.json again from RESULTS.json's runs and "
                             "those kept in --project-dir")
    parser.add_argument("--ablation", nargs="*", choices=list(ABLATION_ROWS),
                        help="LeNet-5: each part alone and together (default: every row); rows already run are "
                             "kept, so two processes may share the rows")
    parser.add_argument("--sweep", nargs="*", choices=list(SWEEP_PIPELINES),
                        help="LeNet-5: accuracy against size at each of SWEEP_RATIOS and the shipped target "
                             "(default: both pipelines)")
    parser.add_argument("--baseline", help="dense LeNet-5 checkpoint for --ablation/--sweep (default: the one "
                                           "docs/RESULTS.json's LeNet-5 run trained)")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--project-dir", default=str(ROOT / "mase_output" / "bench"))
    args = parser.parse_args()
    out, project = Path(args.out), Path(args.project_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "command": "python bench/deep_compression.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
                   f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.ablation is None and args.sweep is None:
        for model in [] if args.rewrite else args.models:
            for seed in args.seeds if model == "lenet5" else [0]:
                key, extra = (model, ()) if seed == 0 else (f"{model} seed {seed}", ("--seed", str(seed)))
                res = run(ROOT / CONFIGS[model], project / key.replace(" ", "_"), *extra)
                res |= {"key": key, "date": time.strftime("%Y-%m-%d"), "nncodec": nncodec(res["file"])}
                (project / f"{key.replace(' ', '_')}.json").write_text(json.dumps(res, indent=2) + "\n")
        # RESULTS.json's runs, replaced by every run kept so far (another process may be running the others)
        earlier = json.loads((out / "RESULTS.json").read_text())["models"] if (out / "RESULTS.json").is_file() else {}
        kept = {r["key"]: r for r in (json.loads(f.read_text()) for f in project.glob("*.json"))}
        results["models"] = dict(sorted((earlier | kept).items()))
        if not results["models"]:
            parser.error(f"no runs in {out / 'RESULTS.json'} or kept in {project} to write")
        results["rewritten"] = args.rewrite
        write_rows(out, "RESULTS", results, markdown(results))
        return 0
    baseline = args.baseline or json.loads((out / "RESULTS.json").read_text())["models"]["lenet5"]["baseline_checkpoint"]
    config = tomllib.loads((ROOT / CONFIGS["lenet5"]).read_text())
    folder = project / "lenet5_variants"
    shipped = next(t["weight"]["auto"]["ratio"] for t in config["passes"].values() if "auto" in t.get("weight", {}))

    def ablation_run(row: str, ratio: float = shipped) -> tuple[dict, str]:
        """A row's config and name; the sweep's runs at the shipped target are the ablation's rows."""
        switches = dict.fromkeys(VARIANT_SWITCHES, False) | ABLATION_ROWS[row]
        return variant(config, ratio=ratio, **switches), row if ratio == shipped else f"{row}_{ratio:g}"

    ratios = sorted({*SWEEP_RATIOS, shipped})
    args.ablation = list(ABLATION_ROWS) if args.ablation == [] else args.ablation
    args.sweep = list(SWEEP_PIPELINES) if args.sweep == [] else args.sweep
    for row in args.ablation or []:
        run_variant(*ablation_run(row), folder, baseline)
    for pipeline in args.sweep or []:
        for ratio in ratios:
            run_variant(*ablation_run(SWEEP_PIPELINES[pipeline], ratio), folder, baseline)
    # every row run so far (another process may be running the others)
    rows = {row: r for row in ABLATION_ROWS if (r := earlier_run(*ablation_run(row), folder, baseline))}
    sweep = {pipeline: {f"{pipeline} ratio {ratio:g}": r for ratio in ratios
                        if (r := earlier_run(*ablation_run(row, ratio), folder, baseline))}
             for pipeline, row in SWEEP_PIPELINES.items()}
    if args.ablation is not None:
        every = results | {"command": "python bench/deep_compression.py --ablation", "ablation": rows}
        write_rows(out, "ABLATION", every, rows_markdown(every, rows, {}, baseline))
    if args.sweep is not None:
        every = results | {"command": "python bench/deep_compression.py --sweep", "sweep": sweep}
        write_rows(out, "SWEEP", every, rows_markdown(every, {}, sweep, baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
