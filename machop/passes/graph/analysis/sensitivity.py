"""``sensitivity``: how much validation accuracy each weight loses to pruning and to k-means weight sharing.

Deep Compression §3 (and Distiller's ``sensitivity`` command) picks each
layer's sparsity and code width from its *sensitivity*: prune one layer at
a time, the others untouched and nothing retrained, and watch the accuracy.
This pass measures, per compressible weight (`machop.nn.compressible_weights`):

- accuracy against **sparsity**: the weight alone pruned elementwise by
  magnitude to each sparsity, exactly as the prune pass's local elementwise
  ``l1-norm`` would prune it (`machop.nn.group_scores` / `lowest_k_mask` /
  `prune_count`: ``round(s * n)`` weights, ties broken by position). Weights
  an earlier mask pruned rank lowest, so a sparsity at or below the current
  one leaves the weight as it is, as a prune step would;
- accuracy against **bits**: the weight's kept values (those its mask keeps;
  all of them if unpruned) alone shared among ``2**bits`` centroids by
  `machop.nn.kmeans_1d` (linear initialisation, as the quantize pass does),
  each replaced by its centroid; with the **entropy** of the cluster labels
  in bits per kept value (their zeroth-order entropy: what Huffman coding
  the indices costs, within a bit).

Each change is applied to the tensor under the weight's parametrizations
(`machop.nn.stored`, so a mask still applies and a tied weight changes at
every site), evaluated, and undone by copying the saved tensor back: the model
is bit for bit what it was (and so is its train/eval mode). Evaluation is a
plain ``torch.no_grad()`` loop over the first ``samples`` labelled images of
the split, read once (`machop.training.labelled_batch`) and reused for every
point; ``baseline_acc`` is the model as it is on the same images. A point
that leaves the model as it is (a sparsity at or below the current one, a
width whose ``2**bits`` centroids hold every distinct kept value) is that
baseline, not evaluated again.
Weights already quantized (k-means or fixed point) are not measured: they are
listed in ``skipped`` with the reason.

```toml
[passes.sensitivity]
sparsities = [0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99]  # each in [0, 1)
bits = [1, 2, 3, 4, 5, 6, 7, 8]   # k-means code widths in [1, 16]; [] skips the bits curve
samples = 2000                    # labelled images evaluated (the first of the split)
split = "val"                     # val | test
types = ["conv2d", "linear"]      # layer kinds to measure (default: all)
exclude = ["fc2"]                 # weights not measured: layer (node) names, module paths or a parent module
retrain_steps = 0                 # > 0: fine-tune this many steps before each sparsity point is evaluated
```

The model is not changed. ``info = {"sensitivity": Sensitivity.to_json(),
"skipped": [{name, reason}]}``; `ch transform` draws it as
``sensitivity_<step>.png`` and tabulates it in ``report.md``. From Python,
`measure_sensitivity` returns the `Sensitivity` itself (the prune and
quantize passes call it to allocate per-layer sparsities and bits).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from machop.config import ConfigError, check_range, from_dict, join, pass_path
from machop.ir import MaseGraph
from machop.nn import (
    KIND_NAMES,
    FixedPoint,
    Weight,
    WeightMask,
    chain,
    get_mask,
    group_scores,
    kmeans_1d,
    lowest_k_mask,
    most_specific,
    prune_count,
    quantizer_of,
)
from machop.training import labelled_batch

from .pruning import selected_kinds

logger = logging.getLogger(__name__)

DEFAULT_SPARSITIES: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
DEFAULT_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)  # the pass's default; measure_sensitivity's is ()
MAX_BITS = 16  # the quantize pass's widest k-means code
EVAL_CHUNK = 500  # images per forward
RETRAIN_BATCH = 128  # images per optimizer step of `measure_sensitivity`'s retraining
KMEANS_INIT, KMEANS_MAX_ITER, KMEANS_TOL = "linear", 300, 1e-4  # the quantize pass's k-means defaults


# --------------------------------------------------------------------------- results


@dataclass
class LayerSensitivity:
    """One weight's curves.

    Attributes:
        name: the weight's name (`machop.nn.Weight.name`; what prune and quantize tables use).
        weights: elements of the weight.
        nonzero: elements its mask keeps before the analysis (all, if unpruned).
        sparsity: ``(sparsity, accuracy)`` with only this weight pruned to that sparsity, increasing sparsity.
        bits: ``(bits, accuracy, entropy)`` with only this weight's kept values shared among ``2**bits``
            k-means centroids; entropy in bits per kept value of the cluster labels. Increasing bits.
    """

    name: str
    weights: int
    nonzero: int
    sparsity: list[tuple[float, float]] = field(default_factory=list)
    bits: list[tuple[int, float, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "weights": self.weights, "nonzero": self.nonzero,
                "sparsity": [[float(s), float(a)] for s, a in self.sparsity],
                "bits": [[int(b), float(a), float(h)] for b, a, h in self.bits]}

    @classmethod
    def from_json(cls, d: dict) -> "LayerSensitivity":
        return cls(str(d["name"]), int(d["weights"]), int(d["nonzero"]),
                   [(float(s), float(a)) for s, a in d.get("sparsity", [])],
                   [(int(b), float(a), float(h)) for b, a, h in d.get("bits", [])])


@dataclass
class Sensitivity:
    """Every measured weight's curves, and the accuracy of the untouched model on the same samples.

    ``skipped`` lists the weights asked for but not measured (already
    quantized), as ``{"name", "reason"}``.
    """

    baseline_acc: float
    samples: int
    split: str
    layers: list[LayerSensitivity]
    skipped: list[dict] = field(default_factory=list)

    def layer(self, name: str) -> LayerSensitivity:
        """The curves of the weight called ``name`` (KeyError if it was not measured)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_json(self) -> dict:
        """Plain JSON (lists, numbers, strings): what goes into a pass's info and report.json."""
        return {"baseline_acc": float(self.baseline_acc), "samples": int(self.samples), "split": self.split,
                "layers": [layer.to_json() for layer in self.layers],
                "skipped": [dict(s) for s in self.skipped]}

    @classmethod
    def from_json(cls, d: dict) -> "Sensitivity":
        return cls(float(d["baseline_acc"]), int(d["samples"]), str(d["split"]),
                   [LayerSensitivity.from_json(layer) for layer in d["layers"]],
                   [dict(s) for s in d.get("skipped", [])])


