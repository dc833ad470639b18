"""What a layer type means, in one place: its weights, its channels, how to slice it, its MACs, how ops pass channels.

`LAYERS` is the one table of module types machop knows. Each `LayerKind`
says which of a module's tensors are weights to compress, which weight
dimensions index output and input channels, the attributes that hold its
channel counts, how the channel analysis treats it (``flow``: ``"mix"``
for a layer that reads channels and writes new ones, ``"norm"`` for one
that acts per channel), its MACs and its defaults. Passes ask this module
(`kind_of`, `channels`, `sliced`, `macs`, `module_flow`...), never the
module classes. Adding a layer type is one `LayerKind` entry.

`module_flow`, `function_flow` and `method_flow` say how the other ops
pass channels on (one `OPS` table): ``through`` (elementwise, the channels
are unchanged), ``pool`` (per channel, over the other dimensions),
``flatten``, ``reduce``, ``binary`` (operands' channels meet: a residual
``add``), ``cat``, ``reshape``, ``ignore`` (shape queries); None means the
op is not understood.
"""

from __future__ import annotations

import copy
import math
import operator
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


def _weight(module: nn.Module) -> list[str]:
    return ["weight"]


def _no_weights(module: nn.Module) -> list[str]:
    return []


def has_tensor(module: nn.Module, name: str) -> bool:
    """True if ``module.name`` is a parameter (plain or parametrized) that is not None."""
    if parametrize.is_parametrized(module, name):
        return True
    return module._parameters.get(name) is not None


