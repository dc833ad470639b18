"""Gradual pruning (AGP, one ``[passes.X.gradual]`` step) against the shipped prune/retrain rounds.

LeNet-300-100 on the whole of Fashion-MNIST, both from the same dense
baseline, both to the same final sparsity (the last round of the
hand-tuned rounds the shipped config used before it chose its own
sparsities: fc1 0.95, fc2 0.88, fc3 0.65):

- ``rounds``: those four prune/retrain rounds (`ROUNDS`; 5 + 5 + 5 + 8 = 23
  epochs of retraining);
- ``agp E/R``: one prune step training E epochs, the sparsity rising over
  the first R (the cubic schedule), the rest at the final sparsity; same
  optimizer, learning rate and batch size.

Every side runs through ``./ch transform`` (configs written to the output
folder); the dense baseline is trained once by ``./ch transform`` too and
loaded by every side (``load_name``, ``load_type = "mz"``). Prints a table:
test accuracy of the final model (whole test split), its change against the
dense baseline, achieved sparsity per layer, epochs trained, the wall time
of the ``ch transform`` process and the seconds of its steps alone.

    OMP_NUM_THREADS=2 python bench/agp_vs_rounds.py [--agp 23:12 10:6] [--out mase_output/agp_vs_rounds]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machop.config import to_toml  # noqa: E402

SHIPPED = ROOT / "configs/examples/lenet300_fashion_mnist_deep_compression.toml"
ROUNDS = [  # (per-layer sparsity, retraining epochs): the hand-tuned rounds of the shipped config before "auto"
    ({"default": 0.9, "fc1": 0.7, "fc2": 0.5, "fc3": 0.3}, 5),
    ({"default": 0.9, "fc1": 0.85, "fc2": 0.7, "fc3": 0.45}, 5),
    ({"default": 0.9, "fc1": 0.92, "fc2": 0.82, "fc3": 0.55}, 5),
    ({"default": 0.9, "fc1": 0.95, "fc2": 0.88, "fc3": 0.65}, 8),
]
FINAL = ROUNDS[-1][0]
LAYERS = ("fc1", "fc2", "fc3")


EXTRA: list[str] = []  # more `ch transform` options (--ch-args), for a quick trial of the script


def ch_transform(config: dict, name: str, out: Path) -> tuple[dict, float]:
    """Run ``./ch transform`` on ``config`` (written to ``out/<name>.toml``); (its report, wall seconds)."""
    path = out / f"{name}.toml"
    path.write_text(to_toml(config))
    project = out / name
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "ch"), "transform", "--config", str(path), "--project-dir",
                    str(project), "--no-progress", *EXTRA], check=True)
    seconds = time.perf_counter() - start
    report = max(project.rglob("report.json"), key=os.path.getmtime)
    return json.loads(report.read_text()), seconds


def top_level(shipped: dict) -> dict:
    return {k: v for k, v in shipped.items() if k != "passes"}


def baseline(shipped: dict, out: Path) -> tuple[Path, float, float]:
    """Train the dense baseline as the shipped config's first step does: (its .mz checkpoint, test_acc, seconds)."""
    config = top_level(shipped) | {"passes": {"baseline": {"pass": "train"}}}
    report, seconds = ch_transform(config, "baseline", out)
    step = report["steps"][0]
    return Path(step["checkpoint"]), step["test_acc"], seconds


def rounds_config(shipped: dict, start: Path) -> dict:
    """The four prune/retrain rounds (`ROUNDS`), from the baseline."""
    passes = {}
    for i, (sparsity, epochs) in enumerate(ROUNDS, 1):
        passes[f"prune_{i}"] = {"pass": "prune", "weight": {"scope": "local", "granularity": "elementwise",
                                                            "method": "l1-norm", "sparsity": sparsity}}
        passes[f"retrain_{i}"] = {"pass": "train", "training": {"max_epochs": epochs, "learning_rate": 1e-3}}
    return top_level(shipped) | {"load_name": str(start), "load_type": "mz", "passes": passes}


def agp_config(shipped: dict, start: Path, epochs: int, ramp: int, frequency: int | None) -> dict:
    gradual = {"initial_sparsity": 0.0, "ramp_epochs": ramp, "training": {"max_epochs": epochs}}
    if frequency is not None:
        gradual["frequency"] = frequency
    table = {"pass": "prune", "weight": {"scope": "local", "granularity": "elementwise", "method": "l1-norm",
                                         "sparsity": FINAL}, "gradual": gradual}
    return top_level(shipped) | {"load_name": str(start), "load_type": "mz", "passes": {"agp": table}}


def summary(report: dict, seconds: float) -> dict:
    last = report["steps"][-1]
    layers = next(s["info"]["layers"] for s in reversed(report["steps"]) if "layers" in s["info"])
    epochs = sum(s["info"].get("epochs") or 0 for s in report["steps"])
    return {"test_acc": last["test_acc"], "epochs": epochs, "wall_s": round(seconds, 1),
            "steps_s": round(sum(s["seconds"] for s in report["steps"]), 1),
            "sparsity": {n: layers[n]["weight"]["achieved"] for n in LAYERS}, "run_dir": report["run_dir"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agp", nargs="+", default=["23:12", "10:6"], metavar="EPOCHS:RAMP",
                        help="AGP runs: total epochs and ramp epochs (default: 23:12, the rounds' 23 epochs, and 10:6)")
    parser.add_argument("--frequency", type=int, default=None, help="optimizer steps between mask updates")
    parser.add_argument("--out", type=Path, default=ROOT / "mase_output" / "agp_vs_rounds")
    parser.add_argument("--ch-args", default="", help="more ch transform options, e.g. '--limit-train-batches 3' "
                                                       "for a quick trial (the figures then mean nothing)")
    args = parser.parse_args()
    EXTRA.extend(args.ch_args.split())
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shipped = tomllib.loads(SHIPPED.read_text())

    start, dense_acc, dense_s = baseline(shipped, out)
    results = {"dense": {"test_acc": dense_acc, "wall_s": round(dense_s, 1), "checkpoint": str(start)}, "runs": {}}
    results["runs"]["rounds (4 x prune+retrain)"] = summary(*ch_transform(rounds_config(shipped, start), "rounds", out))
    for spec in args.agp:
        epochs, ramp = (int(x) for x in spec.split(":"))
        report, seconds = ch_transform(agp_config(shipped, start, epochs, ramp, args.frequency), f"agp_{epochs}_{ramp}",
                                       out)
        results["runs"][f"agp {epochs} ep, ramp {ramp}"] = summary(report, seconds)
    (out / "agp_vs_rounds.json").write_text(json.dumps(results, indent=2))

    print(f"\nLeNet-300-100, Fashion-MNIST, dense baseline test_acc {dense_acc:.4f} "
          f"(trained in {dense_s:.0f} s, not counted below); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    print("| run | test_acc | vs dense | fc1 / fc2 / fc3 sparsity | epochs | wall s | steps s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["runs"].items():
        sparsity = " / ".join(f"{r['sparsity'][n]:.4f}" for n in LAYERS)
        print(f"| {name} | {r['test_acc']:.4f} | {100 * (r['test_acc'] - dense_acc):+.2f} | {sparsity} | "
              f"{r['epochs']} | {r['wall_s']:.0f} | {r['steps_s']:.0f} |")
    print(f"\n{out / 'agp_vs_rounds.json'}")


if __name__ == "__main__":
    main()