# --------------------------------------------------------------------------- measuring


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = EVAL_CHUNK) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, ``chunk`` images per forward (mode and grad set by the caller)."""
    correct = 0
    for i in range(0, x.shape[0], chunk):
        out = model(x[i:i + chunk])
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"sensitivity needs a model returning logits (a tensor), got {type(out).__name__}")
        correct += int((out.argmax(dim=1) == y[i:i + chunk]).sum())
    return correct / x.shape[0]


def label_entropy(labels: torch.Tensor) -> float:
    """Zeroth-order entropy of integer ``labels`` in bits per label (0 for none or one distinct)."""
    if labels.numel() == 0:
        return 0.0
    counts = np.bincount(labels.reshape(-1).cpu().numpy().astype(np.int64))
    p = counts[counts > 0] / labels.numel()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def why_not_measured(w: Weight) -> str | None:
    """None if ``w`` can be measured, else the reason: a quantizer, or a parametrization other than a mask."""
    try:
        q = quantizer_of(w.module, w.tensor_name)
    except ValueError as e:
        return f"quantized ({e})"
    if q is not None:
        return f"already quantized ({'fixed point' if isinstance(q, FixedPoint) else 'k-means'})"
    other = [type(p).__name__ for p in chain(w.module, w.tensor_name) if not isinstance(p, WeightMask)]
    if other:
        return f"parametrized by {', '.join(other)}"
    if not w.stored().is_floating_point():
        return f"not a float tensor ({w.stored().dtype})"
    return None


def _keep_masks(w: Weight, sparsities: Sequence[float]) -> list[torch.Tensor]:
    """The prune pass's local elementwise l1-norm keep-mask of ``w`` at each sparsity (earlier mask ranked lowest)."""
    value = w.value()
    scores = group_scores(value.reshape(-1, 1), 1).float()
    old = get_mask(w.module, w.tensor_name)
    if old is not None:
        scores = scores.masked_fill(~old.reshape(-1), float("-inf"))
    return [lowest_k_mask(scores, prune_count(s, scores.numel())).view(value.shape) for s in sparsities]


