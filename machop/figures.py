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


def plot_weight_histogram(
    before: torch.Tensor, after: torch.Tensor, centroids: torch.Tensor | None, layer: str, path: Path
) -> Path:
    """Non-zero weights of one layer before and after quantization, centroids marked."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharex=True)
    for ax, w, label in ((axes[0], before, "before quantization"), (axes[1], after, "after quantization")):
        w = w.detach().flatten()
        w = w[w != 0].cpu().numpy()
        ax.hist(w, bins=200, color="#4c72b0")
        ax.set_title(f"{layer}: {label} ({len(w):,} non-zero)")
        ax.set_xlabel("weight value")
    if centroids is not None:
        for c in centroids.detach().cpu().tolist():
            axes[1].axvline(c, color="#dd8452", linewidth=0.6, alpha=0.8)
        axes[1].set_title(axes[1].get_title() + f", {len(centroids)} centroids")
    axes[0].set_ylabel("count")
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
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title("Accuracy vs sparsity" if panel == "sparsity" else "Accuracy vs k-means bits")
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
               title="layer (weights)", title_fontsize=8, ncol=1 if len(handles) <= 21 else 2)
    fig.suptitle("Sensitivity: one layer compressed at a time, no retraining", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path
