"""Draw the README figures in ``imgs/`` from machop's real registries, so they cannot drift from the code.

Run from the repository root::

    python imgs/draw_figures.py [--out imgs] [--config FILE.toml] [--results docs/RESULTS.json]

Figures (PNG, matplotlib Agg, no network, a few seconds):

- ``overall_pipeline.png``: the Deep Compression steps of the shipped config
  (one box per ``[passes.*]`` table, in file order), with what each step does
  and what it leaves in the model;
- ``weight_wise.png``: the mask the real prune pass gives the first conv layer
  of a tiny demo net at 50% sparsity, one panel per weight method in
  ``WEIGHT_METHODS``;
- ``activation_pruning.png``: what the inserted ``ActivationPrune`` module
  zeroes in the second conv layer's input for one sample, one panel per
  method in ``ACTIVATION_METHODS``;
- ``results_compression.png``: compression ratio and test accuracy per
  stage, read from ``docs/RESULTS.json`` (skipped when that file is missing).

Each ``draw_*`` function returns the titles of the panels (or boxes) it drew;
``test/test_figures.py`` checks them against the registries.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, Rectangle  # noqa: E402
from torch import nn  # noqa: E402

logger = logging.getLogger("draw_figures")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "examples" / "lenet5_fashion_mnist_deep_compression.toml"
DEFAULT_RESULTS = ROOT / "docs" / "RESULTS.json"
DPI = 130
SPARSITY = 0.5
SEED = 1  # a seed where the *-multi channel methods visibly differ from *-single

# used only when the shipped config is missing: (label, pass, table)
FALLBACK_STEPS: list[tuple[str, str, dict]] = [
    ("prune", "prune", {"weight": {"sparsity": 0.9, "scope": "local", "granularity": "elementwise", "method": "l1-norm"}}),
    ("retrain", "train", {}),
    ("quantize", "quantize", {"by": "type", "conv2d": {"config": {"name": "kmeans", "weight_bits": 8}},
                              "linear": {"config": {"name": "kmeans", "weight_bits": 5}}}),
    ("finetune", "train", {}),
    ("huffman_encode", "huffman_encode", {}),
    ("huffman_decode", "huffman_decode", {}),
    ("test", "test", {}),
]

KEPT = np.array([0.12, 0.23, 0.45, 1.0])  # dark blue
PRUNED = np.array([1.0, 1.0, 1.0, 1.0])  # white
GAP = np.array([0.0, 0.0, 0.0, 0.0])  # transparent

plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "figure.titlesize": 14, "figure.titleweight": "bold"})


# --------------------------------------------------------------------------- the pipeline


def pipeline_steps(config_path: str | Path | None = DEFAULT_CONFIG) -> tuple[list[tuple[str, str, dict]], dict]:
    """``([(label, pass, table)], top-level keys)`` of a config's ``[passes.*]`` tables, in file order.

    The pass is the table's ``pass`` key, else its label (as ``ch transform``
    reads it). A missing file falls back to `FALLBACK_STEPS` with a message.
    """
    path = Path(config_path) if config_path is not None else None
    if path is None or not path.is_file():
        logger.warning("config %s not found: drawing the built-in Deep Compression step list", path)
        return list(FALLBACK_STEPS), {}
    with path.open("rb") as f:
        data = tomllib.load(f)
    steps = []
    for label, table in data.get("passes", {}).items():
        table = dict(table)
        name = table.pop("pass", label)
        steps.append((label, name, table))
    top = {k: v for k, v in data.items() if k != "passes"}
    top["_config"] = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    return steps, top


def _first_doc_line(name: str) -> str:
    from machop.passes.graph import PASSES

    fn = PASSES.get(name)
    doc = (fn.__doc__ or "").strip().splitlines() if fn else []
    return doc[0].rstrip(".") if doc else name


def _quantize_detail(table: dict) -> tuple[str, bool]:
    """(short description of the quantize table, whether it uses k-means weight sharing)."""
    parts, kmeans = [], False
    for key, sub in table.items():
        cfg = sub.get("config") if isinstance(sub, dict) else None
        if not isinstance(cfg, dict) or cfg.get("name") in (None, "NA"):
            continue
        if cfg["name"] == "kmeans":
            kmeans = True
            from machop.nn import KIND_NAMES

            bits = cfg.get("weight_bits", KIND_NAMES[key].kmeans_bits if key in KIND_NAMES else "?")
            parts.append(f"{key}: k-means, {bits} bits")
        else:
            parts.append(f"{key}: {cfg['name']} {cfg.get('weight_width', '?')}-bit")
    return "; ".join(parts) or "as configured", kmeans


def _pct(value) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else str(value)


def _prune_detail(table: dict) -> str:
    from machop.passes.graph.transforms.prune import METHODS

    parts = []
    for kind in ("weight", "activation"):
        sub = table.get(kind)
        if not isinstance(sub, dict):
            continue
        s = sub.get("sparsity", "?")
        if isinstance(s, dict):  # per-layer table
            layers = ", ".join(f"{k} {_pct(v)}" for k, v in s.items() if k != "default")
            s = f"{layers}, others {_pct(s.get('default'))}" if layers else _pct(s.get("default"))
        else:
            s = _pct(s)
        scope, granularity = sub.get("scope", "local"), sub.get("granularity", "elementwise")
        method = sub.get("method") or next(iter(METHODS[kind].get((scope, granularity), {"(default)": None})))
        how = f"{scope} {granularity} {method}"
        parts.append(f"{kind}s, {how}: sparsity {s}")
    return "; ".join(parts) or "as configured"


def _train_detail(table: dict, top: dict) -> str:
    training, trainer = table.get("training") or {}, table.get("trainer") or {}
    epochs = training.get("max_epochs") or trainer.get("max_epochs") or top.get("max_epochs")
    lr = training.get("learning_rate") or top.get("learning_rate")
    what = "trains the dense baseline" if table.get("baseline") else "retrains"
    bits = [f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else None,
            f"lr {lr:g}" if isinstance(lr, (int, float)) else None]
    return f"{what} with PyTorch Lightning" + (f" ({', '.join(b for b in bits if b)})" if any(bits) else "")


def describe_step(name: str, table: dict, top: dict, state: dict) -> tuple[str, str, str]:
    """``(title, what it does, what persists)`` of one step; ``state`` carries what earlier steps did."""
    if name == "prune":
        state["pruned"] = True
        if table.get("remove"):
            return ("prune", _prune_detail(table), "masks baked into plain weights (remove = true)")
        persist = "WeightMask parametrization: weight = original × mask; the bool mask is a buffer in state_dict"
        if isinstance(table.get("activation"), dict):
            persist += "; an ActivationPrune module inserted in front of each pruned layer"
        return ("prune", _prune_detail(table), persist)
    if name in ("train", "retrain"):
        if state.get("kmeans"):
            persist = "fine-tunes the shared centroids (nn.Parameter, §3.3); indices and zeros fixed"
        elif state.get("pruned"):
            persist = "pruned weights stay exactly 0: the mask multiplies weight and gradient"
        else:
            persist = "dense weights; a checkpoint after every step"
        return ("train (baseline)" if table.get("baseline") else "train", _train_detail(table, top), persist)
    if name == "quantize":
        detail, kmeans = _quantize_detail(table)
        state["kmeans"] = state.get("kmeans") or kmeans
        if kmeans:
            return ("quantize (k-means)", f"weight sharing: {detail}",
                    "KMeansWeight: weight = centroids[index] × mask; centroids trainable, index a buffer")
        return ("quantize", detail, "FixedPoint parametrization: weights on a fixed-point grid; zeros stay zero")
    if name.startswith("huffman") and table.get("is_huffman") is False:
        return (name.replace("_", " "), "disabled (is_huffman = false)", "")
    if name == "huffman_encode":
        return ("huffman encode", "canonical Huffman of the shared-weight indices and relative zero-run gaps",
                "writes model.mchz: magic, JSON header, bit-packed sections, CRC32 each; no pickle")
    if name == "huffman_decode":
        return ("decode", "reads model.mchz back into the model (refuses a truncated or altered file)",
                "outputs bit-identical to the model before encoding")
    if name == "huffman":
        return ("huffman (encode+decode)",
                "canonical Huffman of the shared-weight indices and relative zero-run gaps; writes the file, "
                "decodes it back, checks the outputs",
                "model.mchz: magic, JSON header, bit-packed sections with CRC32, no pickle; decoded model "
                "gives bit-identical outputs")
    if name == "test":
        return ("test", f"evaluates on the {table.get('split', 'test')} split", "test_acc, test_loss into report.json")
    return (name, _first_doc_line(name), "")


def draw_pipeline(out_dir: str | Path, config_path: str | Path | None = DEFAULT_CONFIG) -> list[str]:
    """``overall_pipeline.png``: one box per step of the config, top to bottom; returns the step labels in order."""
    steps, top = pipeline_steps(config_path)
    state: dict = {}
    described = [(label, name, *describe_step(name, table, top, state)) for label, name, table in steps]
    n = len(described)
    # axes in inches (1 data unit = 1 inch), so boxes and text columns can be sized for the fonts
    row_h, box_h, box_w = 0.82, 0.62, 2.9
    col_does, col_keeps, right = 3.35, 7.55, 12.4
    height = n * row_h + 0.55
    fig = plt.figure(figsize=(right + 0.3, height + 0.75))
    ax = fig.add_axes((0.3 / (right + 0.3), 0, right / (right + 0.3), height / (height + 0.75)))
    ax.set_xlim(0, right)
    ax.set_ylim(-height + 0.55, 0.55)
    ax.axis("off")
    colours = {"prune": "#c44e52", "train": "#55a868", "retrain": "#55a868", "quantize": "#8172b2",
               "huffman_encode": "#dd8452", "huffman_decode": "#dd8452", "huffman": "#dd8452", "test": "#4c72b0"}
    ax.text(col_does, 0.1, "what it does (from the config)", fontsize=10, fontweight="bold", va="bottom")
    ax.text(col_keeps, 0.1, "what it leaves in the model / on disk", fontsize=10, fontweight="bold", va="bottom")
    for i, (label, name, title, detail, persist) in enumerate(described):
        y = -i * row_h  # top of the box
        colour = colours.get(name, "#937860")
        ax.add_patch(FancyBboxPatch((0.1, y - box_h), box_w, box_h, boxstyle="round,pad=0.02,rounding_size=0.1",
                                    facecolor=colour, edgecolor="black", linewidth=1.0))
        ax.text(-0.08, y - box_h / 2, f"{i + 1}", ha="right", va="center", fontsize=10, color="#444444")
        ax.text(0.1 + box_w / 2, y - 0.24, title, ha="center", va="center", fontsize=11, color="white", fontweight="bold")
        sub = f"[passes.{label}]" + (f"  pass = \"{name}\"" if name != label else "")
        ax.text(0.1 + box_w / 2, y - 0.52, sub, ha="center", va="center", fontsize=7.8, color="white", family="monospace")
        ax.text(col_does, y - box_h / 2, textwrap.fill(detail, 58), ha="left", va="center", fontsize=8.8)
        if persist:
            ax.text(col_keeps, y - box_h / 2, textwrap.fill(persist, 64), ha="left", va="center", fontsize=8.8,
                    style="italic", color="#222222")
        if i < n - 1:
            ax.add_patch(FancyArrowPatch((0.1 + box_w / 2, y - box_h - 0.01), (0.1 + box_w / 2, y - row_h + 0.01),
                                         arrowstyle="-|>", mutation_scale=12, linewidth=1.3, color="black"))
            ax.plot([col_does, right - 0.2], [y - row_h + 0.1] * 2, color="#dddddd", linewidth=0.6)
    what = f"{top['model']} on {top['dataset']}: " if "model" in top and "dataset" in top else ""
    source = (f"{what}the [passes.*] tables of {top['_config']}, in file order" if "_config" in top
              else "the built-in step list (the shipped config file was not found)")
    fig.suptitle("Deep Compression as machop runs it", x=0.5, y=1 - 0.12 / (height + 0.75), va="top")
    fig.text(0.5, 1 - 0.5 / (height + 0.75), source,
             ha="center", va="top", fontsize=9.5, color="#444444")
    _save(fig, Path(out_dir) / "overall_pipeline.png", tight=False)
    return [label for label, *_ in described]


# --------------------------------------------------------------------------- the demo model


class DemoNet(nn.Module):
    """Conv2d(3→4, 3×3) → Tanh → Conv2d(4→4, 3×3) → Tanh → flatten → Linear(64→10), on 3×8×8 inputs.

    Tanh instead of ReLU so the second conv's input has few exact zeros: what
    activation pruning zeroes is then visible, not hidden among ReLU zeros.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.act1 = nn.Tanh()
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.act2 = nn.Tanh()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.act2(self.conv2(self.act1(self.conv1(x))))))