def stored(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor held for ``module.name``: the original under a parametrization, else the parameter."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return module._parameters[name]


def _attention(module: nn.Module) -> list[str]:
    own = [n for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight") if has_tensor(module, n)]
    return own + ["out_proj.weight"]


def _recurrent(module: nn.Module) -> list[str]:
    return [n for n in module._flat_weights_names if n.startswith("weight_")]


Shape = tuple[int, ...]


def _linear_macs(m: nn.Module, in_shape: Shape, out_shape: Shape) -> int:
    return math.prod(out_shape[1:]) * m.in_features


def _conv_macs(m: nn.Module, in_shape: Shape, out_shape: Shape) -> int:
    return math.prod(out_shape[1:]) * (m.in_channels // m.groups) * math.prod(m.kernel_size)


def _conv_transpose_macs(m: nn.Module, in_shape: Shape, out_shape: Shape) -> int:
    return math.prod(in_shape[1:]) * (m.out_channels // m.groups) * math.prod(m.kernel_size)


def _bilinear_macs(m: nn.Module, in_shape: Shape, out_shape: Shape) -> int:
    return math.prod(out_shape[1:]) * m.in1_features * m.in2_features


Flow = Literal["mix", "norm"]


@dataclass(frozen=True)
class LayerKind:
    """One module type machop knows.

    Attributes:
        name: the MASE-style op name configs use (``conv2d``, ``mha``, ...).
        classes: the module classes of this kind (subclasses included).
        weights: the names of the module's weight tensors to compress
            (``"out_proj.weight"`` names a child's tensor the kind owns);
            none for a kind machop only follows (batch norm).
        channel_dim: the weight dimension indexing output channels, or None
            where channelwise pruning means nothing (embeddings, attention, RNNs).
        in_dim: the weight dimension indexing input channels (per group), or None.
        kernels: True where ``weight[a, b]`` is a kernel (convolutions).
        input_channel_dim: the channel dimension of the layer's input, for
            activation pruning and channel following; None where the input
            is not prunable (token indices).
        channel_attrs: the attributes holding the output and input channel
            counts (``("out_features", "in_features")``); one for a per-channel layer.
        flow: how channels pass the layer: ``"mix"`` (reads input channels,
            writes new output channels: convolutions, Linear), ``"norm"``
            (per channel: batch norm), None (not followed: a channel reaching
            it is left alone).
        macs: multiply-accumulates of one call at batch 1 from its input and
            output shapes, or None where not counted.
        kmeans_bits: the default k-means code width (Deep Compression: 8 for
            convolutions, 5 for the rest).
        aliases: other names accepted for ``name``.
    """

    name: str
    classes: tuple[type[nn.Module], ...]
    weights: Callable[[nn.Module], list[str]] = _weight
    channel_dim: int | None = None
    in_dim: int | None = None
    kernels: bool = False
    input_channel_dim: int | None = None
    channel_attrs: tuple[str, ...] = ()
    flow: Flow | None = None
    macs: Callable[[nn.Module, Shape, Shape], int] | None = None
    kmeans_bits: int = 5
    aliases: tuple[str, ...] = ()

    @property
    def compressed(self) -> bool:
        """True for a kind whose weights machop compresses."""
        return self.weights is not _no_weights


def _conv(name: str, cls: type[nn.Module]) -> LayerKind:
    return LayerKind(name, (cls,), channel_dim=0, in_dim=1, kernels=True, input_channel_dim=1,
                     channel_attrs=("out_channels", "in_channels"), flow="mix", macs=_conv_macs, kmeans_bits=8)


def _conv_transpose(name: str, cls: type[nn.Module]) -> LayerKind:
    return LayerKind(name, (cls,), channel_dim=1, in_dim=0, kernels=True, input_channel_dim=1,
                     channel_attrs=("out_channels", "in_channels"), macs=_conv_transpose_macs, kmeans_bits=8)


def _norm(name: str, cls: type[nn.Module]) -> LayerKind:
    return LayerKind(name, (cls,), _no_weights, channel_attrs=("num_features",), flow="norm")


LAYERS: tuple[LayerKind, ...] = (
    LayerKind("linear", (nn.Linear,), channel_dim=0, in_dim=1, input_channel_dim=-1,
              channel_attrs=("out_features", "in_features"), flow="mix", macs=_linear_macs),
    _conv("conv1d", nn.Conv1d),
    _conv("conv2d", nn.Conv2d),
    _conv("conv3d", nn.Conv3d),
    _conv_transpose("convtranspose1d", nn.ConvTranspose1d),
    _conv_transpose("convtranspose2d", nn.ConvTranspose2d),
    _conv_transpose("convtranspose3d", nn.ConvTranspose3d),
    LayerKind("bilinear", (nn.Bilinear,), channel_dim=0, macs=_bilinear_macs),
    LayerKind("embedding", (nn.Embedding, nn.EmbeddingBag)),
    LayerKind("mha", (nn.MultiheadAttention,), _attention, input_channel_dim=-1, aliases=("attention",)),
    LayerKind("lstm", (nn.LSTM,), _recurrent, input_channel_dim=-1),
    LayerKind("gru", (nn.GRU,), _recurrent, input_channel_dim=-1),
    LayerKind("rnn", (nn.RNN,), _recurrent, input_channel_dim=-1),
    _norm("batchnorm1d", nn.BatchNorm1d),
    _norm("batchnorm2d", nn.BatchNorm2d),
    _norm("batchnorm3d", nn.BatchNorm3d),
)

PARAMETER = LayerKind("parameter", ())
"""A floating parameter of two or more dimensions the graph uses directly (``F.linear(x, self.w)``,
``torch.einsum(..., self.w)``): elementwise pruning and weight sharing apply; it has no known channels."""

KINDS: tuple[LayerKind, ...] = (*(k for k in LAYERS if k.compressed), PARAMETER)
"""The kinds whose weights machop compresses, in the order configs list them."""

KIND_NAMES: dict[str, LayerKind] = {n: k for k in KINDS for n in (k.name, *k.aliases)}
"""Every name a config may use for a compressed kind (aliases included) → the kind."""


def kind_of(module: nn.Module) -> LayerKind | None:
    """The entry of `LAYERS` for ``module``, or None if machop does not know its type."""
    return next((k for k in LAYERS if isinstance(module, k.classes)), None)


def compressed_kind(module: nn.Module) -> LayerKind | None:
    """The kind of ``module`` if machop compresses its weights, else None."""
    kind = kind_of(module)
    return kind if kind is not None and kind.compressed else None


# --------------------------------------------------------------------------- channels


def flow_of(module: nn.Module) -> Flow | None:
    """How the channel analysis treats ``module`` (``"mix"``, ``"norm"``), or None."""
    kind = kind_of(module)
    return kind.flow if kind is not None else None


def resizable(module: nn.Module) -> bool:
    """True for a layer whose channels can be removed (`sliced`): one the channel analysis follows."""
    return flow_of(module) is not None and getattr(module, "weight", None) is not None


def channels(module: nn.Module) -> tuple[int, int, int]:
    """``(out_channels, in_channels, groups)`` of a layer of `LAYERS` with channel attributes."""
    kind = kind_of(module)
    if kind is None or not kind.channel_attrs:
        raise TypeError(f"{type(module).__name__} has no channels machop knows")
    out = getattr(module, kind.channel_attrs[0])
    cin = getattr(module, kind.channel_attrs[-1])
    return out, cin, getattr(module, "groups", 1)


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise layer: one group per channel, as many outputs as inputs (its channel c reads input c only)."""
    if flow_of(module) != "mix":
        return False
    out, cin, groups = channels(module)
    return groups > 1 and groups == cin == out


def reads_channels(module: nn.Module) -> bool:
    """A layer whose every output reads every input channel (``groups == 1`` convolution, Linear)."""
    return flow_of(module) == "mix" and channels(module)[2] == 1


def zero_padded(module: nn.Module) -> bool:
    """A convolution whose zero padding makes a constant input non-uniform at the borders."""
    if getattr(module, "padding_mode", None) != "zeros":
        return False
    padding = module.padding
    if isinstance(padding, str):
        return padding == "same" and any(k > 1 for k in module.kernel_size)
    return any(p > 0 for p in padding)


def recorded_channels(module: nn.Module, shape: list[int]) -> tuple[int, int]:
    """``(out, in)`` channel counts a weight of ``shape`` gives a layer like ``module`` (a depthwise layer stays depthwise)."""
    kind = kind_of(module)
    if kind.flow == "norm":
        return shape[0], shape[0]
    groups = shape[kind.channel_dim] if is_depthwise(module) else channels(module)[2]
    return shape[kind.channel_dim], shape[kind.in_dim] * groups


def macs(module: nn.Module, in_shape: Shape, out_shape: Shape) -> int | None:
    """Multiply-accumulates of one call of ``module`` at batch 1; None for kinds not counted."""
    kind = kind_of(module)
    return kind.macs(module, in_shape, out_shape) if kind is not None and kind.macs is not None else None


# --------------------------------------------------------------------------- slicing


def plain_copy(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` as its plain class (parametrizations dropped), without parameters or buffers."""
    cls = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
    new = cls.__new__(cls)
    state = {k: (copy.copy(v) if isinstance(v, (dict, set, list)) else v) for k, v in module.__dict__.items()}
    state["_parameters"] = OrderedDict()
    state["_buffers"] = OrderedDict()
    state["_modules"] = OrderedDict((k, v) for k, v in module._modules.items() if k != "parametrizations")
    new.__dict__.update(state)
    return new


def _param(value: torch.Tensor, like: torch.Tensor | None) -> nn.Parameter:
    return nn.Parameter(value.detach().clone().contiguous(), requires_grad=like.requires_grad if like is not None else True)


def sliced(module: nn.Module, out_idx: torch.Tensor, in_idx: torch.Tensor, weight: torch.Tensor | None = None,
           bias: torch.Tensor | None | bool = None) -> nn.Module:
    """A plain copy of a `resizable` layer keeping output channels ``out_idx`` and input columns ``in_idx``.

    ``in_idx`` indexes the weight's input dimension (per group in a grouped
    convolution). ``weight``/``bias``: values to slice instead of the
    module's own (full size); ``bias = True`` gives a layer without one a
    zero bias. A depthwise layer keeps one group per kept channel (``in_idx``
    is then ignored).
    Parametrizations are dropped: the caller re-applies what it keeps. Every
    tensor is allocated at the new size only (on the meta device: nothing).
    """
    kind = kind_of(module)
    new = plain_copy(module)
    w0 = stored(module, "weight")
    b0 = stored(module, "bias") if has_tensor(module, "bias") else None
    if kind.flow == "norm":
        for name, p in module._parameters.items():
            new._parameters[name] = None if p is None else _param(p.detach().index_select(0, out_idx.to(p.device)), p)
        for name, b in module._buffers.items():
            new._buffers[name] = b if b is None or b.dim() == 0 else b.index_select(0, out_idx.to(b.device)).clone()
        setattr(new, kind.channel_attrs[0], int(out_idx.numel()))
        return new
    depthwise = is_depthwise(module)
    w = (weight if weight is not None else w0).detach()
    w = w.index_select(kind.channel_dim, out_idx.to(w.device))
    if not depthwise:
        w = w.index_select(kind.in_dim, in_idx.to(w.device))
    if bias is True:
        bias = b0.detach() if b0 is not None else torch.zeros(w0.shape[kind.channel_dim], dtype=w0.dtype, device=w0.device)
    elif bias is None and b0 is not None:
        bias = b0.detach()
    new.register_parameter("weight", _param(w, w0))
    new.register_parameter("bias", None if bias is None or bias is False else
                           _param(bias.index_select(0, out_idx.to(bias.device)), b0))
    groups = int(out_idx.numel()) if depthwise else channels(module)[2]
    out_attr, in_attr = kind.channel_attrs
    setattr(new, out_attr, int(out_idx.numel()))
    setattr(new, in_attr, int(w.shape[kind.in_dim]) * groups)
    if groups > 1:
        if out_idx.numel() % groups:
            raise ValueError(f"{out_idx.numel()} output channels do not divide into {groups} groups")
        new.groups = groups
    return new


# --------------------------------------------------------------------------- how other ops pass channels

OpFlow = Literal["through", "pool", "flatten", "reduce", "binary", "cat", "reshape", "ignore"]

_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d)
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                        nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity,
                        nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)

OPS: dict[object, OpFlow] = {
    **{cls: "through" for cls in _ELEMENTWISE_MODULES},
    **{cls: "pool" for cls in _POOL_MODULES},
    nn.Flatten: "flatten",
    **{f: "through" for f in (torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
                              F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, torch.sigmoid, F.sigmoid,
                              torch.tanh, F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.abs,
                              torch.neg, torch.exp, torch.square, operator.neg)},
    **{f: "pool" for f in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                           F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                           F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)},
    **{f: "binary" for f in (operator.add, operator.iadd, operator.sub, operator.mul, operator.truediv, torch.add,
                             torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum)},
    torch.flatten: "flatten",
    torch.cat: "cat",
    torch.concat: "cat",
    **{f: "reduce" for f in (torch.mean, torch.sum, torch.amax, torch.amin)},
    getattr: "ignore",
    **{f"method:{m}": "through" for m in ("relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "abs", "neg",
                                          "exp", "square", "detach", "float")},
    **{f"method:{m}": "binary" for m in ("add", "add_", "sub", "mul", "mul_", "div")},
    "method:flatten": "flatten",
    "method:view": "reshape",
    "method:reshape": "reshape",
    **{f"method:{m}": "reduce" for m in ("mean", "sum", "amax", "amin")},
    **{f"method:{m}": "ignore" for m in ("size", "dim")},
}
"""How an op that is not a layer of `LAYERS` passes channels: module classes, functions, ``"method:name"``."""


def module_flow(module: nn.Module) -> OpFlow | None:
    """How a module that is not a layer of `LAYERS` passes channels, or None if not understood."""
    if isinstance(module, nn.PReLU):
        return "through" if module.num_parameters == 1 else None
    if isinstance(module, nn.Sequential):
        return "through" if len(module) == 0 else None
    return next((flow for cls, flow in OPS.items() if isinstance(cls, type) and isinstance(module, cls)), None)


def function_flow(function: object) -> OpFlow | None:
    """How a ``call_function`` target passes channels, or None if not understood."""
    try:
        return OPS.get(function)
    except TypeError:  # an unhashable target
        return None


def method_flow(name: str) -> OpFlow | None:
    """How a ``call_method`` target (a tensor method name) passes channels, or None if not understood."""
    return OPS.get(f"method:{name}")
