"""int8 export: machop's fixed-point layers as integer operators onnxruntime runs with its int8 kernels.

The file is ONNX's QDQ form: every fixed-point layer's weight is stored as
int8 with its scale (``2**-frac_width``, per output channel where a batch
norm is folded in or the layer is per-channel), and every fixed-point input
as a ``QuantizeLinear`` / ``DequantizeLinear`` pair at ``2**-frac_width``,
zero point 0, so onnxruntime fuses ``DQ -> Conv/Gemm -> Q`` into
``QLinearConv`` / ``QGemm``. Nothing is re-calibrated: the integers and
scales are machop's own, and the file computes what machop's fake-quantized
model computes, but for

- the bias, added in int32 at the accumulator's scale (``s_x * s_w``): at
  most half of that step per output;
- a folded batch norm: its per-channel factor goes into the weight scale
  (the integers stay), its shift into the bias (float rounding).

Steps (torch side, on a copy):

1. a batch norm that only reads an int8 convolution's output is folded into it;
2. each int8 layer computes with ``fake_quantize_per_channel_affine`` of its
   weight (exported as ``QuantizeLinear -> DequantizeLinear``), each
   fixed-point input module becomes ``fake_quantize_per_tensor_affine``
   (narrower than 8 bits: clamped to its range first).

ONNX side, on the exported file:

3. ``QuantizeLinear`` of a constant weight becomes an int8 initializer;
4. a float bias of a layer whose input and weight are dequantized becomes an
   int32 initializer at ``s_x * s_w`` (onnxruntime's fused kernels take it so);
5. ``Relu`` feeding an input quantizer (through max-pooling, flatten or
   reshape) is absorbed: the quantizer moves above the Relu as uint8 with
   zero point 0 (saturation at 0 is the Relu) and an integer ``Clip`` to
   the quantizer's largest value, so the layer before it ends in a
   ``QuantizeLinear`` and fuses. ``q(relu(y)) == relu(q(y))`` and
   max-pooling commutes with rounding, so this is exact.

A layer stays float, and the export info says why, when it is not fixed
point (not quantized, k-means), is wider than 8 bits, is of a kind the
integer operators do not cover (only linear, conv1d and conv2d), or its
weight is shared between modules. A layer whose input is not fixed point
gets int8 weights (``DequantizeLinear``) and float arithmetic.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from machop.ir import MaseGraph
from machop.nn import FixedPoint, KMeansWeight, kind_of, quantizer_of
from machop.nn.fixed_point import ChannelFixedPoint

logger = logging.getLogger(__name__)

INT8_KINDS = ("linear", "conv1d", "conv2d")
MIN_OPSET = 13  # per-axis QuantizeLinear / DequantizeLinear


class QDQInput(nn.Module):
    """A fixed-point input (``width <= 8``) as int8 fake quantization: exported as ``QuantizeLinear -> DequantizeLinear``."""

    def __init__(self, width: int, frac_width: int):
        super().__init__()
        self.width, self.frac_width = int(width), int(frac_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 2.0**-self.frac_width
        qmin, qmax = -(2 ** (self.width - 1)), 2 ** (self.width - 1) - 1
        if self.width < 8:
            x = torch.clamp(x, qmin * scale, qmax * scale)
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)


class QDQLayer(nn.Module):
    """A linear or convolution whose weight goes through int8 fake quantization (per output channel, or per
    tensor where every channel has the same scale: one scale in the file)."""

    def __init__(self, inner: nn.Module, scale: torch.Tensor, kind: str):
        super().__init__()
        self.inner, self.kind = inner, kind
        self.uniform = bool((scale == scale[0]).all())
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero_point", torch.zeros(scale.numel(), dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uniform:
            w = torch.fake_quantize_per_tensor_affine(self.inner.weight, float(self.scale[0]), 0, -128, 127)
        else:
            w = torch.fake_quantize_per_channel_affine(self.inner.weight, self.scale, self.zero_point, 0, -128, 127)
        if self.kind == "linear":
            return F.linear(x, w, self.inner.bias)
        return self.inner._conv_forward(x, w, self.inner.bias)


def _weight_quantizer(module: nn.Module, name: str):
    from_chain = quantizer_of(module, name)
    if from_chain is not None:
        return from_chain
    chains = getattr(module, "parametrizations", None)
    if chains is not None and name in chains:
        return next((p for p in chains[name] if isinstance(p, ChannelFixedPoint)), None)
    return None


def int8_plan(graph: MaseGraph) -> tuple[dict[str, dict], list[dict]]:
    """Which layers of ``graph`` can be int8: ``({qualname: {"name", "type", "width", "frac_widths"}}, float layers
    with their reason)``. Read from the quantizers, before anything is folded."""
    plan, floats = {}, []
    for w in graph.weights():
        q = _weight_quantizer(w.module, w.tensor_name)
        if q is None:
            floats.append({"name": w.name, "reason": "not quantized"})
        elif isinstance(q, KMeansWeight):
            floats.append({"name": w.name, "reason": "k-means weight sharing (not fixed point): float arithmetic"})
        elif w.kind.name not in INT8_KINDS:
            floats.append({"name": w.name, "reason": f"int8 operators cover {', '.join(INT8_KINDS)}; a {w.kind.name} "
                                                     "stays float"})
        elif q.width > 8:
            floats.append({"name": w.name, "reason": f"{q.width}-bit fixed point: int8 kernels hold 8 bits at most"})
        elif w.tensor_name != "weight" or len(w.sites) > 1:
            floats.append({"name": w.name, "reason": "a weight shared between modules stays float"})
        elif getattr(w.module, "padding_mode", "zeros") != "zeros":
            floats.append({"name": w.name, "reason": f"padding_mode {w.module.padding_mode!r}: only zero padding"})
        else:
            fracs = q.frac_widths if isinstance(q, ChannelFixedPoint) else [q.frac_width] * w.stored().shape[0]
            plan[w.qualname] = {"name": w.name, "type": w.kind.name, "width": q.width, "frac_widths": list(fracs),
                                "per_channel": isinstance(q, ChannelFixedPoint)}
    return plan, floats


def _is_batchnorm(module: nn.Module | None) -> bool:
    kind = kind_of(module) if module is not None else None
    return (kind is not None and kind.flow == "norm" and getattr(module, "track_running_stats", False)
            and module.running_mean is not None and module.running_var is not None)


def _input_quantizer(model: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    src = node.args[0] if node.args else None
    if isinstance(src, fx.Node) and src.op == "call_module":
        m = model.get_submodule(src.target)
        if isinstance(m, (FixedPoint, QDQInput)):
            return m
    return None


def prepare(model: fx.GraphModule, plan: dict[str, dict]) -> list[dict]:
    """Turn ``model`` (a folded float32 copy) into the module the int8 file is exported from (see steps 1-2).

    Returns one row per int8 layer: ``name``, ``type``, ``bits``, ``scales``
    (``"per-tensor"`` / ``"per-channel"``), ``batchnorm`` (the folded one, or
    None, or why not), ``arithmetic`` (``"int8"``, or ``"float"`` with ``reason``).
    """
    rows = []
    users: dict[str, list[fx.Node]] = {}
    for node in model.graph.nodes:
        if node.op == "call_module":
            users.setdefault(str(node.target), []).append(node)
    for qualname, entry in plan.items():
        module = model.get_submodule(qualname)
        nodes = users.get(qualname, [])
        scale = torch.tensor([2.0**-f for f in entry["frac_widths"]], dtype=torch.float64)
        row = {"name": entry["name"], "type": entry["type"], "bits": entry["width"],
               "scales": "per-channel" if entry["per_channel"] else "per-tensor", "batchnorm": None}
        inputs = [_input_quantizer(model, n) for n in nodes]
        if nodes and all(q is not None and q.width <= 8 for q in inputs):
            row["arithmetic"] = "int8"
        else:
            row["arithmetic"] = "float"
            row["reason"] = ("its input is not fixed point of 8 bits or fewer: int8 weights, float arithmetic"
                             if nodes else "not called by the graph")
        bn_node = None
        if len(nodes) == 1 and entry["type"] != "linear" and len(nodes[0].users) == 1:
            user = next(iter(nodes[0].users))
            if user.op == "call_module" and len(users.get(str(user.target), [])) == 1:
                candidate = model.get_submodule(user.target)
                if _is_batchnorm(candidate):
                    bn_node = user
        with torch.no_grad():
            weight = module.weight.detach().double()
            shape = (-1,) + (1,) * (weight.dim() - 1)
            ints = torch.round(weight / scale.view(shape))
            bias = module.bias.detach().double() if module.bias is not None else torch.zeros(weight.shape[0],
                                                                                             dtype=torch.float64)
            if bn_node is not None:
                bn = model.get_submodule(bn_node.target)
                g = torch.rsqrt(bn.running_var.double() + bn.eps)
                if bn.weight is not None:
                    g = g * bn.weight.detach().double()
                shift = -bn.running_mean.double() * g + (bn.bias.detach().double() if bn.bias is not None else 0)
                sign = torch.where(g < 0, -1.0, 1.0)
                flipped = ints * sign.view(shape)
                if bool((flipped > 127).any()):
                    row["batchnorm"] = (f"{bn_node.target} not folded: a negative scale on a channel holding -128")
                    bn_node = None
                else:
                    ints = flipped
                    scale = torch.where(g == 0, scale, scale * g.abs())
                    weight = ints * scale.view(shape)
                    bias = bias * g + shift
                    row["batchnorm"] = str(bn_node.target)
            module.weight = nn.Parameter(weight.to(module.weight.dtype), requires_grad=False)
            module.bias = nn.Parameter(bias.to(module.weight.dtype), requires_grad=False)
        if bn_node is not None:
            bn_node.replace_all_uses_with(nodes[0])
            model.graph.erase_node(bn_node)
        _set_submodule(model, qualname, QDQLayer(module, scale, entry["type"]))
        rows.append(row)
    for node in model.graph.nodes:
        if node.op == "call_module":
            m = model.get_submodule(node.target)
            if isinstance(m, FixedPoint) and m.width <= 8:
                _set_submodule(model, str(node.target), QDQInput(m.width, m.frac_width))
    model.graph.lint()
    model.recompile()
    return rows


def _set_submodule(model: nn.Module, qualname: str, module: nn.Module) -> None:
    parent, _, name = qualname.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


# --------------------------------------------------------------------------- ONNX rewriting


class _Graph:
    """Producers, consumers and constants of an ONNX graph, for local rewrites."""

    def __init__(self, onnx_model):
        import onnx
        from onnx import numpy_helper

        self.onnx, self.numpy_helper, self.model = onnx, numpy_helper, onnx_model
        self.g = onnx_model.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.counter = 0

    def refresh(self) -> None:
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in self.g.output}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return self.numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Identity":
            return self.const(node.input[0])
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self.numpy_helper.to_array(a.t)
        return None

    def add_init(self, array: np.ndarray, hint: str) -> str:
        self.counter += 1
        name = f"{hint}_{self.counter}"
        tensor = self.numpy_helper.from_array(array, name)
        self.g.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}_{self.counter}"

    def attr(self, node, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return self.onnx.helper.get_attribute_value(a)
        return default

    def single_consumer(self, name: str) -> bool:
        return len(self.consumers.get(name, [])) == 1 and name not in self.outputs

    def tidy(self) -> None:
        """Drop nodes and initializers nothing reads, and sort the nodes topologically."""
        changed = True
        while changed:
            self.refresh()
            keep = [n for n in self.g.node if any(o in self.consumers or o in self.outputs for o in n.output)]
            changed = len(keep) != len(self.g.node)
            del self.g.node[:]
            self.g.node.extend(keep)
        used = {i for n in self.g.node for i in n.input} | self.outputs
        kept = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(kept)
        self.inits = {t.name: t for t in kept}
        known = {i.name for i in self.g.input} | set(self.inits) | {""}
        nodes = list(self.g.node)
        waiting = [sum(1 for i in set(n.input) if i not in known) for n in nodes]
        readers: dict[str, list[int]] = {}
        for k, n in enumerate(nodes):
            for i in set(n.input):
                if i not in known:
                    readers.setdefault(i, []).append(k)
        ready = [k for k, w in enumerate(waiting) if w == 0]
        ordered = []
        while ready:
            k = ready.pop(0)
            ordered.append(nodes[k])
            for o in nodes[k].output:
                for r in readers.pop(o, []):
                    waiting[r] -= 1
                    if waiting[r] == 0:
                        ready.append(r)
        if len(ordered) != len(nodes):
            raise RuntimeError("export: the int8 rewrite left a cycle in the ONNX graph")
        del self.g.node[:]
        self.g.node.extend(ordered)
        self.refresh()


def _fold_weight_quantizers(G: _Graph) -> int:
    """Step 3: ``QuantizeLinear`` of a constant -> that constant in int8 (the ``DequantizeLinear`` reads it)."""
    count = 0
    for node in list(G.g.node):
        if node.op_type != "QuantizeLinear":
            continue
        x = G.const(node.input[0])
        if x is None:
            continue
        scale = G.const(node.input[1]).astype(np.float64)
        zp = G.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        axis = G.attr(node, "axis", 1)
        if scale.ndim == 1 and x.ndim > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zp_b = scale.reshape(shape), zp.reshape(shape).astype(np.int64)
        else:
            zp_b = zp.astype(np.int64)
        info = np.iinfo(zp.dtype)
        ints = np.clip(np.rint(x.astype(np.float64) / scale) + zp_b, info.min, info.max).astype(zp.dtype)
        name = G.add_init(ints, f"{node.input[0].strip('/:.').replace('/', '_')}_int8")
        for consumer in G.consumers.get(node.output[0], []):
            for i, inp in enumerate(consumer.input):
                if inp == node.output[0]:
                    consumer.input[i] = name
        G.g.node.remove(node)
        count += 1
    G.tidy()
    return count


def _dq_scale(G: _Graph, name: str) -> np.ndarray | None:
    node = G.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    return G.const(node.input[1])


def _quantize_biases(G: _Graph) -> int:
    """Step 4: a float bias of a Conv/Gemm whose input and weight are dequantized -> int32 at ``s_x * s_w``."""
    count = 0
    for node in list(G.g.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        sx, sw, bias = _dq_scale(G, node.input[0]), _dq_scale(G, node.input[1]), G.const(node.input[2])
        if sx is None or sw is None or bias is None or sx.size != 1 or G.producer.get(node.input[1]) is None:
            continue
        if node.op_type == "Gemm" and (G.attr(node, "transB", 0) != 1 or G.attr(node, "transA", 0) != 0
                                       or G.attr(node, "alpha", 1.0) != 1.0 or G.attr(node, "beta", 1.0) != 1.0):
            continue
        scale = (sx.astype(np.float64).reshape(()) * sw.astype(np.float64)).astype(np.float32)
        ints = np.clip(np.rint(bias.astype(np.float64) / scale.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
        q_name = G.add_init(ints, "bias_int32")
        s_name = G.add_init(scale, "bias_scale")
        z_name = G.add_init(np.zeros(scale.shape, np.int32), "bias_zero_point")
        out = G.fresh("bias_dequantized")
        G.g.node.append(G.onnx.helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out], axis=0,
                                                name=G.fresh("bias_dq")))
        node.input[2] = out
        count += 1
    G.tidy()
    return count


PASS_THROUGH = ("MaxPool", "Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze")


def _absorb_relus(G: _Graph) -> int:
    """Step 5: ``y -> Relu -> (MaxPool | Flatten | Reshape)* -> [Clip] -> Q(int8, s) -> DQ`` becomes
    ``y -> Q(uint8, s) -> Clip(0, qmax) -> DQ -> (MaxPool | ...)* -> Q(uint8, s) -> DQ``: exact, and ``y``'s
    layer ends in a QuantizeLinear."""
    count = 0
    while _absorb_one_relu(G):
        count += 1
        G.tidy()
    return count


def _absorb_one_relu(G: _Graph) -> bool:
    """The first rewrite of `_absorb_relus` the graph allows, if any (node lists are re-read after each one:
    `_Graph.tidy` rebuilds them)."""
    helper = G.onnx.helper
    for q in [n for n in G.g.node if n.op_type == "QuantizeLinear"]:
        zp = G.const(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        scale = G.const(q.input[1])
        if zp is None or zp.dtype != np.int8 or zp.size != 1 or int(zp.reshape(())) != 0 or scale is None \
                or scale.size != 1:
            continue
        dqs = G.consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        qmax = 127
        cur = G.producer.get(q.input[0])
        if cur is not None and cur.op_type == "Clip" and G.single_consumer(cur.output[0]):
            hi = G.const(cur.input[2]) if len(cur.input) > 2 and cur.input[2] else None
            lo = G.const(cur.input[1]) if len(cur.input) > 1 and cur.input[1] else None
            if hi is None or lo is None:
                continue
            s = float(scale.reshape(()))
            qmax = round(float(hi.reshape(())) / s)
            if float(lo.reshape(())) > 0 or qmax > 127 or qmax < 0:
                continue
            cur = G.producer.get(cur.input[0])
        chain = []
        while cur is not None and cur.op_type in PASS_THROUGH and G.single_consumer(cur.output[0]):
            chain.append(cur)
            cur = G.producer.get(cur.input[0])
        if cur is None or cur.op_type != "Relu" or not G.single_consumer(cur.output[0]):
            continue
        relu = cur
        if any(n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1] for n in chain):
            continue
        u8_zero = G.add_init(np.zeros((), np.uint8), "uint8_zero")
        quantized, clipped, restored = G.fresh("relu_q"), G.fresh("relu_clip"), G.fresh("relu_dq")
        G.g.node.append(helper.make_node("QuantizeLinear", [relu.input[0], q.input[1], u8_zero], [quantized],
                                         name=G.fresh("relu_quantize")))
        last = quantized
        if qmax < 255:
            lo_name = G.add_init(np.zeros((), np.uint8), "clip_min")
            hi_name = G.add_init(np.array(qmax, np.uint8), "clip_max")
            G.g.node.append(helper.make_node("Clip", [quantized, lo_name, hi_name], [clipped], name=G.fresh("clip_u8")))
            last = clipped
        first_user = chain[-1] if chain else None
        if first_user is None:  # the Relu fed the quantizer directly: its DQs read the clipped uint8 now
            for d in dqs:
                d.input[0] = last
                d.input[2] = u8_zero
        else:
            G.g.node.append(helper.make_node("DequantizeLinear", [last, q.input[1], u8_zero], [restored],
                                             name=G.fresh("relu_dequantize")))
            first_user.input[0] = restored
            q.input[0] = chain[0].output[0]
            q.input[2] = u8_zero
            for d in dqs:
                d.input[2] = u8_zero
        G.g.node.remove(relu)
        return True
    return False


def rewrite(data: bytes) -> tuple[bytes, dict]:
    """Steps 3-5 on an exported file; returns the new file and what changed (counts, the file's op types)."""
    import onnx

    model = onnx.load_from_string(data)
    G = _Graph(model)
    G.tidy()
    counts = {"weights_int8": _fold_weight_quantizers(G), "biases_int32": _quantize_biases(G),
              "relus_absorbed": _absorb_relus(G)}
    counts["ops"] = dict(sorted(Counter(n.op_type for n in G.g.node).items()))
    counts["integer_kernels"], counts["float_kernels"] = _kernels(G)
    onnx.checker.check_model(model)
    return model.SerializeToString(), counts


def _kernels(G: _Graph) -> tuple[list[str], list[dict]]:
    """Which Conv/Gemm nodes with dequantized input and weight onnxruntime can run as integer kernels: a Conv
    needs its output quantized (``DQ -> Conv -> Q``: QLinearConv); a Gemm fuses either way (QGemm)."""
    integer, floats = [], []
    for n in G.g.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2:
            continue
        x, w = G.producer.get(n.input[0]), G.producer.get(n.input[1])
        if x is None or w is None or x.op_type != "DequantizeLinear" or w.op_type != "DequantizeLinear":
            continue
        users = G.consumers.get(n.output[0], [])
        if n.op_type == "Gemm" or (users and all(u.op_type == "QuantizeLinear" for u in users)):
            integer.append(n.name)
        else:
            floats.append({"node": n.name, "reason": "its output reaches no quantizer (e.g. a residual addition "
                                                      "follows): onnxruntime runs it in float with int8 weights"})
    return integer, floats


def step_of(fracs: list[int]) -> float:
    """The coarsest weight step of a layer (for reports)."""
    return max(2.0**-f for f in fracs) if fracs else math.nan


# --------------------------------------------------------------------------- k-means layers as codebook + indices


def kmeans_layers(graph: MaseGraph) -> list[dict]:
    """Every k-means weight of ``graph``: ``name``, ``value`` (the weight as the model uses it), ``codebook`` and
    ``index`` such that ``codebook[index] == value`` (pruned positions index an extra 0 entry)."""
    out = []
    for w in graph.weights():
        q = quantizer_of(w.module, w.tensor_name)
        if not isinstance(q, KMeansWeight):
            continue
        with torch.no_grad():
            value = w.value().detach().float().cpu()
            book = q.codebook_values().detach().float().cpu()
            index = q.index.long().cpu()
            mask = q.mask.cpu()
            if not bool(mask.all()):
                index = torch.where(mask, index, torch.full_like(index, book.numel()))
                book = torch.cat([book, torch.zeros(1)])
        out.append({"name": w.name, "value": value.numpy(), "codebook": book.numpy(), "index": index.numpy()})
    return out


def gather_kmeans(data: bytes, layers: list[dict]) -> tuple[bytes, list[dict], list[dict]]:
    """Store each k-means weight found in the file (an initializer equal to it) as uint8 (or uint16) indices plus
    its codebook: ``Gather(codebook, Cast(indices))``. Returns the file, the layers stored so and those not found."""
    import onnx

    model = onnx.load_from_string(data)
    G = _Graph(model)
    G.tidy()
    by_shape: dict[tuple, list[str]] = {}
    for name, t in G.inits.items():
        by_shape.setdefault(tuple(t.dims), []).append(name)
    stored, missing = [], []
    helper = onnx.helper
    for layer in layers:
        value = layer["value"]
        found = [n for n in by_shape.get(tuple(value.shape), [])
                 if n in G.inits and np.array_equal(G.numpy_helper.to_array(G.inits[n]), value)]
        if not found:
            missing.append({"name": layer["name"], "reason": "its weight is not a constant of the exported file "
                                                             "(folded with another tensor by the exporter)"})
            continue
        book = layer["codebook"].astype(np.float32)
        dtype = np.uint8 if book.size <= 256 else np.uint16
        index_name = G.add_init(layer["index"].astype(dtype), f"{layer['name']}_index")
        book_name = G.add_init(book, f"{layer['name']}_codebook")
        cast, gathered = G.fresh(f"{layer['name']}_index_int64"), G.fresh(f"{layer['name']}_weight")
        G.g.node.append(helper.make_node("Cast", [index_name], [cast], to=onnx.TensorProto.INT64,
                                         name=G.fresh("kmeans_cast")))
        G.g.node.append(helper.make_node("Gather", [book_name, cast], [gathered], axis=0,
                                         name=G.fresh("kmeans_gather")))
        for old in found:
            for node in G.g.node:
                for i, inp in enumerate(node.input):
                    if inp == old:
                        node.input[i] = gathered
        stored.append({"name": layer["name"], "codebook": int(book.size), "index": np.dtype(dtype).name})
    G.tidy()
    onnx.checker.check_model(model)
    return model.SerializeToString(), stored, missing
