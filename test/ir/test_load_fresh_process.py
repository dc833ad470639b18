"""Every kind of file the passes write opens in a fresh interpreter that imports only `machop.ir`.

A saved file names the classes that re-create its masks, codebooks,
quantizers and inserted modules (`machop.nn.REBUILDABLE`). They used to be
registered only when the pass packages were imported, so a reader that had
imported just ``machop.ir`` could not open a pruned or quantized file. Here
one subprocess (``sys.executable -c``) imports ``machop.ir`` (and, for user
models, ``zoo.models``), opens every ``pt``, ``mz`` and Lightning ``pl`` file
with `load_graph` / `load_model`, checks that ``machop.passes`` is still not
imported, then opens the ``.mchz`` files with `machop.load_compressed`.

For each file it reports: outputs on a fixed input equal to those of the
model that was saved (bit for bit; the test also checks that the same model
with its masks, codebooks and inserted modules taken away gives *different*
outputs, so a silently dropped one is caught), the parametrization chains
and inserted modules by class name, the tied tensors and, for ``mz``, the
restored ``node.meta["mase"]``.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from machop.config import TrainSettings
from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, PassContext, save_graph
from machop.models import get_model
from machop.nn import tied_tensors
from machop.passes.graph import PASSES
from machop.passes.graph.transforms.huffman import dense_copy
from machop.training import DataLoaders

from zoo.models import ZOO

TEST_DIR = Path(__file__).resolve().parents[1]  # test/: `zoo.models` lives there

WEIGHT_PRUNE = {"weight": {"sparsity": 0.5}}
ACT_PRUNE = {"activation": {"sparsity": 0.3}}
KMEANS = {"by": "type", "default": {"config": {"name": "kmeans", "weight_bits": 4}}}
INTEGER = {"by": "type", "default": {"config": {
    "name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 8, "weight_frac_width": 6,
    "bias_width": 8, "bias_frac_width": 5,
}}}

# case → (model: "lenet5" or a zoo class, file kind, expected parametrization classes, expected inserted classes)
CASES: dict[str, tuple[str, str, set[str], set[str]]] = {
    "lenet5-prune.pt": ("lenet5", "pt", {"WeightMask"}, set()),
    "lenet5-prune.mz": ("lenet5", "mz", {"WeightMask"}, set()),
    "lenet5-actprune.mz": ("lenet5", "mz", set(), {"ActivationPrune"}),
    "lenet5-prune-kmeans.mz": ("lenet5", "mz", {"WeightMask", "KMeansWeight"}, set()),
    "lenet5-integer.pt": ("lenet5", "pt", {"FixedPoint"}, {"FixedPoint"}),
    "lenet5-prune-kmeans-trained.ckpt": ("lenet5", "pl", {"WeightMask", "KMeansWeight"}, set()),
    "lenet5-prune-kmeans.mchz": ("lenet5", "mchz", {"WeightMask", "KMeansWeight"}, set()),
    "lenet5-integer.mchz": ("lenet5", "mchz", {"FixedPoint"}, {"FixedPoint"}),
    "TiedEmbedding-prune-kmeans.mz": ("TiedEmbedding", "mz", {"WeightMask", "KMeansWeight"}, set()),
    "TiedEmbedding-prune-kmeans.mchz": ("TiedEmbedding", "mchz", {"WeightMask", "KMeansWeight"}, set()),
    "ResBlockNet-actprune-prune.pt": ("ResBlockNet", "pt", {"WeightMask"}, {"ActivationPrune"}),
}


def structure_of(model):
    """What passes added to ``model`` (an fx.GraphModule), by class name; torch only, also run in the subprocess."""
    from torch.nn.utils import parametrize

    chains = {}
    for qualname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor, plist in module.parametrizations.items():
                chains[f"{qualname}.{tensor}"] = [type(p).__name__ for p in plist]
    inserted = []
    for node in model.graph.nodes:
        if node.op == "call_module":
            module = model.get_submodule(node.target)
            if type(module).__module__.startswith("machop."):
                inserted.append([str(node.target), type(module).__name__, [str(u.target) for u in node.users]])
    return {"chains": chains, "inserted": inserted}


def meta_of(graph: MaseGraph) -> dict:
    """``node.meta["mase"]`` of every node, as an ``mz`` file stores it (JSON)."""
    return json.loads(json.dumps({n.name: n.meta.get("mase", {}) for n in graph.nodes}, default=str))


def _lenet5() -> MaseGraph:
    info = get_dataset_info("fashion_mnist")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    dummy = torch.randn(2, 1, 28, 28, generator=g)
    return MaseGraph(get_model("lenet5", info), dummy_input=dummy,
                     context=PassContext(model_name="lenet5", dataset_info=info, progress_bar=False))


def _zoo(name: str) -> MaseGraph:
    torch.manual_seed(0)
    return MaseGraph(ZOO[name](), dummy_input=ZOO[name].example(2))


def _input(model: str) -> torch.Tensor:
    torch.manual_seed(123)
    return torch.randn(4, 1, 28, 28) if model == "lenet5" else ZOO[model].example(4)


def _metadata(graph: MaseGraph) -> MaseGraph:
    graph, _ = PASSES["init_metadata"](graph, None)
    graph, _ = PASSES["add_common_metadata"](graph, None)
    return graph


def _train_one_batch(graph: MaseGraph, out: Path) -> Path:
    """A real Lightning checkpoint: one training batch on random data through the train pass."""
    g = torch.Generator().manual_seed(2)
    train = torch.utils.data.TensorDataset(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g))
    val = torch.utils.data.TensorDataset(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g))
    ctx = graph.context
    ctx.data_module = DataLoaders(torch.utils.data.DataLoader(train, batch_size=8), torch.utils.data.DataLoader(val, batch_size=8))
    ctx.output_dir = out / "run"
    ctx.training = TrainSettings(max_epochs=1, accelerator="cpu", learning_rate=1e-2)
    ctx.progress_bar = False
    _, info = PASSES["train"](graph, {"test": False})
    path = Path(info["checkpoint"])
    assert path == out / "run" / "checkpoints" / "train" / "best.ckpt"
    return path


def _build(out: Path) -> tuple[dict, dict]:
    """Write every case's file. Returns ({case: record for the subprocess}, {case: what the parent saw})."""
    graphs: dict[str, MaseGraph] = {}
    paths: dict[str, Path] = {}

    def save(case: str, graph: MaseGraph) -> None:
        _, kind, *_ = CASES[case]
        graphs[case], paths[case] = graph, save_graph(graph, out / case, kind)

    # lenet5: pruned weights, as pt and as mz (with metadata)
    g, _ = PASSES["prune"](_metadata(_lenet5()), WEIGHT_PRUNE)
    save("lenet5-prune.pt", g)
    save("lenet5-prune.mz", g)
    # lenet5: activation pruning only (ActivationPrune modules inserted in the fx graph)
    g, _ = PASSES["prune"](_metadata(_lenet5()), ACT_PRUNE)
    save("lenet5-actprune.mz", g)
    # lenet5: pruned + k-means; its .mchz
    g, _ = PASSES["prune"](_metadata(_lenet5()), WEIGHT_PRUNE)
    g, _ = PASSES["quantize"](g, KMEANS)
    save("lenet5-prune-kmeans.mz", g)
    graphs["lenet5-prune-kmeans.mchz"], paths["lenet5-prune-kmeans.mchz"] = g, out / "lenet5-prune-kmeans.mchz"
    PASSES["huffman_encode"](g, {"path": str(paths["lenet5-prune-kmeans.mchz"])})
    # lenet5: fixed point (parametrizations + inserted input quantizers), as pt; its .mchz
    g, _ = PASSES["quantize"](_lenet5(), INTEGER)
    save("lenet5-integer.pt", g)
    graphs["lenet5-integer.mchz"], paths["lenet5-integer.mchz"] = g, out / "lenet5-integer.mchz"
    PASSES["huffman_encode"](g, {"path": str(paths["lenet5-integer.mchz"])})
    # lenet5: pruned + k-means, then trained one batch: the Lightning checkpoint of the train pass
    g, _ = PASSES["prune"](_lenet5(), WEIGHT_PRUNE)
    g, _ = PASSES["quantize"](g, KMEANS)
    graphs["lenet5-prune-kmeans-trained.ckpt"] = g
    paths["lenet5-prune-kmeans-trained.ckpt"] = _train_one_batch(g, out)
    # user model with a tied weight (embedding = decoder): pruned + k-means as mz, and its .mchz
    g, _ = PASSES["prune"](PASSES["init_metadata"](_zoo("TiedEmbedding"), None)[0], WEIGHT_PRUNE)
    g, _ = PASSES["quantize"](g, KMEANS)
    save("TiedEmbedding-prune-kmeans.mz", g)
    graphs["TiedEmbedding-prune-kmeans.mchz"], paths["TiedEmbedding-prune-kmeans.mchz"] = g, out / "TiedEmbedding.mchz"
    PASSES["huffman_encode"](g, {"path": str(paths["TiedEmbedding-prune-kmeans.mchz"])})
    # user model with batch norm and a residual add: activation + weight pruned, as pt
    g, _ = PASSES["prune"](_zoo("ResBlockNet"), {**ACT_PRUNE, **WEIGHT_PRUNE})
    save("ResBlockNet-actprune-prune.pt", g)

    assert set(graphs) == set(CASES)
    files, seen, io = {}, {}, {}
    for case, graph in graphs.items():
        model_name, kind, *_ = CASES[case]
        x = _input(model_name)
        graph.model.eval()
        dense = dense_copy(graph).model.eval()  # the same model with its masks, codebooks, quantizers taken away
        with torch.no_grad():
            expected, dense_out = graph.model(x), dense(x)
        io[case] = {"x": x, "expected": expected}
        files[case] = {"path": str(paths[case]), "kind": kind, "model": None if model_name == "lenet5" else model_name}
        seen[case] = {
            "structure": structure_of(graph.model),
            "dense_structure": structure_of(dense),
            "dense_differs": not torch.equal(dense_out, expected),
            "meta": meta_of(graph),
            "ties": tied_tensors(graph.model),
        }
    torch.save(io, out / "io.pt")
    return files, seen