DEMO_INPUT = (3, 8, 8)


class FakeDataModule:
    """Deterministic random images: all the prune pass needs of a data module (``calibration_batch``)."""

    def __init__(self, seed: int = SEED):
        self.seed = seed

    def calibration_batch(self, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(n, *DEMO_INPUT, generator=g)
        return x, torch.zeros(n, dtype=torch.long)


def demo_graph(data: bool = False):
    """A fresh `MaseGraph` of `DemoNet` (seeded weights), with a fake data module when ``data``."""
    from machop.ir import MaseGraph

    torch.manual_seed(SEED)
    graph = MaseGraph(DemoNet())
    graph.context.training.seed = SEED
    if data:
        graph.context.data_module = FakeDataModule()
    return graph


def _tile(values: np.ndarray, rows: int, cols: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile ``values`` (rows, cols, h, w) into one image with one-pixel gaps; returns (image, gap mask)."""
    H, W = rows * (h + 1) - 1, cols * (w + 1) - 1
    img = np.zeros((H, W), dtype=float)
    gap = np.ones((H, W), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            img[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = values[r, c]
            gap[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = False
    return img, gap


def _frame(ax, rows: int, cols: int, h: int, w: int) -> None:
    for r in range(rows):
        for c in range(cols):
            ax.add_patch(Rectangle((c * (w + 1) - 0.5, r * (h + 1) - 0.5), w, h, fill=False, linewidth=0.7,
                                   edgecolor="#555555"))


# --------------------------------------------------------------------------- weight pruning


def weight_method_list() -> list[tuple[str, str, str]]:
    """``(scope, granularity, method)`` for every weight method in the prune registry, in registry order."""
    from machop.passes.graph.transforms.prune import WEIGHT_METHODS

    return [(s, g, m) for (s, g), methods in WEIGHT_METHODS.items() for m in methods]


def draw_weight_wise(out_dir: str | Path, sparsity: float = SPARSITY) -> list[tuple[str, str, str]]:
    """``weight_wise.png``: conv1's mask after the real prune pass, per weight method; returns the panels drawn."""
    from machop.passes.graph import PASSES
    from machop.nn import get_mask
    from machop.passes.graph.transforms.prune import WEIGHT_METHODS

    combos = list(WEIGHT_METHODS)
    cols = max(len(m) for m in WEIGHT_METHODS.values())
    height = 2.95 * len(combos) + 1.1
    fig = plt.figure(figsize=(2.35 * (cols + 1) + 0.4, height))
    grid = fig.add_gridspec(len(combos), cols + 1, hspace=0.55, wspace=0.25, top=1 - 1.15 / height,
                            bottom=0.35 / height, left=0.02, right=0.98)
    drawn: list[tuple[str, str, str]] = []
    weight = None
    for row, (scope, granularity) in enumerate(combos):
        for col, method in enumerate(WEIGHT_METHODS[(scope, granularity)]):
            graph = demo_graph()
            if weight is None:
                weight = graph.model.conv1.weight.detach().clone()
            table = {"weight": {"sparsity": sparsity, "scope": scope, "granularity": granularity, "method": method}}
            if granularity == "kernelwise":  # Linear layers have no kernels
                table["weight"]["exclude"] = [n.name for n in graph.layer_nodes((nn.Linear,))]
            graph, _ = PASSES["prune"](graph, table)
            mask = get_mask(graph.model.conv1).cpu().numpy()
            o, i, h, w = mask.shape
            keep, gap = _tile(mask.astype(float), o, i, h, w)
            rgba = np.where(keep[..., None] > 0, KEPT, PRUNED)
            rgba[gap] = GAP
            ax = fig.add_subplot(grid[row, col + 1])
            ax.imshow(rgba, interpolation="nearest")
            _frame(ax, o, i, h, w)
            pruned = 1 - mask.mean()
            what = "conv1's share" if scope == "global" else "pruned"
            ax.set_title(f"{method}\n{what}: {pruned:.0%} ({int(mask.size - mask.sum())}/{mask.size})",
                         fontsize=9)
            _axes_labels(ax, o, i, h, w, left=col == 0)
            drawn.append((scope, granularity, method))
        note = {"elementwise": "single weights", "kernelwise": "whole k×k kernels W[o, i]",
                "channelwise": "whole filters W[o] (output channels)"}.get(granularity, granularity)
        if scope == "global":
            note += ", ranked against all layers together"
        _row_label(fig, grid[row, 0], f"{scope}\n{granularity}", f"prunes {note}")
    # the weights the masks were computed from, for reference (in the first row's free column, if any)
    free = [(r, len(WEIGHT_METHODS[c]) + 1) for r, c in enumerate(combos) if len(WEIGHT_METHODS[c]) < cols]
    if free and weight is not None:
        r, c = free[0]
        o, i, h, w = weight.shape
        img, gap = _tile(weight.abs().numpy(), o, i, h, w)
        ax = fig.add_subplot(grid[r, c])
        rgba = plt.get_cmap("Greys")(img / img.max())
        rgba[gap] = GAP
        ax.imshow(rgba, interpolation="nearest")
        _frame(ax, o, i, h, w)
        ax.set_title("reference: conv1 |w|\n(darker = larger)", fontsize=9, color="#444444")
        _axes_labels(ax, o, i, h, w, left=False)
    fig.legend(handles=[Patch(facecolor=KEPT, edgecolor="#555555", label="kept"),
                        Patch(facecolor="white", edgecolor="#555555", label="pruned")],
               loc="upper left", bbox_to_anchor=(0.02, 1 - 0.75 / height), ncol=2, frameon=False, fontsize=10)
    fig.suptitle(f"Weight pruning at {sparsity:.0%}: the mask of conv1 (4 filters × 3 input channels, 3×3 kernels)",
                 y=1 - 0.08 / height, va="top")
    fig.text(0.5, 1 - 0.42 / height, "prune_transform_pass on Conv2d(3→4)→Tanh→Conv2d(4→4)→Tanh→Linear(64→10), "
             f"seed {SEED}; global: one threshold over all three layers", ha="center", va="top", fontsize=9,
             color="#444444")
    _save(fig, Path(out_dir) / "weight_wise.png", tight=False)
    return drawn


def _row_label(fig, cell, heading: str, note: str, width: int = 22) -> None:
    """A bold heading and a plain note, right-aligned in a grid cell left of a row of panels."""
    ax = fig.add_subplot(cell)
    ax.axis("off")
    ax.text(0.98, 0.58, heading, ha="right", va="bottom", fontsize=11, fontweight="bold", transform=ax.transAxes)
    ax.text(0.98, 0.52, textwrap.fill(note, width), ha="right", va="top", fontsize=9, transform=ax.transAxes)


def _axes_labels(ax, rows: int, cols: int, h: int, w: int, left: bool) -> None:
    ax.set_xticks([c * (w + 1) + (w - 1) / 2 for c in range(cols)], [f"in {c}" for c in range(cols)], fontsize=7.5)
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(rows)], [f"out {r}" for r in range(rows)], fontsize=7.5)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)


