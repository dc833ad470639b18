"""A file's load type, model and data set are read from its own bytes (`machop.actions.opening.peek`)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from machop.actions.opening import peek
from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, PassContext, save_graph
from machop.ir.mchz import encode_model
from machop.ir.serialize import describe_structure
from machop.models import get_model
from machop.passes.graph.transforms.quantize import quantize_transform_pass

from machop.cli import main

from test_cli import run_cli


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``ch ARGV``."""
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def registry_graph(name: str, dataset: str = "fashion_mnist") -> MaseGraph:
    torch.manual_seed(0)
    info = get_dataset_info(dataset)
    return MaseGraph(get_model(name, info), context=PassContext(model_name=name, dataset_info=info))


def write(kind: str, graph: MaseGraph, path) -> None:
    """``graph`` as a file of load type ``kind`` (``plain``: a bare state dict from any tool)."""
    state = graph.model.state_dict()
    if kind in ("mz", "pt"):
        save_graph(graph, path, kind)
    elif kind == "plain":
        torch.save(state, path)
    elif kind == "pl":  # as Lightning writes it, with the structure machop's module adds
        torch.save({"epoch": 0, "pytorch-lightning_version": "2.4.0", "state_dict": {f"model.{k}": v for k, v in
                                                                                       state.items()},
                    "machop_structure": json.dumps(describe_structure(graph))}, path)
    elif kind == "huffman":
        graph, _ = quantize_transform_pass(graph, {"by": "type", "default": {"config": {"name": "kmeans",
                                                                                     "weight_bits": 4}}})
        path.write_bytes(encode_model(graph)[0])


@pytest.mark.parametrize("kind, expected", [
    ("mz", ("mz", "lenet300", "mnist")),
    ("pt", ("pt", "lenet300", "mnist")),
    ("pl", ("pl", "lenet300", "mnist")),
    ("plain", ("pt", None, None)),
    ("huffman", ("huffman", "lenet300", "mnist")),
])
def test_peek_reads_type_model_and_dataset(kind, expected, tmp_path):
    path = tmp_path / "file.bin"  # the name says nothing
    write(kind, registry_graph("lenet300", "mnist"), path)
    facts = peek(path)
    assert (facts.load_type, facts.model, facts.dataset) == expected


def test_peek_never_runs_the_pickle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    class Boom:
        def __reduce__(self):
            return (exec, ("open('ran', 'w').write('x')",))

    torch.save({"state_dict": {}, "x": Boom()}, tmp_path / "evil.ckpt")
    assert peek(tmp_path / "evil.ckpt").load_type == "pl"
    assert not (tmp_path / "ran").exists()


def _test_line(out: str) -> tuple[str, str]:
    return re.search(r"test_acc (\S+)", out).group(1), re.search(r"test_loss (\S+)", out).group(1)


@pytest.mark.parametrize("kind", ["mz", "pt", "pl", "plain", "huffman"])
def test_ch_test_without_load_type_equals_with_it(kind, tmp_path, monkeypatch, capsys):
    """The oracle: the same file with its --load-type spelled out."""
    monkeypatch.chdir(tmp_path)
    write(kind, registry_graph("lenet5"), tmp_path / "m.bin")
    base = ["test", "--load", "m.bin", "--test-limit", "64", "--no-progress"]
    code, inferred, err = run(base, capsys)
    assert code == 0, err
    code, spelled_out, err = run([*base, "--load-type", "pt" if kind == "plain" else kind], capsys)
    assert code == 0, err
    assert _test_line(inferred) == _test_line(spelled_out)


def test_the_model_comes_from_the_file_unless_named(tmp_path, monkeypatch, capsys):
    """A lenet300 .mchz opens without --model (the default is lenet5); naming another model is refused."""
    monkeypatch.chdir(tmp_path)
    write("huffman", registry_graph("lenet300"), tmp_path / "m.mchz")
    code, err = run_cli(["test", "--load", "m.mchz", "--test-limit", "32", "--no-progress"], capsys)
    assert code == 0, err
    code, err = run_cli(["test", "lenet5", "--load", "m.mchz", "--no-progress"], capsys)
    assert code == 2 and "MODEL" not in err and "file holds a lenet300, not the lenet5 asked for" in err
