"""Hand-made ``.pt``, ``.mz`` and ``.ckpt`` files with odd structure are refused in one line, the model untouched.

Every case is a real file: a good ``mz`` file of a small model (pruned,
k-means shared, fixed point, with an activation-prune and an input quantizer
module inserted) whose payload is changed and written back with
``torch.save``, or a zip archive written by hand (the cases ``torch.save``
cannot produce: a deflated record, a storage claiming more elements than its
record holds, a pickle of many tensor views). Each must raise a ValueError
whose message is one line naming the file, and leave the model it was to be
loaded into as it was. A last test measures the peak memory of refusing the
worst crafted files in a fresh process.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, PassContext, save_graph
from machop.files import BadFileError, IsADirectory, NoSuchFile
from machop.ir.serialize import load_graph, load_model
from machop.nn import ActivationPrune, FixedPoint, KMeansWeight, apply_mask


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def tiny_graph() -> MaseGraph:
    torch.manual_seed(0)
    graph = MaseGraph(Tiny(), context=PassContext())
    fc1, fc2 = graph.model.fc1, graph.model.fc2
    mask = torch.rand(6, 8) > 0.3
    apply_mask(fc1, mask, how={"scope": "local", "granularity": "elementwise", "method": "l1-norm", "target": 0.3})
    index = torch.randint(0, 4, (6, 8), dtype=torch.uint8) * mask
    parametrize.register_parametrization(fc1, "weight", KMeansWeight(torch.linspace(-1, 1, 4), index, mask, 2),
                                         unsafe=True)
    parametrize.register_parametrization(fc2, "weight", FixedPoint(8, 6), unsafe=True)
    nodes = {n.name: n for n in graph.nodes}
    act = ActivationPrune(channel_dim=-1, stages=[{"rank": "random", "sparsity": 0.25, "seed": 3}],
                          channel_mask=torch.tensor([True, False, True, True, True, True]))
    graph.insert_before(nodes["fc2"], 0, "fc2_act_prune", act)
    graph.insert_before(nodes["fc1"], 0, "fc1_data_in_quantizer", FixedPoint(8, 4))
    return graph


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    """The payload of a good ``mz`` file of `tiny_graph` (it loads: checked here)."""
    path = tmp_path_factory.mktemp("good") / "good.mz"
    graph = tiny_graph()
    save_graph(graph, path, "mz")
    loaded = load_graph(path, model=Tiny())
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), graph.model(x))
    return torch.load(path, weights_only=True)


# --------------------------------------------------------------------------- ways to spoil a file


def structure(change: Callable[[dict], object]) -> Callable[[dict], None]:
    """Change the payload's parsed structure record in place."""
    def apply(payload: dict) -> None:
        s = json.loads(payload["structure"])
        change(s)
        payload["structure"] = json.dumps(s)
    return apply


def chain(i: int, change: Callable[[dict], object]) -> Callable[[dict], None]:
    """Change step ``i`` of fc1.weight's chain (0: WeightMask, 1: KMeansWeight) or fc2.weight's (i = 2: FixedPoint)."""
    def pick(s: dict) -> dict:
        recs = {r["module"]: r for r in s["parametrizations"]}
        return recs["fc2"]["chain"][0] if i == 2 else recs["fc1"]["chain"][i]
    return structure(lambda s: change(pick(s)))


def inserted(name: str, change: Callable[[dict], object]) -> Callable[[dict], None]:
    return structure(lambda s: change(next(r for r in s["inserted"] if r["name"] == name)))


def state(change: Callable[[dict], object]) -> Callable[[dict], None]:
    return lambda payload: change(payload["state_dict"])


def setitem(d: dict, key, value) -> None:
    d[key] = value


def spec(**values) -> Callable[[dict], None]:
    return lambda p: p["spec"].update(values)


MASK = "fc1.parametrizations.weight.0.mask"
INDEX = "fc1.parametrizations.weight.1.index"
CENTROIDS = "fc1.parametrizations.weight.1.centroids"
HUGE = 10**12