# --------------------------------------------------------------------------- activation pruning


def activation_method_list() -> list[tuple[str, str, str]]:
    """``(scope, granularity, method)`` for every activation method in the prune registry, in registry order."""
    from machop.passes.graph.transforms.prune import ACTIVATION_METHODS

    return [(s, g, m) for (s, g), methods in ACTIVATION_METHODS.items() for m in methods]


def _conv2_input(graph, sample: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(before, after)`` of the ActivationPrune module in front of conv2 for one sample (C, H, W)."""
    from machop.nn import ActivationPrune

    conv2 = next(n for n in graph.layer_nodes() if n.target == "conv2")
    source = conv2.args[0]
    module = graph.module_of(source)
    if not isinstance(module, ActivationPrune):
        raise RuntimeError("the prune pass inserted no ActivationPrune module in front of conv2")
    seen = {}
    handle = module.register_forward_hook(lambda m, i, o: seen.update(before=i[0].detach(), after=o.detach()))
    try:
        graph.model.eval()
        with torch.no_grad():
            graph.model(sample)
    finally:
        handle.remove()
    return seen["before"][0].numpy(), seen["after"][0].numpy()


def _feature_maps(values: np.ndarray, zeroed: np.ndarray | None, vmax: float, cmap) -> tuple[np.ndarray, int, int, int]:
    """RGBA image of (C, H, W) |values| tiled as a square grid of channels, ``zeroed`` positions white."""
    c, h, w = values.shape
    side = int(np.ceil(np.sqrt(c)))
    vals = np.zeros((side * side, h, w))
    vals[:c] = np.abs(values)
    img, gap = _tile(vals.reshape(side, side, h, w), side, side, h, w)
    rgba = cmap(img / vmax)
    if zeroed is not None:
        z = np.zeros((side * side, h, w))
        z[:c] = zeroed
        zimg, _ = _tile(z.reshape(side, side, h, w), side, side, h, w)
        rgba[zimg > 0] = PRUNED
    rgba[gap] = GAP
    return rgba, side, h, w


def draw_activation_pruning(out_dir: str | Path, sparsity: float = SPARSITY) -> list[tuple[str, str, str]]:
    """``activation_pruning.png``: what each activation method zeroes in conv2's input (one sample)."""
    from machop.passes.graph import PASSES
    from machop.passes.graph.transforms.prune import ACTIVATION_METHODS

    combos = list(ACTIVATION_METHODS)
    cols = max(len(m) for m in ACTIVATION_METHODS.values())
    sample = FakeDataModule(seed=SEED + 100).calibration_batch(1)[0]  # not one of the calibration images
    height = 2.75 * (len(combos) + 1) + 1.0
    fig = plt.figure(figsize=(2.6 * (cols + 1) + 0.9, height))
    grid = fig.add_gridspec(len(combos) + 1, cols + 2, width_ratios=[1.15] + [1] * cols + [0.07], hspace=0.55,
                            wspace=0.3, top=1 - 1.3 / height, bottom=0.2 / height, left=0.01, right=0.93)
    cmap = plt.get_cmap("viridis")
    drawn: list[tuple[str, str, str]] = []
    before_ref, vmax = None, 1.0
    panels = []
    for row, (scope, granularity) in enumerate(combos, start=1):
        for col, method in enumerate(ACTIVATION_METHODS[(scope, granularity)]):
            graph = demo_graph(data=True)
            # conv1's input (the image) stays dense, so every panel starts from the same conv2 input
            table = {"activation": {"sparsity": sparsity, "scope": scope, "granularity": granularity,
                                    "method": method, "calibration_samples": 64, "exclude": ["conv1"]}}
            graph, _ = PASSES["prune"](graph, table)
            before, after = _conv2_input(graph, sample)
            if before_ref is None:
                before_ref, vmax = before, float(np.abs(before).max())
            elif not np.allclose(before, before_ref):
                raise RuntimeError(f"{scope} {granularity} {method}: conv2's input changed upstream of its pruning")
            panels.append((row, col, scope, method, before, after))
            drawn.append((scope, granularity, method))
        note = {("local", "elementwise"): "per sample: its smallest |x| (random: fixed random positions)",
                ("local", "channelwise"): "whole input channels, the same for every sample, chosen on "
                                          "calibration data",
                ("global", "elementwise"): "per sample, smallest |x|; one threshold set over the inputs of "
                                           "all pruned layers decides conv2's share"}.get((scope, granularity), "")
        _row_label(fig, grid[row, 0], f"{scope}\n{granularity}", note)
    for row, col, scope, method, before, after in panels:
        zeroed = (after == 0) & (before != 0)
        rgba, side, h, w = _feature_maps(before, zeroed, vmax, cmap)
        ax = fig.add_subplot(grid[row, col + 1])
        ax.imshow(rgba, interpolation="nearest")
        _frame(ax, side, side, h, w)
        _channel_labels(ax, side, h, w)
        what = "conv2's share" if scope == "global" else "zeroed"
        ax.set_title(f"{method}\n{what}: {zeroed.mean():.0%} of this input", fontsize=9)
    # top row: the input before pruning, the legend
    _row_label(fig, grid[0, 0], "no pruning", "the input of conv2 (after Tanh) for one sample")
    if before_ref is not None:
        rgba, side, h, w = _feature_maps(before_ref, None, vmax, cmap)
        ax = fig.add_subplot(grid[0, 1])
        ax.imshow(rgba, interpolation="nearest")
        _frame(ax, side, side, h, w)
        _channel_labels(ax, side, h, w)
        ax.set_title("before: conv2 input\n(4 channels c0–c3, 6×6 each)", fontsize=9)
    legend_ax = fig.add_subplot(grid[0, 2:cols + 1])
    legend_ax.axis("off")
    legend_ax.legend(handles=[Patch(facecolor="white", edgecolor="#555555", label="zeroed by ActivationPrune"),
                              Patch(facecolor=cmap(0.6), edgecolor="#555555", label="kept (colour = |x|)")],
                     loc="center left", frameon=False, fontsize=10)
    cax = fig.add_subplot(grid[1:, cols + 1])
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, vmax)), cax=cax,
                 label="|x|, input of conv2 (kept values)")
    fig.suptitle(f"Activation pruning at {sparsity:.0%}: what the inserted ActivationPrune module zeroes",
                 y=1 - 0.08 / height, va="top")
    fig.text(0.5, 1 - 0.45 / height, "prune_transform_pass on the demo net: the inputs of conv2 and fc are pruned (global: one threshold "
             "over both)\n"
             f"shown: conv2's input for one unseen sample; calibration: 64 random images; seed {SEED}",
             ha="center", va="top", fontsize=9, color="#444444")
    _save(fig, Path(out_dir) / "activation_pruning.png", tight=False)
    return drawn