def _shared_values(kept: torch.Tensor, bits: int) -> tuple[torch.Tensor, float]:
    """(the kept values each replaced by its k-means centroid, the entropy of the cluster labels)."""
    result = kmeans_1d(kept, 2**bits, KMEANS_INIT, KMEANS_MAX_ITER, KMEANS_TOL)
    centroids = result.centroids.to(torch.float32).to(kept.dtype)  # a KMeansWeight codebook is float32
    shared = centroids[result.labels] if kept.numel() else kept
    return shared, label_entropy(result.labels)


def _recovered_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, train: tuple[torch.Tensor, torch.Tensor],
                        learning_rate: float, stored: torch.Tensor | None = None, keep: torch.Tensor | None = None
                        ) -> float:
    """Accuracy after a short fine-tune of the whole model (``stored`` held at its pruned entries, ``keep``);
    then the model's state is put back as it was."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    model.train()
    try:
        with torch.enable_grad():
            for xb, yb in zip(train[0].split(RETRAIN_BATCH), train[1].split(RETRAIN_BATCH)):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
                if stored is not None:
                    with torch.no_grad():
                        stored.mul_(keep)
        model.eval()
        return _accuracy(model, x, y)
    finally:
        model.load_state_dict(state)
        model.eval()


def measure_sensitivity(
    graph: MaseGraph,
    weights: list[Weight] | None = None,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    bits: Sequence[int] = (),
    samples: int = 2000,
    split: str = "val",
    progress: bool = False,
    retrain_steps: int = 0,
    learning_rate: float = 1e-3,
) -> Sensitivity:
    """Accuracy of ``graph``'s model with each weight alone pruned to each sparsity, and k-means shared at each width.

    Args:
        graph: the model; its ``context.data_module`` gives the labelled samples.
        weights: the weights to measure (default: every compressible weight, `MaseGraph.weights`);
            a weight listed twice (or tied) is measured once. Quantized weights are skipped (``skipped``).
        sparsities: each in [0, 1); measured in increasing order, each once.
        bits: k-means code widths, each in [1, 16]; ``()`` measures no bits curve.
        samples: the first ``samples`` labelled images of ``split`` (fewer if the split is smaller).
        split: ``"val"``, ``"test"`` or ``"train"`` (see `machop.training.labelled_batch`).
        progress: show a progress bar (one step per evaluation).
        retrain_steps: before each sparsity point is evaluated, fine-tune the whole model this many
            optimizer steps (Adam at ``learning_rate``, batches of `RETRAIN_BATCH` training images, the
            same images for every point) with the weight held at its pruned entries: the curve then says
            what a layer *recovers*, not what it loses one-shot (big layers recover far more than small
            ones). The baseline is then the model after the same fine-tune, nothing pruned, so the
            fine-tune's own effect cancels out. 0: one-shot, nothing retrained.

    The model is left bit for bit as it was, also when interrupted.
    """
    sparsities = sorted({float(s) for s in sparsities})
    bits = sorted({int(b) for b in bits})
    bad = [s for s in sparsities if not 0 <= s < 1]
    if bad:
        raise ValueError(f"sparsities must be in [0, 1), got {bad[0]}")
    bad = [b for b in bits if not 1 <= b <= MAX_BITS]
    if bad:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bad[0]}")
    data = graph.context.require_data("sensitivity")
    if weights is None:
        weights = graph.weights()
    unique, seen = [], set()
    for w in weights:
        if id(w.stored()) not in seen:
            seen.add(id(w.stored()))
            unique.append(w)
    measured, skipped = [], []
    for w in unique:
        reason = why_not_measured(w)
        if reason is None:
            measured.append(w)
        else:
            skipped.append({"name": w.name, "reason": reason})

    model = graph.model
    device = graph.device
    x, y = labelled_batch(data, samples, split)
    x, y = x.to(device), y.to(device)
    train = None
    if retrain_steps:
        tx, ty = labelled_batch(data, retrain_steps * RETRAIN_BATCH, "train")
        train = (tx.to(device), ty.to(device))
    modes = [(m, m.training) for m in model.modules()]
    bar = None
    try:
        model.eval()
        with torch.no_grad():
            baseline = _accuracy(model, x, y) if train is None else _recovered_accuracy(model, x, y, train, learning_rate)
            logger.info("sensitivity: baseline accuracy %.4f on %d %s samples; %d weight(s), %d sparsities, %d widths",
                        baseline, x.shape[0], split, len(measured), len(sparsities), len(bits))
            if progress:
                bar = Progress(transient=True)
                bar.start()
                task = bar.add_task("sensitivity", total=len(measured) * (len(sparsities) + len(bits)))
            layers = []
            for w in measured:
                stored = w.stored()
                saved = stored.detach().clone()
                mask = get_mask(w.module, w.tensor_name)
                layer = LayerSensitivity(w.name, stored.numel(), stored.numel() if mask is None else int(mask.sum()))
                try:
                    for s, keep in zip(sparsities, _keep_masks(w, sparsities)):
                        if (keep if mask is None else keep | ~mask).all():  # at or below the current sparsity
                            layer.sparsity.append((s, baseline))  # the model as it is: its accuracy
                        else:
                            stored.copy_(saved * keep)
                            acc = (_accuracy(model, x, y) if train is None else
                                   _recovered_accuracy(model, x, y, train, learning_rate, stored, keep))
                            layer.sparsity.append((s, acc))
                            stored.copy_(saved)
                        if bar is not None:
                            bar.advance(task)
                    value = w.value()
                    kept = value.reshape(-1) if mask is None else torch.masked_select(value, mask)
                    for b in bits:
                        shared, entropy = _shared_values(kept, b)
                        if torch.equal(shared, kept):  # no more distinct values than centroids: nothing changes
                            layer.bits.append((b, baseline, entropy))
                        else:
                            if mask is None:
                                stored.copy_(shared.view(stored.shape))
                            else:
                                stored.masked_scatter_(mask, shared)
                            layer.bits.append((b, _accuracy(model, x, y), entropy))
                            stored.copy_(saved)
                        if bar is not None:
                            bar.advance(task)
                finally:
                    stored.copy_(saved)
                layers.append(layer)
                logger.info("sensitivity %s (%d weights, %d kept): sparsity %s; bits %s", w.name, layer.weights,
                            layer.nonzero, " ".join(f"{s:g}:{a:.4f}" for s, a in layer.sparsity) or "-",
                            " ".join(f"{b}:{a:.4f}" for b, a, _ in layer.bits) or "-")
    finally:
        if bar is not None:
            bar.stop()
        for m, training in modes:
            m.training = training
    return Sensitivity(baseline, int(x.shape[0]), split, layers, skipped)


# --------------------------------------------------------------------------- the pass


@dataclass
class SensitivityArgs:
    """``[passes.sensitivity]`` (see the module docstring)."""

    sparsities: list[float] = field(default_factory=lambda: list(DEFAULT_SPARSITIES))
    bits: list[int] = field(default_factory=lambda: list(DEFAULT_BITS))
    samples: int = 2000
    split: Literal["val", "test"] = "val"
    types: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    retrain_steps: int = 0

    def validate(self, path: str) -> None:
        check_range(self.retrain_steps, join(path, "retrain_steps"), 0, 100_000)
        for key, values in (("sparsities", self.sparsities), ("bits", self.bits)):
            for i, v in enumerate(values):
                if key == "sparsities":
                    check_range(v, join(path, f"sparsities[{i}]"), 0, 1, hi_open=True)
                else:
                    check_range(v, join(path, f"bits[{i}]"), 1, MAX_BITS)
                if v in values[:i]:
                    raise ConfigError(join(path, f"{key}[{i}]"), f"lists {v} twice")
        if not self.sparsities and not self.bits:
            raise ConfigError(join(path, "sparsities"), "sparsities and bits are both empty: nothing to measure")
        if self.samples < 1:
            raise ConfigError(join(path, "samples"), f"must be >= 1, got {self.samples}")
        for i, name in enumerate(self.types or []):
            if name not in KIND_NAMES:
                raise ConfigError(join(path, f"types[{i}]"), f"unknown layer type {name!r}; choose from {', '.join(KIND_NAMES)}")
        if len(set(self.exclude)) != len(self.exclude):
            raise ConfigError(join(path, "exclude"), "lists a name twice")


def parse_sensitivity_args(pass_args: dict | None, path: str = "passes.sensitivity") -> SensitivityArgs:
    """Validate ``pass_args`` (the ``[passes.sensitivity]`` table); ConfigError naming the key if bad."""
    return from_dict(SensitivityArgs, pass_args or {}, path)


def select_weights(graph: MaseGraph, args: SensitivityArgs, path: str) -> tuple[list[Weight], list[dict]]:
    """(weights to measure, [{name, reason}] of those ``types`` / ``exclude`` leave out), as the prune pass selects.

    ConfigError for a name in ``exclude`` that selects nothing and a type the model lacks.
    """
    weights = graph.weights()
    named = [(w, w.ancestry()) for w in weights]
    unknown = [n for n in args.exclude if not any(n in names for _, names in named)]
    if unknown:
        valid = ", ".join(w.name for w in weights) or "(none: the model has no layers machop compresses)"
        raise ConfigError(join(path, "exclude"), f"unknown name(s) {', '.join(map(repr, unknown))}; valid names: {valid}")
    kinds = selected_kinds(args.types, {w.kind.name for w in weights}, path)
    chosen, left = [], []
    for w, names in named:
        if kinds is not None and w.kind.name not in kinds:
            left.append({"name": w.name, "reason": f"type {w.kind.name} not in types"})
        elif most_specific(args.exclude, names, w.name) is not None:
            left.append({"name": w.name, "reason": "excluded"})
        else:
            chosen.append(w)
    return chosen, left


def check_sensitivity_args(graph: MaseGraph, args: SensitivityArgs, path: str, earlier: list[str] = ()) -> None:
    """Check a parsed table's names and types against the graph as built (before step 1 of `ch transform`)."""
    select_weights(graph, args, path)


def sensitivity_analysis_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Measure each selected weight's accuracy against sparsity and k-means bits; the model is not changed.

    Returns ``(graph, {"sensitivity": Sensitivity.to_json(), "skipped": [{name, reason}]})``: ``skipped``
    holds the weights ``types`` / ``exclude`` leave out and those already quantized.
    """
    path = pass_path(graph.context.step, "passes.sensitivity")
    args = parse_sensitivity_args(pass_args, path)
    chosen, left = select_weights(graph, args, path)
    graph.context.require_data("sensitivity")
    result = measure_sensitivity(graph, chosen, args.sparsities, args.bits, args.samples, args.split,
                                 progress=graph.context.progress_bar, retrain_steps=args.retrain_steps,
                                 learning_rate=graph.context.training.learning_rate)
    if left or result.skipped:
        logger.info("sensitivity: not measured: %s",
                    ", ".join(f"{s['name']} ({s['reason']})" for s in left + result.skipped))
    return graph, {"sensitivity": result.to_json(), "skipped": left + result.skipped}

