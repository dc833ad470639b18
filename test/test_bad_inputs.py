"""Bad input of every kind — config, command line, files handed in, output paths — through `ch`.

Each is refused before step 1: exit 2, exactly one line on stderr, no
traceback, no run folder, and nothing written anywhere (the working folder
is compared byte for byte and by modification time before and after).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import math
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, PassContext, save_graph
from machop.models import get_model
from machop.passes.graph.transforms.huffman import encode_model, huffman_encode_pass
from machop.passes.graph.transforms.prune import prune_transform_pass
from machop.passes.graph.transforms.quantize import quantize_transform_pass

from test_cli import TRAIN_TABLE, run_cli
from test_config_hardening import nested

PRUNE_TABLE = "[passes.prune.weight]\nsparsity = 0.5\n"


# --------------------------------------------------------------------------- config and command line

CONFIG_CASES = [
    # (id, toml text or None, extra argv, expected substring of the one error line)
    ("missing-config", None, ["--config", "nope.toml"], "--config: no such file"),
    ("bad-toml", "model = \n", [], "is not valid TOML"),
    ("unknown-top-key", 'modle = "lenet5"\n' + TRAIN_TABLE, [], "modle: unknown key"),
    ("unknown-model", 'model = "lenet6"\n' + TRAIN_TABLE, [], "model: unknown model 'lenet6'; choose from"),
    ("unknown-dataset-option", TRAIN_TABLE, ["--dataset", "imagenet"], "--dataset: unknown dataset 'imagenet'"),
    ("wrong-type", 'batch_size = "big"\n' + TRAIN_TABLE, [], "batch_size: must be an integer, got 'big'"),
    ("out-of-range-option", TRAIN_TABLE, ["--max-epochs", "0"], "--max-epochs: must be in [1,"),
    ("bad-choice-option", TRAIN_TABLE, ["--optimizer", "rmsprop"], "--optimizer: must be one of 'adam', 'sgd', 'adamw'"),
    ("bad-learning-rate", "learning_rate = -0.1\n" + TRAIN_TABLE, [], "learning_rate: must be in (0, 10]"),
    ("unknown-pass", "[passes.compress]\nlevel = 3\n", [], "passes.compress: unknown pass 'compress'; choose from"),
    ("unknown-pass-name", '[passes.step2]\npass = "trian"\n', [], "passes.step2.pass: unknown pass 'trian'"),
    ("unknown-pass-key", "[passes.train.training]\nepochs = 3\n", [], "passes.train.training.epochs: unknown key"),
    ("pass-value-range", "[passes.retrain.training]\nlearning_rate = -1.0\n", [], "passes.retrain.training.learning_rate: must be in (0, 10]"),
    ("pass-bad-optimizer", '[passes.train.training]\noptimizer = "lbfgs"\n', [], "passes.train.training.optimizer: must be one of"),
    ("no-passes", 'model = "lenet5"\n', [], "passes: no [passes.*] table"),
    ("load-without-type-missing", 'load_name = "x.ckpt"\n' + TRAIN_TABLE, [], "load_name: no such file: x.ckpt"),
    ("missing-checkpoint", TRAIN_TABLE, ["--load", "missing.ckpt", "--load-type", "pl"], "--load: no such file: missing.ckpt"),
    ("bad-load-type", TRAIN_TABLE, ["--load", "x.ckpt", "--load-type", "onnx"], "--load-type: must be one of"),
    ("devices-word", TRAIN_TABLE, ["--devices", "many"], "--devices: must be a positive integer or 'auto'"),
    ("alias-named-in-error", TRAIN_TABLE, ["--gpu", "0"], "--gpu: must be in [1, 1024], got 0"),
    ("positional-named-in-error", TRAIN_TABLE, ["lenet6"], "MODEL: unknown model 'lenet6'; choose from"),
    ("bad-precision-option", TRAIN_TABLE, ["--precision", "fp8"], "--precision: must be one of '64-true', "),
    ("max-steps-zero", TRAIN_TABLE, ["--max-steps", "0"], "--max-steps: must be -1 (no limit) or >= 1, got 0"),
    ("accumulate-zero", TRAIN_TABLE, ["--accumulate-grad-batches", "0"], "--accumulate-grad-batches: must be in [1,"),
    ("limit-val-fraction", TRAIN_TABLE, ["--limit-val-batches", "1.5"], "--limit-val-batches: must be a fraction in (0, 1]"),
    ("limit-test-zero", TRAIN_TABLE, ["--limit-test-batches", "0"], "--limit-test-batches: must be a fraction in (0, 1]"),
    ("trainer-table-precision", "[passes.train.trainer]\nprecision = 'fp8'\n", [],
     "passes.train.trainer.precision: must be one of"),
    ("trainer-table-max-steps", "[passes.train.trainer]\nmax_steps = -2\n", [],
     "passes.train.trainer.max_steps: must be -1 (no limit) or >= 1, got -2"),
    ("unknown-layer-type", "[passes.prune.weight]\nsparsity = 0.5\ntypes = ['conv9d']\n", [],
     "passes.prune.weight.types[0]: unknown layer type 'conv9d'"),
    # checked against the built model before step 1: a later step's label is named, nothing runs
    ("graph-check-second-prune-exclude", TRAIN_TABLE + "[passes.prune.weight]\nsparsity = 0.5\n[passes.prune_2]\n"
     "pass = 'prune'\n[passes.prune_2.weight]\nsparsity = 0.8\nexclude = ['fc9']\n", [],
     "passes.prune_2.weight.exclude: unknown name(s) 'fc9'; valid names: conv1, conv2, fc1, fc2"),
    ("graph-check-type-absent", "[passes.prune.weight]\nsparsity = 0.5\ntypes = ['lstm']\n", [],
     "passes.prune.weight.types: no lstm layer in this model; it has: conv2d, linear"),
    ("graph-check-kernelwise-linear", "[passes.prune.weight]\nsparsity = 0.5\ngranularity = 'kernelwise'\n", [],
     "passes.prune.weight.granularity: kernelwise pruning prunes the kernels of convolutions"),
    ("graph-check-quantize-key", TRAIN_TABLE + "[passes.quantize]\nby = 'name'\n[passes.quantize.conv9.config]\n"
     "name = 'kmeans'\n", [], "passes.quantize.conv9: matches no weight of this model"),
    ("graph-check-huffman-before-quantize", TRAIN_TABLE + "[passes.huffman]\nis_huffman = true\n", [],
     "passes.huffman: comes before any quantize step"),
    ("graph-check-decode-missing", "[passes.huffman_decode]\npath = 'none.mchz'\n", [],
     "passes.huffman_decode.path: no such file: none.mchz"),
    ("graph-check-train-load-missing", "[passes.retrain]\nload_name = 'gone.ckpt'\nload_type = 'pl'\n", [],
     "passes.retrain.load_name: no such file: "),
]



VALUE_CASES = [
    # (id, toml text or bytes or None, extra argv, the error line's text after "ch transform: error: ")
    ("lr-nan", "learning_rate = nan\n" + TRAIN_TABLE, [], "learning_rate: must be a finite number, got nan"),
    ("lr-inf-option", TRAIN_TABLE, ["--learning-rate", "inf"], "--learning-rate: must be a finite number, got inf"),
    ("weight-decay-nan-option", TRAIN_TABLE, ["--weight-decay", "nan"], "--weight-decay: must be a finite number"),
    ("sparsity-nan", "[passes.prune.weight]\nsparsity = nan\n", [],
     "passes.prune.weight.sparsity: must be a finite number, got nan"),
    ("sparsity-table-nan", "[passes.prune.weight]\nsparsity = {default = nan}\n", [],
     "passes.prune.weight.sparsity.default: must be a finite number, got nan"),
    ("val-fraction-nan", "val_fraction = nan\n" + TRAIN_TABLE, [], "val_fraction: must be a finite number, got nan"),
    ("seed-negative-option", TRAIN_TABLE, ["--seed", "-1"], "--seed: must be in [0, 4294967295], got -1"),
    ("seed-2-70-option", TRAIN_TABLE, ["--seed", str(2 ** 70)], "--seed: must be a 64-bit integer"),
    ("limit-val-nan-option", TRAIN_TABLE, ["--limit-val-batches", "nan"], "--limit-val-batches: must be a finite"),
    ("project-parent", "project = '../x'\n" + TRAIN_TABLE, [], "project: must be a name, not a path"),
    ("project-absolute-option", TRAIN_TABLE, ["--project", "/abs"], "--project: must be a name, not a path"),
    ("project-nested-option", TRAIN_TABLE, ["--project", "a/b"], "--project: must be a name, not a path"),
    ("project-empty-option", TRAIN_TABLE, ["--project", ""], "--project: must be a name, got an empty string"),
    ("project-long-option", TRAIN_TABLE, ["--project", "x" * 300], "--project: must be a name of at most 100"),
    ("project-newline", 'project = "a\\nb"\n' + TRAIN_TABLE, [], "project: must be a name without control"),
    ("unknown-key-with-newline", '"a\\nb" = 1\n' + TRAIN_TABLE, [], "a\\nb: unknown key"),
    ("non-utf8", b"model = '\xff'\n" + TRAIN_TABLE.encode(), [], "--config: "),
    ("nested-arrays", nested(10000, table=False), [], "--config: "),
    ("directory-config", None, ["--config", "."], "--config: not a file: ."),
]


# --------------------------------------------------------------------------- files handed in


@functools.cache
def good_mchz() -> bytes:
    """A real compressed LeNet-5 (pruned, 4-bit k-means)."""
    torch.manual_seed(0)
    info = get_dataset_info("fashion_mnist")
    graph = MaseGraph(get_model("lenet5", info), context=PassContext(model_name="lenet5", dataset_info=info))
    graph, _ = prune_transform_pass(graph, {"weight": {"sparsity": 0.8}})
    graph, _ = quantize_transform_pass(graph, {"by": "type", "default": {"config": {"name": "kmeans",
                                                                                 "weight_bits": 4}}})
    return encode_model(graph)[0]


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


def torch_file(obj) -> Callable[[Path], bytes]:
    def make(path: Path) -> bytes:
        torch.save(obj, path)
        return path.read_bytes()
    return make


def idx(shape: tuple[int, ...], data: bytes, claimed: tuple[int, ...] | None = None) -> bytes:
    dims = claimed or shape
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


def idx_folder(images: bytes, gz: bool = False) -> dict[str, bytes]:
    """The four Fashion-MNIST files, the training images replaced by ``images``."""
    ok_images, ok_labels = idx((2, 28, 28), bytes(2 * 784)), idx((2,), bytes(2))
    files = {"train-images-idx3-ubyte": images, "train-labels-idx1-ubyte": ok_labels,
             "t10k-images-idx3-ubyte": ok_images, "t10k-labels-idx1-ubyte": ok_labels}
    if gz:
        files = {f"{name}.gz": gzip.compress(data) for name, data in files.items()}
    return {f"data/{name}": data for name, data in files.items()}


class _System:
    def __reduce__(self):  # what a hostile pickle looks like: a call to os.system
        import os
        return os.system, ("echo pwned > pwned.txt",)


def cifar_folder() -> dict[str, bytes]:
    batch = pickle.dumps(_System())
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {f"cifar/cifar-10-batches-py/{name}": batch for name in names}


LENET5 = ["--model", "lenet5"]
HUFFMAN_FILE = ["test", *LENET5, "--load", "m.mchz", "--load-type", "huffman"]

# (id, action and argv, config text/bytes or None, {file name: bytes or maker(path)}, expected substring)
FILE_CASES = [
    ("ckpt-garbage", ["test", *LENET5, "--load", "bad.ckpt", "--load-type", "pl"], None,
     {"bad.ckpt": b"not a checkpoint at all"}, "--load: bad.ckpt is not a readable PyTorch weights file"),
    ("ckpt-pickled-object", ["test", *LENET5, "--load", "obj.ckpt", "--load-type", "pl"], None,
     {"obj.ckpt": torch_file({"state_dict": argparse.Namespace(a=1)})}, "--load: obj.ckpt is not a readable"),
    ("ckpt-no-state-dict", ["test", *LENET5, "--load", "x.ckpt", "--load-type", "pl"], None,
     {"x.ckpt": torch_file({"epoch": 3})}, "is not a Lightning checkpoint (no 'state_dict')"),
    ("pt-list", ["test", *LENET5, "--load", "l.pt", "--load-type", "pt"], None,
     {"l.pt": torch_file([torch.zeros(2)])}, "l.pt does not hold a state dict"),
    ("pt-other-architecture", ["test", *LENET5, "--load", "w.pt", "--load-type", "pt"], None,
     {"w.pt": torch_file({"fc1.weight": torch.zeros(3, 3)})}, "w.pt does not fit the model"),
    ("load-directory", ["test", *LENET5, "--load", "d", "--load-type", "pt"], None, {"d/x": b""},
     "--load: d is a directory"),
    ("load-dev-zero", ["test", *LENET5, "--load", "/dev/zero", "--load-type", "pt"], None, {},
     "--load: /dev/zero is not a regular file"),
    ("mchz-text", HUFFMAN_FILE, None, {"m.mchz": b"hello, world\n" * 4}, "not a machop compressed file (bad magic)"),
    ("mchz-truncated", HUFFMAN_FILE, None, {"m.mchz": lambda p: good_mchz()[:300]}, "m.mchz: truncated"),
    ("mchz-flipped-header", HUFFMAN_FILE, None, {"m.mchz": lambda p: flipped(good_mchz(), 30)}, "header CRC mismatch"),
    ("mchz-flipped-payload", HUFFMAN_FILE, None, {"m.mchz": lambda p: flipped(good_mchz(), len(good_mchz()) - 9)},
     "CRC mismatch"),
    ("mchz-trailing", HUFFMAN_FILE, None, {"m.mchz": lambda p: good_mchz() + b"\0"}, "1 unexpected trailing bytes"),
    ("mchz-other-model", ["test", "--model", "lenet300", "--load", "m.mchz", "--load-type", "huffman"], None,
     {"m.mchz": lambda p: good_mchz()}, "--load: m.mchz: file holds a lenet5, not the lenet300 asked for"),
    ("mchz-directory", ["test", *LENET5, "--load", "d", "--load-type", "huffman"], None, {"d/x": b""},
     "--load: d is a directory"),
    ("decode-missing", ["transform"], "[passes.huffman_decode]\npath = 'none.mchz'\n", {},
     "passes.huffman_decode.path: no such file: none.mchz"),
    ("decode-directory", ["transform"], "[passes.huffman_decode]\npath = 'd'\n", {"d/x": b""},
     "passes.huffman_decode.path: d is a directory"),
    ("decode-not-mchz", ["transform"], "[passes.huffman_decode]\npath = 'x.mchz'\n", {"x.mchz": b"PK\3\4 zip"},
     "x.mchz: not a machop compressed file"),
    ("train-table-load-missing", ["transform"], "[passes.retrain]\nload_name = 'gone.ckpt'\nload_type = 'pl'\n", {},
     "passes.retrain.load_name: no such file: "),
    ("idx-garbage", ["transform", "--data-dir", "data"], PRUNE_TABLE, idx_folder(b"garbage!" * 10),
     "dataset: "),
    ("idx-claims-huge", ["transform", "--data-dir", "data"], PRUNE_TABLE,
     idx_folder(idx((2, 28, 28), bytes(2 * 784), claimed=(4_000_000_000, 28, 28))), "dataset: "),
    ("idx-gzip-bomb", ["transform", "--data-dir", "data"], PRUNE_TABLE,
     idx_folder(idx((2, 28, 28), bytes(2 * 784) + bytes(50_000_000)), gz=True), "dataset: "),
    ("idx-missing", ["transform", "--data-dir", "data"], PRUNE_TABLE, {"data/readme": b""}, "dataset: "),
    ("cifar-hostile-pickle", ["transform", "--model", "vgg7", "--dataset", "cifar10", "--data-dir", "cifar"],
     PRUNE_TABLE, cifar_folder(), "refusing to load global"),
]

def lenet5_state(bad: float | None = None, at: str = "fc1.weight") -> dict[str, torch.Tensor]:
    """A LeNet-5 state dict; with ``bad``, one value of tensor ``at`` set to it (NaN, inf)."""
    torch.manual_seed(0)
    state = get_model("lenet5", get_dataset_info("fashion_mnist")).state_dict()
    if bad is not None:
        state[at].view(-1)[7] = bad
    return state


def lightning_file(state: dict[str, torch.Tensor]) -> Callable[[Path], bytes]:
    return torch_file({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 0})


EMOJI, CJK = "\N{GRINNING FACE}", "\N{CJK UNIFIED IDEOGRAPH-526A}"  # 4 and 3 bytes of UTF-8
GRADUAL = ("[passes.prune.weight]\nsparsity = 0.5\n[passes.prune.gradual]\nramp_epochs = 1\n"
           "[passes.prune.gradual.training]\nmax_epochs = 2\n")

# refused before step 1, with nothing written: checkpoints holding NaN or inf, names of many bytes, a ramp
# that --max-steps cuts short (known only with the data loaded), MASE sections, a --load-type the file contradicts
LATE_CASES = [
    ("ckpt-nan-transform", ["transform", "--load", "w.pt"], PRUNE_TABLE, {"w.pt": torch_file(lenet5_state(math.nan))},
     "--load: w.pt: tensor fc1.weight holds NaN (1 of 400000 values)"),
    ("ckpt-inf-lightning", ["transform", "--load", "w.ckpt"], PRUNE_TABLE,
     {"w.ckpt": lightning_file(lenet5_state(-math.inf, "conv2.bias"))},
     "--load: w.ckpt: tensor conv2.bias holds inf (1 of 50 values)"),
    ("ckpt-nan-test", ["test", "--load", "w.pt"], None, {"w.pt": torch_file(lenet5_state(math.nan, "conv1.weight"))},
     "--load: w.pt: tensor conv1.weight holds NaN"),
    ("ckpt-nan-train", ["train", "--load", "w.pt", "--load-type", "pt"], None,
     {"w.pt": torch_file(lenet5_state(math.nan))}, "--load: w.pt: tensor fc1.weight holds NaN"),
    ("label-100-emoji", ["transform"], f'[passes."{EMOJI * 100}"]\npass = "prune"\n'
     f'[passes."{EMOJI * 100}".weight]\nsparsity = 0.5\n', {}, "must be a name of at most 200 bytes in UTF-8"),
    ("label-85-cjk", ["transform"], f'[passes."{CJK * 85}"]\npass = "prune"\n[passes."{CJK * 85}".weight]\n'
     "sparsity = 0.5\n", {}, "got 255 bytes in 85 characters"),
    ("project-100-emoji", ["transform", "--project", EMOJI * 100], PRUNE_TABLE, {},
     "--project: must be a name of at most 200 bytes in UTF-8 (it becomes part of a file name), got 400 bytes"),
    ("project-100-emoji-train", ["train", "--project", EMOJI * 100], None, {}, "--project: must be a name of at most"),
    ("ramp-past-max-steps", ["transform", "--max-steps", "5", "--train-limit", "2000"], GRADUAL, {},
     "passes.prune.gradual.ramp_epochs: the ramp ends at optimizer step 15 "),
    ("ramp-past-limit-batches", ["transform", "--limit-train-batches", "0.5", "--max-steps", "5", "--train-limit",
                                 "2000"], GRADUAL, {}, "the ramp ends at optimizer step 7 (start 0 + ramp 7"),
    ("mase-sections", ["transform"], "[search]\nstrategy = 'optuna'\n[transform]\nstyle = 'graph'\n" + PRUNE_TABLE,
     {}, "2 unknown keys: search, transform; allowed keys: "),
    ("load-type-contradicts-mchz", ["test", "--load", "m.mchz", "--load-type", "pt"], None,
     {"m.mchz": lambda p: good_mchz()}, "--load-type: is 'pt', but m.mchz is a .mchz compressed file (load type "
                                        "'huffman'); drop --load-type"),
    ("load-type-contradicts-mz", ["test", "--load", "m.mz", "--load-type", "pl"], None,
     {"m.mz": lambda p: good_mz(p)}, "--load-type: is 'pl', but m.mz is a machop .mz file (load type 'mz')"),
    ("export-no-output", ["export", "--load", "m.mchz"], None, {"m.mchz": lambda p: good_mchz()},
     "--output: is required"),
    ("export-no-load", ["export", "--output", "m.onnx"], None, {}, "--load: is required"),
    ("export-output-under-file", ["export", "--load", "m.mchz", "--output", "f/m.onnx"], None,
     {"m.mchz": lambda p: good_mchz(), "f": b"x"}, "--output: cannot create f/m.onnx: f is a file, not a folder"),
    ("max-epochs-all-zero", ["transform", "--max-epochs-all", "0"], PRUNE_TABLE, {}, "--max-epochs-all: must be in [1,"),
]


def good_mz(path: Path) -> bytes:
    info = get_dataset_info("fashion_mnist")
    save_graph(MaseGraph(get_model("lenet5", info), context=PassContext(model_name="lenet5", dataset_info=info)),
               path, "mz")
    return path.read_bytes()


OUTPUT_CASES = [
    ("project-dir-is-a-file", ["transform", "--project-dir", "f"], PRUNE_TABLE, {"f": b"x"},
     "--project-dir: f is a file, not a folder"),
    ("project-dir-under-a-file", ["transform", "--project-dir", "f/sub"], PRUNE_TABLE, {"f": b"x"},
     "--project-dir: cannot create f/sub: f is a file, not a folder"),
    ("train-project-dir-before-data", ["train", *LENET5, "--project-dir", "f", "--data-dir", "nodata"], None,
     {"f": b"x"}, "--project-dir: f is a file, not a folder"),
    ("huffman-path-directory", ["transform"], PRUNE_TABLE + "[passes.quantize]\nby = 'type'\n"
     "[passes.quantize.default.config]\nname = 'kmeans'\n[passes.huffman]\npath = 'd'\n", {"d/x": b""},
     "passes.huffman.path: d is a folder, not a file"),
    ("huffman-path-under-file", ["transform"], PRUNE_TABLE + "[passes.quantize]\nby = 'type'\n"
     "[passes.quantize.default.config]\nname = 'kmeans'\n[passes.huffman]\npath = 'f/m.mchz'\n", {"f": b"x"},
     "passes.huffman.path: cannot create f/m.mchz: f is a file, not a folder"),
    ("huffman-path-nul", ["transform"], "[passes.huffman]\nallow_raw = true\npath = \"a\\u0000b\"\n", {},
     "passes.huffman.path: must be a path without NUL"),
]

BAD_INPUTS = (
    [(i, ["transform", *extra], text, {}, expected) for i, text, extra, expected in CONFIG_CASES]
    + [(i, ["transform", *extra], text, {}, f"error: {expected}") for i, text, extra, expected in VALUE_CASES]
    + FILE_CASES + OUTPUT_CASES + LATE_CASES
)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_refused_before_step_1_in_one_line_writing_nothing(case, tmp_path, capsys, monkeypatch):
    _, argv, config, files, expected = case
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content(path))
    if config is not None:
        (tmp_path / "c.toml").write_bytes(config if isinstance(config, bytes) else config.encode())
        argv = [*argv, "--config", "c.toml"]
    if "--project-dir" not in argv:
        argv = [*argv, "--project-dir", "out"]
    before = tree(tmp_path)
    code, err = run_cli([*argv, "--no-progress"], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ch {argv[0]}: error: ") and expected in lines[0], lines[0]
    assert tree(tmp_path) == before  # no run folder, nothing written anywhere


def test_the_table_covers_every_kind_of_input():
    assert len(BAD_INPUTS) >= 40 and len({c[0] for c in BAD_INPUTS}) == len(BAD_INPUTS)
    assert {c[1][0] for c in BAD_INPUTS} == {"train", "test", "transform", "export"}


# --------------------------------------------------------------------------- the same through the API


def lenet5_graph() -> MaseGraph:
    info = get_dataset_info("fashion_mnist")
    torch.manual_seed(0)
    return MaseGraph(get_model("lenet5", info), context=PassContext(model_name="lenet5", dataset_info=info))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_kmeans_refuses_a_non_finite_weight_naming_it(bad):
    """Instead of a layer of NaN centroids: one ValueError naming the tensor; the graph is left as it was."""
    graph = lenet5_graph()
    with torch.no_grad():
        graph.model.get_submodule("fc2").weight[3, 1] = bad
    before = {k: v.clone() for k, v in graph.model.state_dict().items()}
    what, numel = "NaN" if math.isnan(bad) else "inf", graph.model.get_submodule("fc2").weight.numel()
    with pytest.raises(ValueError, match=rf"^passes.quantize: tensor fc2.weight holds {what} \(1 of {numel} values\)"):
        quantize_transform_pass(graph, {"by": "type", "default": {"config": {"name": "kmeans", "weight_bits": 4}}})
    after = graph.model.state_dict()
    assert before.keys() == after.keys() and all(torch.allclose(v, after[k], rtol=0, atol=0, equal_nan=True)
                                                  for k, v in before.items())


def test_huffman_refuses_a_non_finite_weight_naming_it(tmp_path):
    """A NaN that arrives after quantization (integer codes: it would code as the smallest int64)."""
    graph = lenet5_graph()
    graph, _ = quantize_transform_pass(graph, {"by": "type", "default": {"config": {"name": "integer", "weight_width": 8,
                                                                                 "weight_frac_width": 4,
                                                                                 "data_in_width": "NA",
                                                                                 "data_in_frac_width": "NA",
                                                                                 "bias_width": "NA",
                                                                                 "bias_frac_width": "NA"}}})
    with torch.no_grad():
        graph.model.get_submodule("conv1").parametrizations.weight.original[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"^passes.huffman_encode: tensor conv1.parametrizations.weight.original "
                                         r"holds NaN \(1 of \d+ values\)"):
        huffman_encode_pass(graph, {"path": str(tmp_path / "m.mchz")})
    assert not (tmp_path / "m.mchz").exists()
