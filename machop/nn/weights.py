"""Every weight a user expects compressed, on any model: its kind, its name, and every place it lives.

`KINDS` is the one table of layer types machop compresses. Each entry says
which tensors of such a module are weights, and what its groups mean
(output channels, kernels). Configs select kinds by these names
(``conv2d``, ``linear``, ``mha``, ``lstm``, ...); the passes ask the table,
never the module classes.

`compressible_weights` lists each weight once, however often it is used: a
parameter tied between modules (an embedding and its output projection) or
held by a module called at several places is one `Weight` with several
``sites``. Passes change a weight only through `register` and `bake`, which
act on every site, so a tie is never broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from .rebuild import is_rebuildable


def _weight(module: nn.Module) -> list[str]:
    return ["weight"]


def _attention(module: nn.Module) -> list[str]:
    own = [n for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight") if has_tensor(module, n)]
    return own + ["out_proj.weight"]


def _recurrent(module: nn.Module) -> list[str]:
    return [n for n in module._flat_weights_names if n.startswith("weight_")]


@dataclass(frozen=True)
class LayerKind:
    """One layer type machop compresses.

    Attributes:
        name: the MASE-style op name configs use (``conv2d``, ``mha``, ...).
        classes: the module classes of this kind (subclasses included).
        weights: the names of the module's weight tensors (``"out_proj.weight"``
            names a child's tensor the kind owns).
        channel_dim: the weight dimension indexing output channels, or None
            where channelwise pruning means nothing (embeddings, attention, RNNs).
        kernels: True where ``weight[a, b]`` is a kernel (convolutions).
        input_channel_dim: the channel dimension of the layer's input, for
            activation pruning; None where the input is not prunable (token indices).
        kmeans_bits: the default k-means code width (Deep Compression: 8 for
            convolutions, 5 for the rest).
        aliases: other names accepted for ``name``.
    """

    name: str
    classes: tuple[type[nn.Module], ...]
    weights: Callable[[nn.Module], list[str]] = _weight
    channel_dim: int | None = None
    kernels: bool = False
    input_channel_dim: int | None = None
    kmeans_bits: int = 5
    aliases: tuple[str, ...] = ()


def _conv(name: str, cls: type[nn.Module], channel_dim: int) -> LayerKind:
    return LayerKind(name, (cls,), channel_dim=channel_dim, kernels=True, input_channel_dim=1, kmeans_bits=8)


KINDS: tuple[LayerKind, ...] = (
    LayerKind("linear", (nn.Linear,), channel_dim=0, input_channel_dim=-1),
    _conv("conv1d", nn.Conv1d, 0),
    _conv("conv2d", nn.Conv2d, 0),
    _conv("conv3d", nn.Conv3d, 0),
    _conv("convtranspose1d", nn.ConvTranspose1d, 1),
    _conv("convtranspose2d", nn.ConvTranspose2d, 1),
    _conv("convtranspose3d", nn.ConvTranspose3d, 1),
    LayerKind("embedding", (nn.Embedding, nn.EmbeddingBag)),
    LayerKind("mha", (nn.MultiheadAttention,), _attention, input_channel_dim=-1, aliases=("attention",)),
    LayerKind("lstm", (nn.LSTM,), _recurrent, input_channel_dim=-1),
    LayerKind("gru", (nn.GRU,), _recurrent, input_channel_dim=-1),
    LayerKind("rnn", (nn.RNN,), _recurrent, input_channel_dim=-1),
)

KIND_NAMES: dict[str, LayerKind] = {n: k for k in KINDS for n in (k.name, *k.aliases)}
"""Every name a config may use for a kind (aliases included) → the kind."""


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind of ``module``, or None if machop does not compress it."""
    return next((k for k in KINDS if isinstance(module, k.classes)), None)


# --------------------------------------------------------------------------- tensors and their sites


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


Site = tuple[str, nn.Module, str]
"""(module qualname, module, tensor name): one place a tensor lives."""


def _own_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The model's modules, without parametrization internals and modules passes inserted."""
    for qualname, module in model.named_modules():
        if ".parametrizations." in f".{qualname}." or is_rebuildable(module):
            continue
        yield qualname, module


def tensor_sites(model: nn.Module) -> dict[int, list[Site]]:
    """id(stored parameter) → every (qualname, module, name) holding it, in module order."""
    sites: dict[int, list[Site]] = {}
    for qualname, module in _own_modules(model):
        names = [n for n, p in module._parameters.items() if p is not None]
        if parametrize.is_parametrized(module):
            names += [n for n in module.parametrizations.keys() if n not in names]
        for name in names:
            sites.setdefault(id(stored(module, name)), []).append((qualname, module, name))
    return sites


def tied_tensors(model: nn.Module) -> list[list[str]]:
    """Groups of ``qualname.name`` keys that hold one and the same parameter (two or more each)."""
    return [[f"{q}.{n}".lstrip(".") for q, _, n in group] for group in tensor_sites(model).values() if len(group) > 1]