SCRIPT = """
import json, sys
sys.path.insert(0, {test_dir!r})
import torch
from machop.ir import load_graph
from machop.ir.serialize import load_model, tied_tensors  # (machop.nn's, as machop.ir imports it)
from zoo.models import ZOO
report = {{"passes_imported_at_start": "machop.passes" in sys.modules, "cases": {{}}}}

{structure_of}

def run(case, model):
    x, expected = io[case]["x"], io[case]["expected"]
    model.eval()
    with torch.no_grad():
        out = model(x)
    report["cases"][case] = {{
        "equal": torch.equal(out, expected),
        "max_diff": (out.float() - expected.float()).abs().max().item() if out.shape == expected.shape else None,
        "structure": structure_of(model),
        "ties": tied_tensors(model),
        "meta": json.loads(json.dumps({{n.name: n.meta.get("mase", {{}}) for n in model.graph.nodes}}, default=str)),
    }}

files = json.loads({files!r})
io = torch.load({io!r}, weights_only=True)
for case, spec in files.items():
    if spec["kind"] == "mchz":
        continue
    user = ZOO[spec["model"]]() if spec["model"] else None
    if spec["kind"] == "pl":
        graph = load_model(spec["path"], "pl", model=user)
    else:
        graph = load_graph(spec["path"], model=user)
    run(case, graph.model)
report["passes_imported_after_load_graph"] = "machop.passes" in sys.modules

import machop
for case, spec in files.items():
    if spec["kind"] == "mchz":
        run(case, machop.load_compressed(spec["path"], model=ZOO[spec["model"]]() if spec["model"] else None))
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fresh")
    files, seen = _build(out)
    script = SCRIPT.format(
        test_dir=str(TEST_DIR),
        structure_of=textwrap.dedent(inspect.getsource(structure_of)),
        files=json.dumps(files),
        io=str(out / "io.pt"),
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=out)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(ln for ln in reversed(result.stdout.splitlines()) if ln.startswith("REPORT "))
    return {"files": files, "seen": seen, "report": json.loads(line.removeprefix("REPORT "))}


def test_load_graph_needs_no_pass_package(fresh):
    report = fresh["report"]
    assert report["passes_imported_at_start"] is False  # importing machop.ir alone does not pull them in
    assert report["passes_imported_after_load_graph"] is False  # nor does opening every pt / mz / pl file
    assert set(report["cases"]) == set(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_every_file_gives_the_saved_models_outputs(fresh, case):
    seen, got = fresh["seen"][case], fresh["report"]["cases"][case]
    # the check has teeth: without its masks / codebooks / quantizers / inserted modules the model computes otherwise
    assert seen["dense_differs"], case
    assert seen["dense_structure"] == {"chains": {}, "inserted": []}
    assert got["equal"], f"{case}: outputs differ from the saved model's (max |diff| {got['max_diff']})"


@pytest.mark.parametrize("case", list(CASES))
def test_every_file_restores_its_structure(fresh, case):
    _, _, chain_classes, inserted_classes = CASES[case]
    seen, got = fresh["seen"][case], fresh["report"]["cases"][case]
    # what the passes made is what the parent saw (so the comparison below is not vacuous)
    assert {c for chain in seen["structure"]["chains"].values() for c in chain} == chain_classes
    assert {cls for _, cls, _ in seen["structure"]["inserted"]} == inserted_classes
    # the fresh process rebuilt every chain and every inserted module, in front of the same layer
    assert got["structure"] == seen["structure"]
    assert got["ties"] == seen["ties"]


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("TiedEmbedding")])
def test_tied_embedding_is_tied_in_the_fresh_process(fresh, case):
    assert fresh["report"]["cases"][case]["ties"] == [["emb.weight", "decoder.weight"]]


@pytest.mark.parametrize("case", [c for c, spec in CASES.items() if spec[1] == "mz"])
def test_mz_restores_node_metadata(fresh, case):
    seen, got = fresh["seen"][case], fresh["report"]["cases"][case]
    assert any(m for m in seen["meta"].values()), f"{case}: the saved graph had no metadata to restore"
    assert got["meta"] == seen["meta"]


def test_pl_file_is_a_lightning_checkpoint_with_its_structure(fresh):
    path = fresh["files"]["lenet5-prune-kmeans-trained.ckpt"]["path"]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert "pytorch-lightning_version" in ckpt and "epoch" in ckpt
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    structure = json.loads(ckpt["machop_structure"])
    assert structure["model"] == "lenet5" and structure["parametrizations"]
