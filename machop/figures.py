"""Figures of a run (matplotlib, PNG): sparsity per layer, weight histogram with centroids, accuracy and size per step,
per-layer sensitivity to pruning and weight sharing."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from machop.files import atomic_write  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def plot_layer_sparsity(layers: list[dict], path: Path, title: str = "Weight sparsity per layer") -> Path:
    """Bars of each layer's pruned fraction; ``layers``: dicts with ``name``, ``weights``, ``nonzero``."""
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(layers) + 2), 3.5))
    names = [layer["name"] for layer in layers]
    sparsity = [1 - layer["nonzero"] / max(1, layer["weights"]) for layer in layers]
    bars = ax.bar(range(len(names)), sparsity, color="#4c72b0")
    for bar, layer in zip(bars, layers):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{layer['weights']:,}", ha="center",
                va="bottom", fontsize=7, rotation=90 if len(layers) > 8 else 0)
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("pruned fraction")
    ax.set_title(title + " (labels: weights per layer)")
    return _save(fig, path)


HISTOGRAM_LAYERS = 8  # at most this many layers (the largest) in the weight histogram


def plot_weight_histogram(layers: list[dict], path: Path) -> Path:
    """Each quantized layer's non-zero weights before quantization (grey) and at the end of the run (blue: after
    any fine-tuning of the centroids), centroids marked.

    ``layers``: dicts with ``layer`` (name), ``before`` and ``after`` (tensors)
    and ``centroids`` (tensor or None); the `HISTOGRAM_LAYERS` largest are
    drawn, one row each, in the order given.
    """
    shown = sorted(layers, key=lambda d: -d["after"].numel())[:HISTOGRAM_LAYERS]
    shown = [d for d in layers if any(d is s for s in shown)]
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 1.9 * len(shown) + 0.8), squeeze=False)
    for ax, d in zip(axes[:, 0], shown):
        before, after = (t.detach().flatten().float().cpu() for t in (d["before"], d["after"]))
        before, after = before[before != 0].numpy(), after[after != 0].numpy()
        both = [v for v in (before, after) if len(v)]
        lo = min(float(v.min()) for v in both) if both else -1.0
        hi = max(float(v.max()) for v in both) if both else 1.0
        bins = torch.linspace(lo, hi if hi > lo else lo + 1e-6, 121).numpy()
        ax.hist(before, bins=bins, color="#999999", alpha=0.6, label="before quantization")
        ax.hist(after, bins=bins, color="#4c72b0", alpha=0.8, label="end of the run")
        centroids = d.get("centroids")
        text = f"{d['layer']}: {len(after):,} non-zero"
        if centroids is not None:
            for c in centroids.detach().float().cpu().tolist():
                ax.axvline(c, color="#dd8452", linewidth=0.6, alpha=0.8)
            text += f", {centroids.numel()} centroids"
        ax.text(0.01, 0.95, text, transform=ax.transAxes, fontsize=8, va="top", ha="left",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
        ax.set_ylabel("count", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("weight value")
    more = f" (the {len(shown)} largest of {len(layers)})" if len(layers) > len(shown) else ""
    fig.suptitle(f"Non-zero weights before and after quantization{more}; orange: centroids", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_accuracy_vs_size(rows: list[dict], dense_bytes: int, baseline_acc: float | None, path: Path) -> Path:
    """Test accuracy against size, each evaluated step a point labelled with its name, joined in run order.

    ``rows`` from `machop.report.summary_rows`; steps with the same size and
    accuracy share one point and one label. Size on a log axis; the dense
    fp32 size and the baseline accuracy dashed.
    """
    points: list[tuple[float, float, list[str]]] = []
    for r in rows:
        if r["test_acc"] is None:
            continue
        size = r["size_bytes"] / 1024
        if points and points[-1][0] == size and points[-1][1] == r["test_acc"]:
            points[-1][2].append(r["step"])
        else:
            points.append((size, r["test_acc"], [r["step"]]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, "-", color="#4c72b0", alpha=0.4, linewidth=1)
        ax.scatter(xs, ys, color="#4c72b0", zorder=3, s=25)
        for i, (x, y, labels) in enumerate(points):
            ax.annotate(", ".join(labels), (x, y), textcoords="offset points", xytext=(5, 6 if i % 2 == 0 else -12),
                        fontsize=8)
        span = max(ys) - min(ys + ([baseline_acc] if baseline_acc is not None else []))
        low = min(ys + ([baseline_acc] if baseline_acc is not None else []))
        ax.set_ylim(low - 0.15 * span - 0.005, max(ys + ([baseline_acc] if baseline_acc is not None else []))
                    + 0.15 * span + 0.005)
    ax.axvline(dense_bytes / 1024, color="#dd8452", linestyle="--", linewidth=0.8,
               label=f"dense fp32 ({dense_bytes / 1024:,.0f} KB)")
    if baseline_acc is not None:
        ax.axhline(baseline_acc, color="black", linestyle=":", linewidth=0.8, label=f"baseline {baseline_acc:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("size (KB, log scale; file on disk after Huffman coding, else the estimate)")
    ax.set_ylabel("test_acc")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Accuracy against size, step by step")
    return _save(fig, path)


def plot_steps(rows: list[dict], dense_bytes: int, path: Path) -> Path:
    """Test accuracy and model size after each step (``rows`` from `machop.report.summary_rows`)."""
    fig, ax1 = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 3.5))
    labels = [r["step"] for r in rows]
    acc = [r["test_acc"] if r["test_acc"] is not None else float("nan") for r in rows]
    ax1.plot(range(len(rows)), acc, "o-", color="#4c72b0", label="test_acc")
    ax1.set_ylabel("test_acc", color="#4c72b0")
    ax1.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
    ax2 = ax1.twinx()
    size = [r["size_bytes"] / 1024 for r in rows]
    ax2.bar(range(len(rows)), size, alpha=0.3, color="#dd8452", label="size (KB)")
    ax2.axhline(dense_bytes / 1024, color="#dd8452", linestyle="--", linewidth=0.8)
    ax2.set_ylabel("size (KB; dashed: dense fp32)", color="#dd8452")
    ax2.set_yscale("log")
    ax1.set_title("Accuracy and size per step")
    return _save(fig, path)


def plot_sensitivity(sensitivity: dict, path: Path) -> Path:
    """Per layer, accuracy against sparsity (and, when measured, against k-means bits); the baseline dashed.

    ``sensitivity``: `machop.passes.graph.analysis.sensitivity.Sensitivity.to_json()`.
    """
    layers = sensitivity["layers"]
    with_bits = any(layer["bits"] for layer in layers)
    with_sparsity = any(layer["sparsity"] for layer in layers)
    panels = [p for p, on in (("sparsity", with_sparsity), ("bits", with_bits)) if on] or ["sparsity"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1, 4), squeeze=False)
    colors = plt.get_cmap("tab10" if len(layers) <= 10 else "tab20")
    baseline = sensitivity["baseline_acc"]
    handles: dict[str, object] = {}  # label → line; labels given explicitly (matplotlib hides ones starting "_")
    for ax, panel in zip(axes[0], panels):
        for i, layer in enumerate(layers):
            points = layer[panel]
            if not points:
                continue
            label = f"{layer['name']} ({layer['weights']:,})"
            style = ("o-", "s:", "^-.")[(i // colors.N) % 3]  # colours repeat past 20 layers: markers differ
            (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], style, markersize=3, linewidth=1,
                              color=colors(i % colors.N))
            handles.setdefault(label, line)
        handles.setdefault(f"baseline {baseline:.4f}", ax.axhline(baseline, color="black", linestyle="--", linewidth=0.8))
        ax.set_xlabel("sparsity of that layer alone" if panel == "sparsity" else "k-means bits of that layer alone")
        ax.set_ylabel(f"{sensitivity['split']} accuracy ({sensitivity['samples']:,} samples)")
        values = [p[1] for layer in layers for p in layer[panel]] + [baseline]
        lo, hi = min(values), max(values)
        pad = 0.08 * (hi - lo) + 0.005
        ax.set_ylim(max(-0.02, lo - pad), min(1.02, hi + pad))  # the curves' own range: small drops stay visible
        ax.grid(alpha=0.3)
        ax.set_title("Accuracy vs sparsity" if panel == "sparsity" else "Accuracy vs k-means bits")
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
               title="layer (weights)", title_fontsize=8, ncol=1 if len(handles) <= 21 else 2)
    fig.suptitle("Sensitivity: one layer compressed at a time, no retraining", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path