# (id, change of the payload, expected part of the message)
PAYLOAD_CASES = [
    ("state-dict-is-a-list", lambda p: setitem(p, "state_dict", list(p["state_dict"].values())), "state dict is a list"),
    ("state-dict-is-a-tensor", lambda p: setitem(p, "state_dict", torch.zeros(3)), "state dict is a Tensor"),
    ("state-value-not-tensor", state(lambda s: setitem(s, "fc1.bias", 3)), "'fc1.bias' is a int, not a tensor"),
    ("state-key-not-text", state(lambda s: setitem(s, 7, torch.zeros(1))), "state dict key 7 is not text"),
    ("state-sparse-tensor", state(lambda s: setitem(s, "fc1.bias", torch.zeros(6).to_sparse())), "not a dense tensor"),
    ("state-expanded-huge-mask", state(lambda s: setitem(s, MASK, torch.ones(1, dtype=torch.bool).expand(10**9, 10**9))),
     "claims shape [1000000000, 1000000000]"),
    ("state-expanded-huge-weight", state(lambda s: setitem(s, "fc2.bias", torch.zeros(1).expand(2**40))),
     "over 4 bytes of data"),
    ("structure-not-json", lambda p: setitem(p, "structure", "{not json"), "structure record is not valid JSON"),
    ("structure-not-text", lambda p: setitem(p, "structure", 12), "structure record is a int, not JSON text"),
    ("structure-list", lambda p: setitem(p, "structure", "[1, 2]"), "the record must be a table, got list"),
    ("structure-deep", lambda p: setitem(p, "structure", "[" * 100_000 + "]" * 100_000), "nested deeper than 64"),
    ("meta-json-bomb", lambda p: setitem(p, "meta", "[" + "[]," * 2_000_000 + "[]]"),
     "would build objects of more than 64 MiB"),
    ("meta-not-tables", lambda p: setitem(p, "meta", "[1, 2]"), "node metadata must be a table of tables"),
    ("meta-not-json", lambda p: setitem(p, "meta", "{"), "meta record is not valid JSON"),
    ("payload-extra-record", lambda p: setitem(p, "code", "os.system"), "unknown record 'code'"),
    ("payload-no-structure", lambda p: p.pop("structure"), "no 'structure' record"),
    ("payload-version-newline", lambda p: setitem(p, "version", "1\n2"), "has format version '1\\n2'"),
    ("structure-extra-key", structure(lambda s: setitem(s, "exec", "rm -rf /")), "unknown key 'exec'"),
    ("structure-missing-key", structure(lambda s: s.pop("inserted")), "lacks key 'inserted'"),
    ("structure-class-newline", structure(lambda s: setitem(s, "class", "A\nB")), "class must be a name, got 'A\\nB'"),
    ("ties-not-lists", structure(lambda s: setitem(s, "ties", [1])), "ties[0] must be a list"),
    ("ties-of-one", structure(lambda s: setitem(s, "ties", [["fc1.weight"]])), "ties[0] must be a list of two"),
    ("parametrizations-not-list", structure(lambda s: setitem(s, "parametrizations", {"a": 1})),
     "parametrizations must be a list, got dict"),
    ("parametrization-extra-key", structure(lambda s: s["parametrizations"][0].update(x=1)), "unknown key 'x'"),
    ("parametrization-no-chain", structure(lambda s: s["parametrizations"][0].pop("chain")), "lacks key 'chain'"),
    ("chain-empty", structure(lambda s: setitem(s["parametrizations"][0], "chain", [])), "chain must hold 1 to 8 entries"),
    ("chain-not-list", structure(lambda s: setitem(s["parametrizations"][0], "chain", "WeightMask")), "must be a list"),
    ("chain-unknown-class", chain(0, lambda p: setitem(p, "class", "os.system")), "unknown class 'os.system'"),
    ("chain-class-number", chain(0, lambda p: setitem(p, "class", 5)), "class must be text, got 5"),
    ("chain-spec-list", chain(0, lambda p: setitem(p, "spec", [1])), "spec must be a table, got list"),
    ("chain-no-spec", chain(0, lambda p: p.pop("spec")), "lacks key 'spec'"),
    ("mask-spec-extra-key", chain(0, spec(mask=[1, 2])), "'mask' is given both in the spec and as a tensor"),
    ("mask-spec-unknown-key", chain(0, spec(evil=1)), "unknown spec key 'evil' for a WeightMask"),
    ("mask-how-not-table", chain(0, spec(how=[1])), "how must be a table"),
    ("mask-how-target-text", chain(0, spec(how={"target": "x"})), "how.target must be a number"),
    ("kmeans-bits-huge", chain(1, spec(bits=10**9)), "bits must be an integer in [1, 16]"),
    ("kmeans-bits-text", chain(1, spec(bits="8")), "bits must be an integer in [1, 16], got '8'"),
    ("kmeans-bits-too-few", chain(1, spec(bits=1)), "4 centroids, expected 1 to 2"),
    ("fixed-point-width-huge", chain(2, spec(width=10**9)), "width must be an integer in [1, 16]"),
    ("fixed-point-width-negative", chain(2, spec(width=-3)), "width must be an integer in [1, 16], got -3"),
    ("fixed-point-frac-float", chain(2, spec(frac_width=2.5)), "frac_width must be an integer"),
    ("fixed-point-no-width", chain(2, lambda p: p["spec"].pop("width")), "a FixedPoint needs 'width'"),
    ("fixed-point-bool-width", chain(2, spec(width=True)), "width must be an integer"),
    ("parametrization-unknown-module", structure(lambda s: setitem(s["parametrizations"][0], "module", "nope")),
     "the model has no module 'nope'"),
    ("parametrization-unknown-tensor", structure(lambda s: setitem(s["parametrizations"][0], "tensor", "nope")),
     "the model has no parameter"),
    ("parametrization-buffer-path", structure(lambda s: setitem(s["parametrizations"][0], "module",
                                                                "fc1.parametrizations.weight")),
     "the model has no module 'fc1.parametrizations.weight'"),
    ("parametrization-module-slash", structure(lambda s: setitem(s["parametrizations"][0], "module", "../fc1")),
     "module must be a name"),
    ("parametrization-twice", structure(lambda s: s["parametrizations"].append(s["parametrizations"][0])),
     "is listed twice"),
    ("inserted-extra-key", inserted("fc2_act_prune", lambda r: r.update(code="x")), "unknown key 'code'"),
    ("inserted-no-user", inserted("fc2_act_prune", lambda r: r.pop("user")), "lacks key 'user'"),
    ("inserted-unknown-user", inserted("fc2_act_prune", lambda r: setitem(r, "user", "nowhere")),
     "inserted before unknown node 'nowhere'"),
    ("inserted-arg-out-of-range", inserted("fc2_act_prune", lambda r: setitem(r, "arg", 5)), "has no input 5"),
    ("inserted-arg-negative", inserted("fc2_act_prune", lambda r: setitem(r, "arg", -1)),
     "arg must be an input position"),
    ("inserted-over-a-layer", inserted("fc1_data_in_quantizer", lambda r: setitem(r, "name", "fc2")),
     "does not fit the model: the model has a tensor 'fc2.weight' that the file does not"),
    ("inserted-over-a-parameter", inserted("fc1_data_in_quantizer", lambda r: setitem(r, "name", "fc1.weight")),
     "the model already has 'fc1.weight'"),
    ("inserted-over-an-attribute", inserted("fc1_data_in_quantizer", lambda r: setitem(r, "name", "training")),
     "the model already has 'training'"),
    ("inserted-under-a-parameter", inserted("fc1_data_in_quantizer", lambda r: setitem(r, "name", "fc2.bias.x")),
     "the model already has 'fc2.bias'"),
    ("inserted-path-name", inserted("fc2_act_prune", lambda r: setitem(r, "name", "../../x")), "name must be a name"),
    ("inserted-twice", structure(lambda s: s["inserted"].append(dict(s["inserted"][0]))), "inserted twice"),
    ("inserted-inside-another", structure(lambda s: s["inserted"].append({**s["inserted"][0], "name": "fc1_data_in_quantizer.x"})),
     "clashes with a parametrization or another inserted module"),
    ("inserted-parametrizations", inserted("fc1_data_in_quantizer", lambda r: setitem(r, "name", "fc2.parametrizations.x")),
     "clashes with a parametrization"),
    ("act-prune-rank", inserted("fc2_act_prune", lambda r: r["spec"]["stages"][0].update(rank="evil")),
     "rank must be 'magnitude' or 'random'"),
    ("act-prune-seed-huge", inserted("fc2_act_prune", lambda r: r["spec"]["stages"][0].update(seed=2**70)),
     "seed must be a 64-bit integer"),
    ("act-prune-sparsity-nan", inserted("fc2_act_prune", lambda r: r["spec"]["stages"][0].update(sparsity=float("nan"))),
     "its structure record is refused: non-finite number NaN"),  # refused as JSON, before any spec is read
    ("act-prune-sparsity-huge", inserted("fc2_act_prune", lambda r: r["spec"]["stages"][0].update(sparsity=2.0)),
     "sparsity must be a number in [0, 1]"),
    ("act-prune-stages-text", inserted("fc2_act_prune", lambda r: r["spec"].update(stages="all")),
     "stages must be a list"),
    ("act-prune-channel-dim-huge", inserted("fc2_act_prune", lambda r: r["spec"].update(channel_dim=10**6)),
     "channel_dim must be an integer in [-64, 64]"),
    ("act-prune-unknown-class", inserted("fc2_act_prune", lambda r: setitem(r, "class", "subprocess.Popen")),
     "unknown class 'subprocess.Popen'"),
    ("quantizer-extra-tensor", state(lambda s: setitem(s, "fc1_data_in_quantizer.evil", torch.zeros(2))),
     "unexpected tensor 'evil' for a FixedPoint"),
    ("mask-wrong-shape", state(lambda s: setitem(s, MASK, torch.ones(3, 3, dtype=torch.bool))),
     "has shape [3, 3], the tensor it sits on [6, 8]"),
    ("mask-not-bool", state(lambda s: setitem(s, MASK, s[MASK].float())), "tensor mask must be bool, got float32"),
    ("mask-missing", state(lambda s: s.pop(MASK)), "a WeightMask needs 'mask'"),
    ("index-out-of-range", state(lambda s: setitem(s, INDEX, torch.full((6, 8), 200, dtype=torch.uint8))),
     "index values outside 0..3"),
    ("index-float", state(lambda s: setitem(s, INDEX, s[INDEX].float())), "tensor index must be int"),
    ("centroids-2d", state(lambda s: setitem(s, CENTROIDS, torch.zeros(2, 2))), "must have 1 dimension(s)"),
    ("centroids-too-many", state(lambda s: setitem(s, CENTROIDS, torch.zeros(70000))), "70000 centroids, expected"),
    ("stray-parametrization-tensor", state(lambda s: setitem(s, "fc1.parametrizations.weight.7.mask", torch.ones(1))),
     "belongs to no recorded parametrization"),
    ("channel-mask-2d", state(lambda s: setitem(s, "fc2_act_prune.channel_mask", torch.ones(2, 3, dtype=torch.bool))),
     "channel_mask must have 1 dimension(s)"),
    ("weight-wrong-shape", state(lambda s: setitem(s, "fc1.bias", torch.zeros(7))), "does not fit the model"),
]