def _channel_labels(ax, side: int, h: int, w: int) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    for k in range(side * side):
        r, c = divmod(k, side)
        ax.text(c * (w + 1) + 0.1, r * (h + 1) + 0.35, f"c{k}", fontsize=6.5, color="black",
                bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.5, "linewidth": 0})


# --------------------------------------------------------------------------- results


STAGE_COLOURS = {"dense": "#8c8c8c", "pruned": "#c44e52", "quantized": "#8172b2", "huffman": "#dd8452"}


def draw_results(out_dir: str | Path, results_path: str | Path = DEFAULT_RESULTS) -> list[str] | None:
    """``results_compression.png`` from RESULTS.json: ratio per stage per model, test accuracy on each bar.

    Returns the model names drawn (one panel each), or None when the file is missing.
    """
    path = Path(results_path)
    if not path.is_file():
        logger.warning("%s not found: results_compression.png skipped (run bench/deep_compression.py first)", path)
        return None
    data = json.loads(path.read_text())
    models = {name: m for name, m in (data.get("models") or {}).items() if isinstance(m, dict) and m.get("stages")}
    if not models:
        logger.warning("%s has no models with stages: results_compression.png skipped", path)
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models) + 0.6, 4.4), squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items()):
        stages = [s for s in model["stages"] if isinstance(s, dict)]
        labels = [str(s.get("stage", f"step {i}")) for i, s in enumerate(stages)]
        ratios = [float(s.get("ratio") or 0.0) for s in stages]
        bars = ax.bar(range(len(stages)), ratios, color=[STAGE_COLOURS.get(lb, "#4c72b0") for lb in labels],
                      edgecolor="black", linewidth=0.6)
        top = max(ratios + [1.0])
        for bar, s, r in zip(bars, stages, ratios):
            acc = s.get("test_acc")
            acc_txt = f"acc {acc:.2%}" if isinstance(acc, (int, float)) else "acc n/a"
            bits = s.get("bits_per_weight")
            bits_txt = f"\n{bits:.2g} b/w" if isinstance(bits, (int, float)) else ""
            ax.text(bar.get_x() + bar.get_width() / 2, r + 0.02 * top, f"×{r:.3g}\n{acc_txt}{bits_txt}",
                    ha="center", va="bottom", fontsize=8.5)
        ax.set_xticks(range(len(stages)), labels)
        ax.set_ylim(0, top * 1.32)
        ax.set_ylabel("compression ratio (dense fp32 bytes / size)")
        sizes = [s["size_bytes"] for s in stages if isinstance(s.get("size_bytes"), (int, float))]
        size_txt = f": {_kib(sizes[0])} → {_kib(sizes[-1])}" if len(sizes) > 1 else ""
        nonzero = [s["nonzero_weights"] for s in stages if isinstance(s.get("nonzero_weights"), int)]
        nz_txt = f"\nnon-zero weights {nonzero[0]:,} → {nonzero[-1]:,}" if len(nonzero) > 1 else ""
        ax.set_title(f"{name}{size_txt}{nz_txt}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle("Deep Compression results: compression ratio per stage\n(labels: ratio, test accuracy, bits per "
                 "weight)", fontsize=12)
    notes = " · ".join(str(data[k]) for k in ("machine", "command") if data.get(k))
    if notes:
        fig.text(0.5, 0.01, textwrap.shorten(notes, 180), ha="center", fontsize=8, color="#444444")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    _save(fig, Path(out_dir) / "results_compression.png", tight=False)
    return list(models)


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{int(n)} B"


# --------------------------------------------------------------------------- main


def _save(fig, path: Path, tight: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if not tight else None)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "imgs"), help="output folder (default: imgs/)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline config drawn in overall_pipeline.png")
    p.add_argument("--results", default=str(DEFAULT_RESULTS), help="RESULTS.json for results_compression.png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("machop").setLevel(logging.WARNING)
    start = time.perf_counter()
    draw_pipeline(args.out, args.config)
    draw_weight_wise(args.out)
    draw_activation_pruning(args.out)
    draw_results(args.out, args.results)
    logger.info("done in %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
