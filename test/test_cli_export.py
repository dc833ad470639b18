"""`ch export`: a file machop made, of any load type, as an ONNX file; type and model read from the file."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, PassContext, load_graph, save_graph
from machop.ir.mchz import encode_model, load_compressed
from machop.models import get_model
from machop.passes.graph import REGISTRY
from machop.passes.graph.transforms.prune import prune_transform_pass
from machop.passes.graph.transforms.quantize import quantize_transform_pass

from test_cli import run_cli

ort = pytest.importorskip("onnxruntime")


@functools.cache
def compressed_graph(name: str) -> MaseGraph:
    """A registry model, pruned and 4-bit k-means quantized."""
    torch.manual_seed(0)
    info = get_dataset_info("fashion_mnist")
    graph = MaseGraph(get_model(name, info), context=PassContext(model_name=name, dataset_info=info))
    graph, _ = prune_transform_pass(graph, {"weight": {"sparsity": 0.8}})
    graph, _ = quantize_transform_pass(graph, {"by": "type", "default": {"config": {"name": "kmeans",
                                                                                 "weight_bits": 4}}})
    return graph


def onnx_outputs(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("kind", ["mchz", "mz"])
def test_export_infers_type_and_model_and_matches_the_model(kind, tmp_path, monkeypatch, capsys):
    """No --model, no --load-type: a lenet300 file (not the default lenet5) exports, and onnxruntime's outputs
    match the model machop opens from the same file."""
    monkeypatch.chdir(tmp_path)
    graph = compressed_graph("lenet300")
    if kind == "mchz":
        (tmp_path / "m.mchz").write_bytes(encode_model(graph)[0])
    else:
        save_graph(graph, tmp_path / "m.mz", "mz")
    code, err = run_cli(["export", "--load", f"m.{kind}", "--output", "out/m.onnx", "--no-progress"], capsys)
    assert code == 0, err
    opened = load_compressed("m.mchz") if kind == "mchz" else load_graph("m.mz")
    assert opened.context.model_name == "lenet300"
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = opened.model.eval()(x).numpy()
    np.testing.assert_allclose(onnx_outputs(tmp_path / "out" / "m.onnx", x), expected, rtol=1e-4, atol=1e-5)
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "m.onnx"]  # nothing else written


def test_int8_reaches_the_export_pass_as_its_argument(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.mchz").write_bytes(encode_model(compressed_graph("lenet5"))[0])
    seen = []
    entry = REGISTRY["export"]

    def spy(graph, pass_args=None):
        seen.append(dict(pass_args))
        return entry.fn(graph, {k: v for k, v in pass_args.items() if k != "int8"} | {"check": False})

    monkeypatch.setitem(REGISTRY, "export", dataclasses.replace(entry, fn=spy, parse=lambda t, p: None,
                                                                check=lambda *a: None))
    code, err = run_cli(["export", "--load", "m.mchz", "--output", "m.onnx", "--int8", "--no-progress"], capsys)
    assert code == 0, err
    assert seen == [{"path": "m.onnx", "int8": True}]


def test_a_model_named_on_the_command_line_must_be_the_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.mchz").write_bytes(encode_model(compressed_graph("lenet5"))[0])
    code, err = run_cli(["export", "lenet300", "--load", "m.mchz", "--output", "m.onnx", "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and "file holds a lenet5, not the lenet300 asked for" in err
    assert not (tmp_path / "m.onnx").exists()