def write(payload: dict, path: Path) -> Path:
    torch.save(payload, path)
    return path


def assert_refused(err: pytest.ExceptionInfo, path: Path, expected: str) -> None:
    msg = str(err.value)
    assert isinstance(err.value, ValueError), repr(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert expected in msg, msg


def state_of(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", PAYLOAD_CASES, ids=[c[0] for c in PAYLOAD_CASES])
def test_hostile_mz_payload(case, good, tmp_path):
    _, change, expected = case
    payload = copy.deepcopy(good)
    change(payload)
    path = write(payload, tmp_path / "hostile.mz")
    model = Tiny()
    before = state_of(model)
    with pytest.raises(ValueError) as err:
        load_graph(path, model=model)
    assert_refused(err, path, expected)
    # the model is as it was: no parametrization, no inserted module, the same weights
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert sorted(dict(model.named_modules())) == ["", "fc1", "fc2"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_good_file_of_a_user_model_needs_the_model(good, tmp_path):
    path = write(good, tmp_path / "good.mz")
    with pytest.raises(ValueError) as err:
        load_graph(path)
    assert_refused(err, path, "holds your own model (Tiny)")


# --------------------------------------------------------------------------- registry models, plain state dicts, Lightning

INFO = {"name": "fashion_mnist", "num_classes": 10, "in_channels": 1, "image_size": [28, 28]}


def registry_payload(**info) -> dict:
    """A machop file naming lenet300 with a (small, wrong) state dict: refused before the model is built."""
    s = {"model": "lenet300", "dataset_info": {**INFO, **info}, "class": "LeNet300", "ties": [], "inserted": [],
         "parametrizations": []}
    return {"format": "machop.pt", "version": 1, "structure": json.dumps(s), "state_dict": {"fc1.weight": torch.zeros(2, 2)}}


LENET5 = dict(model_name="lenet5", dataset_info=get_dataset_info("fashion_mnist"))

# (id, file name, payload, load_type, load_model keyword arguments, expected)
OTHER_CASES = [
    ("registry-huge-image", "r.pt", registry_payload(image_size=[100_000, 100_000]), "pt", {},
     "does not fit the model"),
    ("registry-huge-classes", "r.pt", registry_payload(num_classes=10**9), "pt", {}, "num_classes must be an integer"),
    ("registry-negative-channels", "r.pt", registry_payload(in_channels=-1), "pt", {}, "in_channels must be an integer"),
    ("registry-info-extra-key", "r.pt", registry_payload(depth=3), "pt", {}, "unknown key 'depth'"),
    ("registry-image-size-3d", "r.pt", registry_payload(image_size=[28, 28, 28]), "pt", {}, "image_size must be two"),
    ("registry-unknown-model", "r.pt", {**registry_payload(), "structure": json.dumps(
        {**json.loads(registry_payload()["structure"]), "model": "gpt5"})}, "pt", {}, "holds a 'gpt5', which is not"),
    ("plain-expanded-tensor", "p.pt", {"fc1.weight": torch.zeros(1).expand(HUGE)}, "pt", LENET5, "claims shape"),
    ("plain-other-architecture", "p.pt", {"fc1.weight": torch.zeros(3, 3)}, "pt", LENET5, "does not fit the model"),
    ("plain-list", "p.pt", [torch.zeros(2)], "pt", LENET5, "does not hold a state dict"),
    ("plain-mixed", "p.pt", {"a": torch.zeros(2), "b": "x"}, "pt", LENET5, "neither a machop file nor a plain state"),
    ("mz-of-plain-dict", "p.mz", {"a": torch.zeros(2)}, "mz", LENET5, "is not a machop mz file"),
    ("ckpt-state-dict-list", "l.ckpt", {"state_dict": [torch.zeros(2)]}, "pl", LENET5, "state dict is a list"),
    ("ckpt-no-state-dict", "l.ckpt", {"epoch": 3}, "pl", LENET5, "is not a Lightning checkpoint (no 'state_dict')"),
    ("ckpt-structure-not-json", "l.ckpt", {"state_dict": {}, "machop_structure": "{{"}, "pl", LENET5,
     "machop_structure record is not valid JSON"),
    ("ckpt-structure-list", "l.ckpt", {"state_dict": {}, "machop_structure": "[]"}, "pl", LENET5,
     "the record must be a table"),
    ("ckpt-structure-number", "l.ckpt", {"state_dict": {}, "machop_structure": 5}, "pl", LENET5, "not JSON text"),
    ("ckpt-prefix-clash", "l.ckpt", {"state_dict": {"model.a": torch.zeros(1), "a": torch.zeros(1)}}, "pl", LENET5,
     "holds both 'model.X' and 'X'"),
    ("ckpt-expanded", "l.ckpt", {"state_dict": {"model.fc1.weight": torch.zeros(1).expand(HUGE)}}, "pl", LENET5,
     "claims shape"),
]


@pytest.mark.parametrize("case", OTHER_CASES, ids=[c[0] for c in OTHER_CASES])
def test_hostile_registry_plain_and_lightning_files(case, tmp_path):
    _, name, payload, load_type, kwargs, expected = case
    path = write(payload, tmp_path / name)
    with pytest.raises(ValueError) as err:
        load_model(path, load_type, **kwargs)
    assert_refused(err, path, expected)


def test_tied_sites_with_different_chains(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    graph = MaseGraph(Tied(), context=PassContext())
    from machop.nn import compressible_weights
    (w,) = [w for w in compressible_weights(graph.model) if len(w.sites) == 2]
    apply_mask(w, torch.rand(4, 4) > 0.5)
    save_graph(graph, tmp_path / "t.mz", "mz")
    payload = torch.load(tmp_path / "t.mz", weights_only=True)
    s = json.loads(payload["structure"])
    s["parametrizations"][1]["chain"][0]["spec"] = {"how": {"method": "other"}}
    payload["structure"] = json.dumps(s)
    path = write(payload, tmp_path / "tied.mz")
    with pytest.raises(ValueError) as err:
        load_graph(path, model=Tied())
    assert_refused(err, path, "but recorded with another chain")


# --------------------------------------------------------------------------- archives written by hand


class _Storage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage: _Storage, size: tuple, stride: tuple):
        self.args = (storage, 0, size, stride, False, __import__("collections").OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def archive(pkl: bytes, records: dict[str, bytes], deflate: set[str] = frozenset()) -> bytes:
    """A zip laid out as torch.save lays it out, records stored unless named in ``deflate``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in {"data.pkl": pkl, "byteorder": b"little", **records, "version": b"3\n"}.items():
            kind = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            z.writestr(zipfile.ZipInfo(f"a/{name}"), data, compress_type=kind)
    return buf.getvalue()


def pickled(obj) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def views_pickle(n: int) -> bytes:
    """``{"w": [t, t, ...]}``: ``n`` distinct tensors, one 10-float storage, 5 pickle bytes each (memo reuse)."""
    out = bytearray(b"\x80\x02}X\x01\x00\x00\x00w](")
    out += b"ctorch._utils\n_rebuild_tensor_v2\nq\x00"
    out += b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\ntQ"
    out += b"K\x00K\n\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rtq\x01R"
    out += b"h\x00h\x01R" * (n - 1)
    return bytes(out + b"es.")


@functools.cache
def deflate_view_bomb() -> bytes:
    """15 KB that torch.load (without machop's checks) inflates into two million tensors: 1.1 GB and a minute."""
    return archive(views_pickle(2_000_000), {"data/0": bytes(40)}, deflate={"data.pkl"})


@functools.cache
def deflate_data_bomb() -> bytes:
    """About 100 KB holding one 100 MB deflated storage record."""
    n = 25_000_000
    return archive(pickled({"w": _Tensor(_Storage("0", n), (n,), (1,))}), {"data/0": bytes(4 * n)}, deflate={"data/0"})


def two_pickles() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/data.pkl", pickled({}))
        z.writestr("b/data.pkl", pickled({}))
    return buf.getvalue()


def lying_record_size() -> bytes:
    """A stored record whose central directory entry claims 1 GB."""
    data = bytearray(archive(pickled({"w": _Tensor(_Storage("0", 10), (10,), (1,))}), {"data/0": bytes(40)}))
    entry = data.find(b"PK\x01\x02")
    while entry != -1:  # the data/0 entry's uncompressed size (offset 24 of a central directory entry)
        name_len = struct.unpack_from("<H", data, entry + 28)[0]
        if data[entry + 46: entry + 46 + name_len] == b"a/data/0":
            struct.pack_into("<I", data, entry + 24, 10**9)
        entry = data.find(b"PK\x01\x02", entry + 4)
    return bytes(data)


# (id, file bytes or maker, expected)
ARCHIVE_CASES = [
    ("not-a-zip", b"\x00" * 10, "not a readable PyTorch weights file (not a zip archive"),
    ("text", b"hello, world\n" * 100, "not a zip archive"),
    ("legacy-pickle", pickle.dumps({"a": 1}), "not a zip archive"),
    ("truncated", lambda: archive(pickled({}), {})[:-30], "not a zip archive"),
    ("deflated-pickle", lambda: archive(pickled({}), {}, deflate={"data.pkl"}), "record 'a/data.pkl' is compressed"),
    ("deflated-data-bomb", deflate_data_bomb, "record 'a/data/0' is compressed"),
    ("deflated-view-bomb", deflate_view_bomb, "is compressed"),
    ("record-size-lie", lying_record_size, "record 'a/data/0' claims 1000000000 bytes that the file does not hold"),
    ("no-pickle", lambda: zip_without_pickle(), "0 data.pkl records, expected one"),
    ("two-pickles", two_pickles, "2 data.pkl records, expected one"),
    ("broken-pickle", lambda: archive(b"\x80\x02}q\x00X\xff\xff\xff\x7f", {}), "its data.pkl is broken"),
    ("storage-claims-1e9-floats", lambda: archive(pickled({"w": _Tensor(_Storage("0", 10**9), (10,), (1,))}),
                                                  {"data/0": bytes(40)}), "not a readable PyTorch weights file"),
    ("view-beyond-storage", lambda: archive(pickled({"w": _Tensor(_Storage("0", 10), (10**6,), (1,))}),
                                            {"data/0": bytes(40)}), "not a readable PyTorch weights file"),
    ("stored-view-bomb", lambda: archive(views_pickle(70_000), {"data/0": bytes(40)}),
     "would build objects of more than 64 MiB"),
    ("views-not-a-state-dict", lambda: archive(views_pickle(1000), {"data/0": bytes(40)}),
     "neither a machop file nor a plain state dict"),
]


def zip_without_pickle() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/version", "3\n")
    return buf.getvalue()


@pytest.mark.parametrize("case", ARCHIVE_CASES, ids=[c[0] for c in ARCHIVE_CASES])
def test_hostile_archives(case, tmp_path):
    _, content, expected = case
    path = tmp_path / "hostile.pt"
    path.write_bytes(content if isinstance(content, bytes) else content())
    with pytest.raises(ValueError) as err:
        load_model(path, "pt", **LENET5)
    assert_refused(err, path, expected)


# --------------------------------------------------------------------------- things that are not files


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.pt"
    os.mkfifo(path)
    return path


# (id, path maker, exception class, expected)
PATH_CASES = [
    ("missing", lambda d: d / "missing.pt", NoSuchFile, "no such file: "),
    ("under-a-file", lambda d: (d / "f").write_bytes(b"x") and d / "f" / "m.pt", NoSuchFile, "no such file: "),
    ("directory", lambda d: d, IsADirectory, " is a directory"),
    ("dev-zero", lambda d: Path("/dev/zero"), BadFileError, "/dev/zero is not a regular file (a character device)"),
    ("dev-null", lambda d: Path("/dev/null"), BadFileError, "is not a regular file (a character device)"),
    ("fifo", _fifo, BadFileError, "is not a regular file (a FIFO)"),
]


@pytest.mark.parametrize("case", PATH_CASES, ids=[c[0] for c in PATH_CASES])
@pytest.mark.parametrize("load_type", ["pt", "mz", "pl"])
def test_not_a_regular_file(case, load_type, tmp_path):
    _, make, cls, expected = case
    path = make(tmp_path)
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail(f"reading {path} blocked"))
    signal.alarm(10)
    try:
        with pytest.raises(cls) as err:
            load_model(path, load_type, **LENET5)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert_refused(err, path, expected)
    if cls is NoSuchFile:
        assert isinstance(err.value, FileNotFoundError)
    if cls is IsADirectory:
        assert isinstance(err.value, IsADirectoryError)


# --------------------------------------------------------------------------- memory


MEASURE = textwrap.dedent("""
    import resource, sys
    from machop.datasets import get_dataset_info
    from machop.ir.serialize import load_model
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path in sys.argv[1:]:
        try:
            load_model(path, "pt", model_name="lenet5", dataset_info=get_dataset_info("fashion_mnist"))
            print("LOADED", path)
        except ValueError as e:
            print("REFUSED", e)
    print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
""")


def test_worst_files_refused_within_memory_ceiling(tmp_path):
    """The worst crafted files found (each under 100 KB) are refused in a fresh process, its peak RSS growing < 200 MB.

    Without the checks, ``torch.load(weights_only=True)`` of the 15 KB view
    bomb took 1.1 GB and a minute; of the 97 KB data bomb, 100 MB.
    """
    files = {"views.pt": deflate_view_bomb(), "data.pt": deflate_data_bomb(),
             "stored-views.pt": archive(views_pickle(19_000), {"data/0": bytes(40)})}
    paths = []
    for name, data in files.items():
        assert len(data) < 100_000, (name, len(data))
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, *paths], capture_output=True, text=True, env=env,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("REFUSED") for line in lines) == 3, out.stdout
    growth_mb = int(lines[-1].split()[1]) / 1024
    assert growth_mb < 200, out.stdout
