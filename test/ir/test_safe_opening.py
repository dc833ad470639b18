"""A file opens only into the class it was saved from, and a shrunk file of your own model opens into that model.

Real files of real passes (prune, shrink, k-means, Huffman, `save_graph`)
of `zoo.models.ShrinkCNN` (conv-bn-relu-conv-linear):

- another class of the same shapes (`RenamedCNN`) is refused by every
  opener (`load_graph`, `machop.load_compressed`, the Huffman package's
  `load_compressed`, the ``huffman_decode`` pass) with one line naming both
  classes; ``saved_class`` opens it, bit-identical;
- a shrunk file opens with ``load_compressed(path, model=ShrinkCNN())`` (and
  `load_graph`, ``huffman_decode``) in a fresh Python process that has
  only the model class, bit-identical to the model before encoding; so do
  the shrunk files of the zoo's models;
- a file of a wider model, or of another kernel size, or one claiming a huge
  layer, is refused in one line before the model is changed or anything of
  the claimed size is allocated.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import machop
from machop.config import ConfigError
from machop.ir import ArchitectureMismatch, MaseGraph, load_graph, save_graph
from machop.passes.graph import PASSES
from machop.ir.mchz import CompressedFileError, load_compressed
from machop.ir.mchz.format import pack_container, unpack_container

from zoo.models import ZOO, ShrinkCNN

pytestmark = pytest.mark.usefixtures("one_thread")

TEST_DIR = Path(__file__).resolve().parents[1]  # test/: `zoo.models` lives there
CHANNELWISE = {"weight": {"sparsity": 0.5, "granularity": "channelwise", "method": "l1-norm-single"}}
KMEANS = {"by": "type", "default": {"config": {"name": "kmeans", "weight_bits": 4}}}


class RenamedCNN(ShrinkCNN):
    """`ShrinkCNN` under another name: the same parameter shapes, another class."""


class Calibration:
    """What the prune pass asks of a data module (it calibrates nothing for weights, but may ask)."""

    def __init__(self, example):
        self.example = example

    def calibration_batch(self, n: int = 256):
        return self.example(n), torch.zeros(n, dtype=torch.long)


def _randomise_norms(model: nn.Module) -> None:
    """Batch-norm statistics and affines away from their defaults, so a removed channel's constant output matters."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)