def dense_parameter_count(model: nn.Module) -> int:
    """Float parameters of the dense model, each counted once however often it is tied or used.

    A parametrized tensor counts at its original shape; tensors of
    parametrizations (k-means centroids) and of inserted modules do not count.
    Buffers (batch-norm statistics) are not parameters.
    """
    total = 0
    for group in tensor_sites(model).values():
        _, module, name = group[0]
        t = stored(module, name)
        if t.is_floating_point():
            total += t.numel()
    return total


def nonzero_parameter_count(model: nn.Module) -> int:
    """Non-zero entries of the effective float parameters (masks and codebooks applied), each tensor once."""
    total = 0
    with torch.no_grad():
        for group in tensor_sites(model).values():
            _, module, name = group[0]
            if stored(module, name).is_floating_point():
                total += int(torch.count_nonzero(getattr(module, name)))
    return total


# --------------------------------------------------------------------------- names configs use


def module_paths(qualname: str) -> list[str]:
    """``"a.b.c"`` → ``["a", "a.b", "a.b.c"]``: the module and every parent, by qualified name."""
    parts = qualname.split(".") if qualname else []
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def most_specific(keys, names: set[str], own: str) -> str | None:
    """Of the ``keys`` found in ``names``, the one that says most: ``own`` itself, else the longest path."""
    found = [k for k in keys if k in names]
    return max(found, key=lambda k: (k == own, len(k))) if found else None


# --------------------------------------------------------------------------- compressible weights


@dataclass
class Weight:
    """One compressible weight tensor of a model, with every place it is used.

    ``name`` is how configs and reports call it: the fx node name of its
    module (``features_0``) or the module's qualified name where it has no
    node of its own (``enc.self_attn.out_proj``), followed by ``.tensor`` when
    the tensor is not called ``weight`` (``lstm.weight_hh_l0``).
    """

    name: str
    kind: LayerKind
    sites: list[Site]  # the owning module's site first
    node: str | None = None  # the fx node calling the owning module, if any

    @property
    def qualname(self) -> str:
        return self.sites[0][0]

    @property
    def module(self) -> nn.Module:
        return self.sites[0][1]

    @property
    def tensor_name(self) -> str:
        return self.sites[0][2]

    def stored(self) -> torch.Tensor:
        """The tensor underneath any parametrization (shape, device, dtype; no forward computed)."""
        return stored(self.module, self.tensor_name)

    def value(self) -> torch.Tensor:
        """The effective weight (every parametrization applied), detached."""
        with torch.no_grad():
            return getattr(self.module, self.tensor_name).detach()

    @property
    def bias_name(self) -> str | None:
        """The bias that goes with this weight (``bias``, ``in_proj_bias``, ``bias_ih_l0``), if the module has one."""
        name = self.tensor_name.replace("weight", "bias")
        return name if has_tensor(self.module, name) else None

    def ancestry(self) -> set[str]:
        """Names a config may use to select this weight: its own, its modules' and their parents'."""
        names = {self.name, f"{self.qualname}.{self.tensor_name}".lstrip(".")}
        if self.node is not None:
            names.add(self.node)
        for qualname, _, _ in self.sites:
            names.update(module_paths(qualname))
        return names


def compressible_weights(model: nn.Module, node_names: dict[str, str] | None = None) -> list[Weight]:
    """Every weight of a kind in `KINDS`, once each, in module order.

    ``node_names`` maps module qualnames to the fx node that calls them
    (the first, for a module called several times).
    """
    node_names = node_names or {}
    sites = tensor_sites(model)
    claimed: set[int] = set()
    out: list[Weight] = []
    for qualname, module in _own_modules(model):
        kind = kind_of(module)
        if kind is None:
            continue
        for path in kind.weights(module):
            owner_path, _, tensor = path.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            if not has_tensor(owner, tensor):
                continue
            key = id(stored(owner, tensor))
            if key in claimed:  # tied to a weight listed already
                continue
            claimed.add(key)
            owner_qualname = f"{qualname}.{owner_path}".strip(".") if owner_path else qualname
            group = sites.get(key, [(owner_qualname, owner, tensor)])
            group = sorted(group, key=lambda s: s[1] is not owner or s[2] != tensor)  # owner first, stable
            node = node_names.get(owner_qualname)
            base = node if node is not None else owner_qualname
            name = base if tensor == "weight" else f"{base}.{tensor}"
            out.append(Weight(name, kind, group, node))
    return out


def register(weight: Weight, parametrization: nn.Module) -> None:
    """Append ``parametrization`` to the weight's chain at every site (one object shared by all)."""
    for _, module, name in weight.sites:
        parametrize.register_parametrization(module, name, parametrization, unsafe=True)


def bake(weight: Weight) -> None:
    """Replace the weight's parametrizations by their current value, at every site, keeping one parameter.

    Removing a parametrization puts its ``original`` back at the site; the
    sites of a tied weight share that one parameter, which then takes the value.
    """
    value = weight.value()
    for _, module, name in weight.sites:
        if parametrize.is_parametrized(module, name):
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    with torch.no_grad():
        weight.stored().copy_(value)


def chain(module: nn.Module, name: str = "weight") -> list[nn.Module]:
    """The parametrizations of ``module.name``, first applied first (empty if none)."""
    return list(module.parametrizations[name]) if parametrize.is_parametrized(module, name) else []
