"""Every weight a user expects compressed, on any model: its kind, its name, and every place it lives.

Which tensors of a module are weights, and what their groups mean (output
channels, kernels), is the layer registry's (`machop.nn.layers`). Configs
select kinds by its names (``conv2d``, ``linear``, ``mha``, ``lstm``,
``parameter``, ...). Besides the weights of known layers, every floating
parameter of two or more dimensions that the graph uses directly
(``F.linear(x, self.w)``, ``torch.einsum("...", x, self.w)``) is a weight of
kind ``parameter``; `uncompressed_parameters` lists, with the reason, every
other such parameter a model holds, so that nothing is skipped silently.

`compressible_weights` lists each weight once, however often it is used: a
parameter tied between modules (an embedding and its output projection) or
held by a module called at several places is one `Weight` with several
``sites``. Passes change a weight only through `register` and `bake`, which
act on every site, so a tie is never broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from torch.nn.utils.spectral_norm import SpectralNorm, remove_spectral_norm
from torch.nn.utils.weight_norm import WeightNorm, remove_weight_norm

from .layers import PARAMETER, LayerKind, compressed_kind, has_tensor, stored
from .rebuild import is_rebuildable


# --------------------------------------------------------------------------- tensors and their sites


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
        if "weight" not in self.tensor_name:
            return None
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


def compressible_weights(model: nn.Module, node_names: dict[str, str] | None = None,
                         direct: dict[str, str] | None = None) -> list[Weight]:
    """Every weight of a compressed kind (`machop.nn.layers.KINDS`), once each, in module order.

    ``node_names`` maps module qualnames to the fx node that calls them
    (the first, for a module called several times). ``direct`` maps the
    qualified names of parameters the graph reads itself (``get_attr``) to
    the name of that node: each floating one of two or more dimensions that
    no layer claims is a weight of kind ``parameter``, named by its node.
    """
    node_names = node_names or {}
    sites = tensor_sites(model)
    claimed: set[int] = set()
    out: list[Weight] = []

    def add(owner_qualname: str, owner: nn.Module, tensor: str, kind: LayerKind, name: str, node: str | None) -> None:
        key = id(stored(owner, tensor))
        claimed.add(key)
        group = sites.get(key, [(owner_qualname, owner, tensor)])
        group = sorted(group, key=lambda s: s[1] is not owner or s[2] != tensor)  # owner first, stable
        out.append(Weight(name, kind, group, node))

    for qualname, module in _own_modules(model):
        kind = compressed_kind(module)
        if kind is None:
            continue
        for path in kind.weights(module):
            owner_path, _, tensor = path.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            if not has_tensor(owner, tensor) or id(stored(owner, tensor)) in claimed:  # absent, or tied to one listed
                continue
            owner_qualname = f"{qualname}.{owner_path}".strip(".") if owner_path else qualname
            node = node_names.get(owner_qualname)
            base = node if node is not None else owner_qualname
            add(owner_qualname, owner, tensor, kind, base if tensor == "weight" else f"{base}.{tensor}", node)
    for path, node in (direct or {}).items():
        owner_qualname, _, tensor = path.rpartition(".")
        owner = model.get_submodule(owner_qualname)
        if not has_tensor(owner, tensor) or id(stored(owner, tensor)) in claimed:
            continue
        t = stored(owner, tensor)
        if t.is_floating_point() and t.dim() >= 2:
            add(owner_qualname, owner, tensor, PARAMETER, node, None)
    return out


def uncompressed_parameters(model: nn.Module, weights: list[Weight]) -> list[dict]:
    """Every floating parameter of two or more dimensions that is none of ``weights``, with the reason.

    ``[{"name": "block.scale", "shape": [4, 4], "reason": "..."}]``, each tensor once.
    """
    claimed = {id(w.stored()) for w in weights}
    out = []
    for group in tensor_sites(model).values():
        qualname, module, name = group[0]
        t = stored(module, name)
        if id(t) in claimed or not t.is_floating_point() or t.dim() < 2:
            continue
        owner = type(module).__name__.removeprefix("Parametrized")
        kind = compressed_kind(module)
        if kind is not None:
            reason = f"{name} of {owner} is not one of the weights machop compresses in a {kind.name} layer"
        else:
            reason = (f"held by {owner}, a module machop does not know, and not used by the traced graph directly "
                      "(keep the module traced, not a leaf, or use its parameter in the graph)")
        out.append({"name": f"{qualname}.{name}".lstrip("."), "shape": list(t.shape), "reason": reason})
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


def fold_foreign_parametrizations(model: nn.Module) -> list[str]:
    """Bake every parametrization machop did not add (``weight_norm``, ``spectral_norm``, your own) into a plain tensor.

    The tensor takes the value the model computes with in eval mode, so the
    model's function is unchanged and every pass sees (and compresses) the
    effective weight. Hook-based ``torch.nn.utils.weight_norm`` /
    ``spectral_norm`` are folded likewise. Returns ``"qualname.tensor (what)"``
    for each tensor folded.
    """
    folded = []
    for qualname, module in list(model.named_modules()):
        if ".parametrizations." in f".{qualname}." or is_rebuildable(module):
            continue
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, (WeightNorm, SpectralNorm)):
                (remove_weight_norm if isinstance(hook, WeightNorm) else remove_spectral_norm)(module, hook.name)
                folded.append(f"{qualname}.{hook.name} ({type(hook).__name__})".lstrip("."))
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):
            foreign = [type(p).__name__ for p in module.parametrizations[name] if not is_rebuildable(p)]
            if not foreign:
                continue
            if len(foreign) != len(module.parametrizations[name]):
                raise ValueError(f"{qualname}.{name}: machop's parametrizations sit on top of "
                                 f"{', '.join(foreign)}; fold those before compressing")
            was_training = module.training
            module.eval()  # (not under no_grad: the value would come back as a buffer, not a parameter)
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
            module.train(was_training)
            folded.append(f"{qualname}.{name} ({', '.join(foreign)})".lstrip("."))
    return folded


def chain(module: nn.Module, name: str = "weight") -> list[nn.Module]:
    """The parametrizations of ``module.name``, first applied first (empty if none)."""
    return list(module.parametrizations[name]) if parametrize.is_parametrized(module, name) else []