def _graph(cls, *args) -> MaseGraph:
    torch.manual_seed(0)
    model = cls(*args)
    _randomise_norms(model)
    graph = MaseGraph(model, dummy_input=cls.example(2))
    graph.context.data_module = Calibration(cls.example)
    return graph


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Every file the tests open, and the outputs of the model each was written from."""
    out = tmp_path_factory.mktemp("safe")
    x = ShrinkCNN.example(5)
    made: dict = {"x": x, "dir": out}
    # a pruned, k-means ShrinkCNN (not shrunk): as mz and as mchz
    g, _ = PASSES["prune"](_graph(ShrinkCNN), {"weight": {"sparsity": 0.5}})
    g, _ = PASSES["quantize"](g, KMEANS)
    made["cnn.mz"], made["cnn.mchz"] = save_graph(g, out / "cnn.mz"), out / "cnn.mchz"
    PASSES["huffman_encode"](g, {"path": str(made["cnn.mchz"])})
    made["cnn"] = _out(g.model, x)
    # a shrunk ShrinkCNN: prune channelwise, shrink (saved), k-means, Huffman
    g, _ = PASSES["prune"](_graph(ShrinkCNN), CHANNELWISE)
    g, info = PASSES["shrink"](g, {})
    made["shrunk_channels"] = {n: [m.weight.shape[0]] for n, m in g.model.named_modules() if n in ("conv1", "conv2")}
    made["shrunk.mz"], made["shrunk-mz"] = save_graph(g, out / "shrunk.mz"), _out(g.model, x)
    g, _ = PASSES["quantize"](g, KMEANS)
    made["shrunk.mchz"] = out / "shrunk.mchz"
    PASSES["huffman_encode"](g, {"path": str(made["shrunk.mchz"])})
    made["shrunk-mchz"] = _out(g.model, x)
    # files claiming to be shrunk, but wider than the model the tests give, or of another kernel size
    for name, args in (("wide", (16,)), ("kernel5", (8, 5))):
        g, _ = PASSES["quantize"](_graph(ShrinkCNN, *args), KMEANS)
        g.context.shrunk = True
        made[f"{name}.mz"], made[f"{name}.mchz"] = save_graph(g, out / f"{name}.mz"), out / f"{name}.mchz"
        PASSES["huffman_encode"](g, {"path": str(made[f"{name}.mchz"])})
    return made


# --------------------------------------------------------------------------- the class a file records

OPENERS = {
    "load_graph": lambda f, model, **kw: load_graph(f["cnn.mz"], model=model, **kw).model,
    "machop.load_compressed": lambda f, model, **kw: machop.load_compressed(f["cnn.mchz"], model=model, **kw),
    "huffman.load_compressed": lambda f, model, **kw: load_compressed(f["cnn.mchz"], model=model, **kw).model,
    "huffman_decode": lambda f, model, **kw: PASSES["huffman_decode"](
        MaseGraph(model), {"path": str(f["cnn.mchz"]), **kw})[0].model,
}


@pytest.mark.parametrize("opener", list(OPENERS))
def test_another_class_of_the_same_shapes_is_refused_naming_both(files, opener):
    model = RenamedCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    error = ArchitectureMismatch if opener == "load_graph" else CompressedFileError
    with pytest.raises(error) as err:
        OPENERS[opener](files, model)
    msg = _one_line(err)
    path = files["cnn.mz" if opener == "load_graph" else "cnn.mchz"]
    assert msg.startswith(str(path)), msg
    assert 'holds class ShrinkCNN, not the RenamedCNN given; if RenamedCNN is ShrinkCNN renamed, pass ' \
           'saved_class="ShrinkCNN"' in msg, msg
    after = model.state_dict()  # refused before anything of the model changed
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("opener", list(OPENERS))
def test_saved_class_opens_a_renamed_class_bit_identical(files, opener):
    expected = files["cnn"]
    got = _out(OPENERS[opener](files, RenamedCNN(), saved_class="ShrinkCNN"), files["x"])
    assert torch.equal(got, expected)
    # and the class itself needs no override
    assert torch.equal(_out(OPENERS[opener](files, ShrinkCNN()), files["x"]), expected)


@pytest.mark.parametrize("opener", list(OPENERS))
def test_saved_class_naming_a_third_class_is_refused(files, opener):
    with pytest.raises(ValueError) as err:
        OPENERS[opener](files, RenamedCNN(), saved_class="OtherCNN")
    assert 'holds class ShrinkCNN, not the RenamedCNN given; saved_class="OtherCNN" names neither' in _one_line(err)


def test_saved_class_is_a_class_name_and_only_for_decoding(files):
    with pytest.raises(ConfigError, match=r"^passes.huffman_decode.saved_class: must be a class name"):
        PASSES["huffman_decode"](MaseGraph(ShrinkCNN()), {"path": str(files["cnn.mchz"]), "saved_class": "a b"})
    graph = load_graph(files["cnn.mz"], model=ShrinkCNN())
    for name in ("huffman_encode", "huffman"):
        with pytest.raises(ConfigError, match=rf"^passes.{name}.saved_class: only huffman_decode reads"):
            PASSES[name](graph, {"path": str(files["dir"] / "x.mchz"), "saved_class": "ShrinkCNN"})
    assert not (files["dir"] / "x.mchz").exists()


def test_files_record_the_class_of_a_traced_model(files):
    header, _ = unpack_container(Path(files["cnn.mchz"]).read_bytes())
    assert header["structure"]["class"] == "ShrinkCNN"
    payload = torch.load(files["cnn.mz"], weights_only=True)
    assert json.loads(payload["structure"])["class"] == "ShrinkCNN"


# --------------------------------------------------------------------------- shrunk files of your own model

FRESH = """
import json, sys
sys.path.insert(0, {test_dir!r})
import torch
import machop
from machop.ir import MaseGraph, load_graph
from zoo.models import ShrinkCNN

x = torch.load({x!r}, weights_only=True)
report = {{}}

def outputs(name, model):
    model.eval()
    with torch.no_grad():
        torch.save(model(x), {out!r} + name + ".pt")
    report[name] = {{n: list(m.weight.shape) for n, m in model.named_modules() if n in ("conv1", "conv2", "fc")}}

