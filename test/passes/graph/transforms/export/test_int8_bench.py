"""bench/int8_bench.py's pieces on a small CNN: machop int8 and onnxruntime's quantize_static of the same model,
measured as the benchmark measures them (the full run trains VGG7 and ResNet-18: minutes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from zoo.models import ShrinkCNN  # noqa: E402

BENCH = Path(__file__).resolve().parents[5] / "bench"


@pytest.fixture(scope="module")
def int8_bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("int8_bench", BENCH / "int8_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_machop_int8_and_the_ort_peer_side_by_side(tmp_path, int8_bench):
    bench = int8_bench
    torch.manual_seed(0)
    model = ShrinkCNN(width=32).eval()
    g = torch.Generator().manual_seed(0)
    calib = torch.randn(32, 1, 8, 8, generator=g)
    test = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    fp32, ours, peer = tmp_path / "fp32.onnx", tmp_path / "int8.onnx", tmp_path / "peer.onnx"
    bench.sb.export_onnx(model, calib[:8], fp32)
    m = bench.machop_int8(model, calib, calib[:8], ours)
    bench.ort_static(fp32, calib, peer)
    assert all(r["arithmetic"] == "int8" for r in m["export"]["int8"]["layers"])
    assert m["quantize"]["layers"][0]["data_in_max_abs"] == pytest.approx(float(calib.abs().max()))
    sessions = {k: bench.sb.ort_session(p, 1) for k, p in {"fp32": fp32, "ours": ours, "peer": peer}.items()}
    # the int8 file computes what machop's fake-quantized model computes: the same predictions
    with torch.no_grad():
        fake = torch.cat([m["graph"].model(x).argmax(1) for x, _ in test])
    name = sessions["ours"].get_inputs()[0].name
    got = torch.cat([torch.from_numpy(sessions["ours"].run(None, {name: x.numpy()})[0]).argmax(1) for x, _ in test])
    assert float((got == fake).float().mean()) >= 0.9
    accs = {k: bench.ort_accuracy(s, test) for k, s in sessions.items()}
    assert all(0 <= a <= 1 for a in accs.values())
    assert ours.stat().st_size <= 1.1 * peer.stat().st_size and ours.stat().st_size <= 0.4 * fp32.stat().st_size
    times = bench.latency(sessions, [1, 4], rounds=1, warmup=0, call_seconds=0.0, shape=(1, 8, 8))
    assert set(times) == {1, 4} and all(len(t) == 1 and t[0] > 0 for b in times.values() for t in b.values())
    fixed = bench.fixed_8_4_accuracy(model, calib[:8], test)
    assert 0 <= fixed["test_acc"] <= 1 and fixed["zeroed_layers"] >= 0