outputs("load_compressed", machop.load_compressed({mchz!r}, model=ShrinkCNN()))
outputs("load_graph", load_graph({mz!r}, model=ShrinkCNN()).model)
from machop.passes.graph import PASSES
outputs("huffman_decode", PASSES["huffman_decode"](MaseGraph(ShrinkCNN()), {{"path": {mchz!r}}})[0].model)
print("REPORT " + json.dumps(report))
"""


def test_a_shrunk_user_model_opens_in_a_fresh_process(files):
    out = files["dir"]
    torch.save(files["x"], out / "x.pt")
    script = FRESH.format(test_dir=str(TEST_DIR), x=str(out / "x.pt"), out=str(out / "fresh-"),
                          mchz=str(files["shrunk.mchz"]), mz=str(files["shrunk.mz"]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=out)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(next(ln for ln in result.stdout.splitlines() if ln.startswith("REPORT ")).removeprefix("REPORT "))
    # the file is shrunk: the model as written is not the file's architecture
    shrunk = files["shrunk_channels"]
    assert shrunk["conv1"][0] < 8 and shrunk["conv2"][0] < 8, shrunk
    for name, expected in (("load_compressed", "shrunk-mchz"), ("load_graph", "shrunk-mz"),
                           ("huffman_decode", "shrunk-mchz")):
        shapes = report[name]
        assert shapes["conv1"][0] == shrunk["conv1"][0] and shapes["conv2"][:2] == [shrunk["conv2"][0], shrunk["conv1"][0]]
        assert shapes["fc"] == [10, shrunk["conv2"][0] * 16]
        got = torch.load(out / f"fresh-{name}.pt", weights_only=True)
        assert torch.equal(got, files[expected]), name


SHRINKABLE = ["MLP", "ResBlockNet", "DepthwiseNet", "Conv1dNet", "Conv3dNet", "ConvTransposeAE", "WeightNormNet",
              "SpectralNormNet", "Float64CNN"]  # the zoo's models that shrink removes channels of


@pytest.mark.parametrize("name", [n for n in SHRINKABLE if n in ZOO])
def test_shrunk_zoo_models_reopen_into_their_class(name, tmp_path):
    cls = ZOO[name]
    graph = _graph(cls)
    x = cls.example(3)
    graph, _ = PASSES["prune"](graph, CHANNELWISE)
    graph, info = PASSES["shrink"](graph, {})
    assert info["totals"]["removed_channels"] > 0
    mz = save_graph(graph, tmp_path / "m.mz")
    expected_mz = _out(graph.model, x)
    graph, _ = PASSES["quantize"](graph, KMEANS)
    PASSES["huffman_encode"](graph, {"path": str(tmp_path / "m.mchz")})
    expected = _out(graph.model, x)
    assert torch.equal(_out(load_graph(mz, model=cls()).model, x), expected_mz)
    assert torch.equal(_out(machop.load_compressed(tmp_path / "m.mchz", model=cls()), x), expected)


# --------------------------------------------------------------------------- files that do not fit


@pytest.mark.parametrize("kind", ["mz", "mchz", "huffman_decode"])
@pytest.mark.parametrize("file, words", [("wide", "has 8 out_channels but the file records 16"),
                                         ("kernel5", "a shrunk layer only loses channels")])
def test_a_larger_layer_or_another_kernel_is_refused_and_the_model_kept(files, kind, file, words):
    model = ShrinkCNN()
    layers = dict(model.named_children())
    path = files[f"{file}.mz" if kind == "mz" else f"{file}.mchz"]
    with pytest.raises(ValueError) as err:
        if kind == "mz":
            load_graph(path, model=model)
        elif kind == "mchz":
            machop.load_compressed(path, model=model)
        else:
            PASSES["huffman_decode"](MaseGraph(model), {"path": str(path)})
    msg = _one_line(err)
    assert msg.startswith(str(path)) and "does not fit the model: layer 'conv1' (Conv2d)" in msg and words in msg, msg
    assert dict(model.named_children()) == layers and model.conv1.weight.shape == (8, 1, 3, 3)


def test_a_file_not_marked_shrunk_is_not_resized(tmp_path):
    """A file of a wider ShrinkCNN that no shrink pass wrote: checked as it is, never resized to fit."""
    g, _ = PASSES["quantize"](_graph(ShrinkCNN, 16), KMEANS)
    path = save_graph(g, tmp_path / "wide.mz")
    with pytest.raises(ValueError, match=r"does not fit the model: 'conv1\.") as err:
        load_graph(path, model=ShrinkCNN())
    assert len(str(err.value).splitlines()) == 1


def test_a_huge_claimed_layer_is_refused_before_allocating(files, tmp_path):
    """The shrunk file's header, every tensor of fc claimed [10, 2**32] (160 GiB of float32): refused unread."""
    header, sections = unpack_container(Path(files["shrunk.mchz"]).read_bytes())
    header.pop("sections", None)
    old = None
    for layer in header["layers"]:
        if layer["name"] == "fc":
            old, layer["shape"] = layer["shape"], [10, 1 << 32]
    assert old is not None
    for entry in header["tensors"]:
        if entry[0].startswith("fc.parametrizations.weight.") and entry[1] == old:
            entry[1] = [10, 1 << 32]
    huge = tmp_path / "huge.mchz"
    huge.write_bytes(pack_container(header, list(sections.items())))
    model = ShrinkCNN()
    with pytest.raises(CompressedFileError) as err:
        machop.load_compressed(huge, model=model)
    msg = _one_line(err)
    assert "layer 'fc' (Linear) has 128 in_features but the file records 4294967296" in msg, msg
    assert model.fc.weight.shape == (10, 128)
