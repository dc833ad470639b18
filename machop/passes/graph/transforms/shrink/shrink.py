"""The shrink pass: remove the channels channelwise pruning emptied, giving a physically smaller network.

See the package docstring for what it does and the TOML table; `channels`
for how channels are followed through the graph.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from machop.config import ConfigError, from_dict, join, pass_path
from machop.ir import MaseGraph
from machop.nn import (
    ActivationPrune,
    WeightMask,
    apply_mask,
    chain,
    channels,
    dense_parameter_count,
    flow_of,
    get_mask,
    has_tensor,
    kind_of,
    module_paths,
    resizable,
    sliced,
    stored,
    zero_padded,
)
from machop.passes.graph.analysis.channels import Analysis, analyse, effective_weights, sample_inputs
from machop.passes.graph.analysis.pruning import collect_pruning_info

logger = logging.getLogger(__name__)

LATENCY_RUNS = 5  # forwards timed (after one warm-up) for the latency in info; their median is reported


@dataclass
class ShrinkArgs:
    """``[passes.shrink]``."""

    exclude: list[str] = field(default_factory=list)  # layers (node names or module paths) whose channels stay
    borders: Literal["carrier", "keep", "bias"] = "carrier"  # removed constants read by zero-padded convolutions

    def validate(self, path: str) -> None:
        if len(set(self.exclude)) != len(self.exclude):
            raise ConfigError(join(path, "exclude"), "lists a name twice")


def parse_shrink_args(pass_args: dict | None, path: str = "passes.shrink") -> ShrinkArgs:
    """Validate a ``[passes.shrink]`` table into `ShrinkArgs` (unknown keys are errors); ``pass_args`` is not modified."""
    return from_dict(ShrinkArgs, pass_args, path)


def _layer_names(graph: MaseGraph) -> dict[str, str]:
    """Every name ``exclude`` may use (node names, module paths and their parents) → ... (only the keys matter)."""
    names: dict[str, str] = {}
    for n in graph.nodes:
        m = graph.module_of(n)
        if m is not None and resizable(m):
            names[n.name] = str(n.target)
            for p in module_paths(str(n.target)):
                names.setdefault(p, p)
    return names


def check_shrink_args(graph: MaseGraph, args: ShrinkArgs, path: str, earlier: list[str] = ()) -> None:
    """Refuse ``exclude`` names that name no convolution, Linear or batch-norm layer of ``graph``."""
    names = _layer_names(graph)
    unknown = [n for n in args.exclude if n not in names]
    if unknown:
        valid = ", ".join(n.name for n in graph.nodes if n.name in names)
        raise ConfigError(join(path, "exclude"), f"unknown name(s) {', '.join(map(repr, unknown))}; valid: {valid}")


# --------------------------------------------------------------------------- helpers


def _refuse_quantized(graph: MaseGraph) -> None:
    quantized = []
    for qualname, module in graph.model.named_modules():
        if parametrize.is_parametrized(module) and ".parametrizations" not in f".{qualname}":
            for tensor, plist in module.parametrizations.items():
                others = [type(p).__name__ for p in plist if not isinstance(p, WeightMask)]
                if others:
                    quantized.append(f"{qualname}.{tensor} ({', '.join(others)})".lstrip("."))
    if quantized:
        raise ValueError(f"shrink: {', '.join(quantized[:5])}{' ...' if len(quantized) > 5 else ''} "
                         "already quantized (k-means codebook, fixed point or short floats): shrink before quantizing")


def _replace(gm: nn.Module, qualname: str, new: nn.Module) -> None:
    parent, _, name = qualname.rpartition(".")
    gm.get_submodule(parent)._modules[name] = new


def _stored(m: nn.Module, name: str) -> torch.Tensor | None:
    return stored(m, name) if has_tensor(m, name) else None


def _mask_how(m: nn.Module) -> dict | None:
    hows = [p.how for p in chain(m, "weight") if isinstance(p, WeightMask) and p.how]
    return hows[-1] if hows else None


# --------------------------------------------------------------------------- deciding what goes


@dataclass
class _Plan:
    removed: set[int]  # variable roots removed
    why: dict[int, str]  # root → why it stays (for pruned channels)
    carriers: list[dict]
    approximate: list[str]  # zero-padded readers whose borders differ (borders = "bias")
    bias_add: dict[str, torch.Tensor]  # reader qualname → per-output-channel addition (float64)
    mean_shift: dict[str, torch.Tensor]  # batch norm qualname → subtraction from its running mean (float64)
    weight_add: dict[str, tuple[int, torch.Tensor]]  # reader qualname → (carrier column, addition to W[:, c])


def _used_columns(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], w.shape[1], -1).ne(0).any(dim=2).any(dim=0)


def _decide(a: Analysis, weights: dict[str, torch.Tensor], modules: dict[str, nn.Module], args: ShrinkArgs,
            excluded: set[str]) -> _Plan:
    V = a.vars
    why: dict[int, str] = {}
    roots = {V.find(v) for vs in (*a.producers.values(), *a.norms.values(), *a.masks.values(), *a.inputs.values())
             for v in vs}
    for q in excluded:
        for table in (a.producers, a.inputs, a.norms):
            if q in table:
                V.pin(table[q], f"{q} is excluded")
    for r in roots:
        if V.pinned(r):
            why[r] = "; ".join(V.pinned(r)[:2])
    unpruned: dict[int, str] = {}  # root → why a pruned channel of it is not constant where it is read
    for q, vs in a.producers.items():
        w = weights[q]
        live = w.reshape(w.shape[0], -1).ne(0).any(dim=1)
        for c, v in enumerate(vs):
            if live[c] and q in a.depthwise:
                unpruned.setdefault(V.find(v), f"its constant output goes through depthwise {q}, whose zero padding "
                                               "makes it non-constant at the borders")
            elif live[c]:
                unpruned.setdefault(V.find(v), f"coupled (residual add, concat, depthwise conv) with {q}, "
                                               "which does not prune it")
    consts = {}
    for rd in a.readers:
        t = a.tracked[rd.source.name]
        const, val = t.constants()
        consts[rd.qualname] = (const, val)
        used = _used_columns(weights[rd.qualname])
        for j, v in enumerate(rd.vars):
            r = V.find(v)
            if used[j] and not const[j] and r not in why:
                why[r] = unpruned.get(r, f"{rd.node.name} reads it where it is not constant")
    removed = {r for r in roots if r not in why}

    # every module keeps at least one channel (a layer with none would pass nothing on)
    changed = True
    while changed:
        changed = False
        for table in (a.producers, a.inputs, a.norms, a.masks):
            for q, vs in table.items():
                rs = [V.find(v) for v in vs]
                if rs and all(r in removed for r in rs):
                    removed.discard(rs[0])
                    why[rs[0]] = f"kept so that {q} keeps at least one channel"
                    changed = True

    # constants read by zero-padded convolutions: fold through one kept constant channel (the carrier)
    carriers, approximate = [], []
    for rd in a.readers:
        m = modules[rd.qualname]
        if not kind_of(m).kernels or not zero_padded(m):
            continue
        const, val = consts[rd.qualname]
        used = _used_columns(weights[rd.qualname])
        rs = [V.find(v) for v in rd.vars]
        need = [j for j, r in enumerate(rs) if r in removed and used[j] and val[j] != 0]
        if not need:
            continue
        if args.borders == "bias":
            approximate.append(rd.node.name)
            continue
        if args.borders == "keep":
            for j in need:
                removed.discard(rs[j])
                why[rs[j]] = (f"its constant output ({float(val[j]):.4g}) reaches zero-padded {rd.node.name}, "
                              'which sees it differently at the borders (borders = "keep")')
            continue
        if any(r not in removed and const[j] and val[j] != 0 for j, r in enumerate(rs)):
            continue  # a kept constant channel carries it
        j = max(need, key=lambda j: abs(float(val[j])))
        removed.discard(rs[j])
        why[rs[j]] = f"kept to carry the constant outputs of removed channels into zero-padded {rd.node.name}"
        carriers.append({"reader": rd.node.name, "channel": j, "value": float(val[j])})

    bias_add: dict[str, torch.Tensor] = {}
    weight_add: dict[str, tuple[int, torch.Tensor]] = {}
    for rd in a.readers:
        m = modules[rd.qualname]
        const, val = consts[rd.qualname]
        w = weights[rd.qualname].double()
        rs = [V.find(v) for v in rd.vars]
        gone = [j for j, r in enumerate(rs) if r in removed and val[j] != 0]
        if not gone:
            continue
        per_column = w[:, gone].reshape(w.shape[0], len(gone), -1) * val[gone].to(w)[None, :, None]
        if kind_of(m).kernels and zero_padded(m) and args.borders == "carrier":
            c = next(j for j, r in enumerate(rs) if r not in removed and const[j] and val[j] != 0)
            weight_add[rd.qualname] = (c, per_column.sum(dim=1).reshape(w.shape[0], *w.shape[2:]) / val[c])
        else:
            bias_add[rd.qualname] = per_column.sum(dim=(1, 2))

    # a bias-free layer read by one batch norm only: the constant shifts the norm's mean instead (no new bias)
    mean_shift: dict[str, torch.Tensor] = {}
    for rd in a.readers:
        norm = _only_norm_after(rd.node, modules, a)
        if rd.qualname in bias_add and _stored(modules[rd.qualname], "bias") is None and norm is not None:
            mean_shift[norm] = bias_add.pop(rd.qualname)
    return _Plan(removed, why, carriers, approximate, bias_add, mean_shift, weight_add)


def _only_norm_after(node, modules: dict[str, nn.Module], a: Analysis) -> str | None:
    """The batch norm that alone reads ``node``'s output (called once, with running statistics), or None:
    adding a constant per channel before it is subtracting it from its running mean."""
    if len(node.users) != 1:
        return None
    (user,) = node.users
    if user.op != "call_module" or flow_of(modules[user.target]) != "norm" or user.args[0] is not node:
        return None
    q = str(user.target)
    if a.calls.get(q, 0) != 1 or modules[q].running_mean is None:
        return None
    return q


# --------------------------------------------------------------------------- rewriting the modules


def _shrink_layer(m: nn.Module, out_keep: torch.Tensor, in_keep: torch.Tensor, bias_add: torch.Tensor | None,
                  weight_add: tuple[int, torch.Tensor] | None) -> nn.Module:
    """``m`` without the output channels and input columns not kept, constants folded, its mask kept."""
    w0 = _stored(m, "weight")
    b0 = _stored(m, "bias")
    mask = get_mask(m, "weight")
    how = _mask_how(m)
    with torch.no_grad():
        w = w0.detach().clone()
        if weight_add is not None:
            c, add = weight_add
            eff = getattr(m, "weight").detach()
            w[:, c] = (eff[:, c].double() + add.to(eff.device)).to(w.dtype)
            if mask is not None:
                mask = mask.clone()
                mask[:, c] = True
        b = b0.detach().clone() if b0 is not None else None
        if bias_add is not None:
            b = (b.double() if b is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
            b = b + bias_add.to(b.device)
            b = b.to(w.dtype)
    out_idx = out_keep.nonzero().flatten()
    in_idx = in_keep.nonzero().flatten()
    new = sliced(m, out_idx, in_idx, weight=w, bias=b)
    if mask is not None:
        kind = kind_of(m)
        mask = mask.index_select(kind.channel_dim, out_idx.to(mask.device))
        if mask.shape[kind.in_dim] != new.weight.shape[kind.in_dim]:  # not depthwise
            mask = mask.index_select(kind.in_dim, in_idx.to(mask.device))
        apply_mask(new, mask, how=how)
    return new


def _shrink_norm(m: nn.Module, keep: torch.Tensor, shift: torch.Tensor | None) -> nn.Module:
    new = sliced(m, keep.nonzero().flatten(), keep.nonzero().flatten())
    if shift is not None:
        b = new._buffers["running_mean"]
        new._buffers["running_mean"] = (b.double() - shift[keep.to(shift.device)].to(b.device)).to(b.dtype)
    return new


def _params(m: nn.Module) -> int:
    return sum(_stored(m, n).numel() for n in ("weight", "bias") if _stored(m, n) is not None)


def _latency_ms(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Median wall time of one forward on ``inputs`` in milliseconds (eval mode, no grad; one warm-up run first)."""
    was_training = model.training
    model.eval()
    cuda = any(t.is_cuda for t in inputs)
    times = []
    with torch.no_grad():
        for i in range(LATENCY_RUNS + 1):
            start = time.perf_counter()
            model(*inputs)
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    model.train(was_training)
    return 1000 * statistics.median(times)


# --------------------------------------------------------------------------- the pass


def shrink_transform_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Remove every channel channelwise pruning (weights or activation channel masks) emptied; see the package doc.

    Returns ``(graph, info)``: ``layers`` (per layer: channels and parameters
    before/after), ``totals`` (``params``, ``macs`` before/after), ``kept``
    (pruned channels that could not be removed, with the reason),
    ``carriers``, ``approximate`` (zero-padded layers whose border outputs
    differ, ``borders = "bias"``), ``biases_added``, ``registry_model`` and
    ``latency`` (``ms``: median forward time before/after on the sample
    inputs, eval mode; ``batch``, ``runs``, ``device``).
    """
    path = pass_path(graph.context.step, "passes.shrink")
    args = parse_shrink_args(pass_args, path)
    check_shrink_args(graph, args, path)
    _refuse_quantized(graph)
    inputs = sample_inputs(graph)
    gm = graph.model
    modules = dict(gm.named_modules())
    names = _layer_names(graph)
    excluded = {q for q, m in modules.items() if any(p in args.exclude for p in module_paths(q))}
    excluded |= {names[n] for n in args.exclude if n in names}
    before_info = collect_pruning_info(graph)["totals"]
    params_before = dense_parameter_count(gm)
    latency_before = _latency_ms(gm, inputs)

    weights = effective_weights(gm)
    a = analyse(gm, inputs, weights)
    for w in graph.weights():  # a tied weight changes at every site: its channels stay
        if len(w.sites) > 1:
            for q, _, _ in w.sites:
                for table in (a.producers, a.inputs):
                    if q in table:
                        a.vars.pin(table[q], f"weight of {q} is tied to another module")
    plan = _decide(a, weights, modules, args, excluded)
    V, removed = a.vars, plan.removed

    def keep_of(vs: list[int]) -> torch.Tensor:
        return torch.tensor([V.find(v) not in removed for v in vs], dtype=torch.bool)

    node_of = graph.node_names()
    kept = _kept_report(a, plan, weights, modules, node_of, graph)  # before any module changes
    layers, biases_added = [], []
    for q, out_vars in a.producers.items():
        m = modules[q]
        out_keep = keep_of(out_vars)
        in_vars = a.inputs.get(q)
        cout, cin, groups = channels(m)
        in_keep = out_keep if q in a.depthwise else (keep_of(in_vars) if in_vars is not None else
                                                       torch.ones(cin // groups, dtype=torch.bool))
        before = (cin, cout)
        bias_add, weight_add = plan.bias_add.get(q), plan.weight_add.get(q)
        if bool(out_keep.all()) and bool(in_keep.all()) and bias_add is None and weight_add is None:
            continue
        if bias_add is not None and _stored(m, "bias") is None and bool(bias_add[out_keep.to(bias_add.device)].ne(0).any()):
            biases_added.append(node_of.get(q, q))
        new = _shrink_layer(m, out_keep, in_keep, bias_add, weight_add)
        if bias_add is not None and not bool(new.bias.ne(0).any()) and _stored(m, "bias") is None:
            new.register_parameter("bias", None)  # nothing to add after all
        _replace(gm, q, new)
        after = channels(new)[1::-1]
        layers.append({"name": node_of.get(q, q), "module": q, "in_channels": [before[0], after[0]],
                       "out_channels": [before[1], after[1]], "params": [_params(m), _params(new)]})
    for q, vs in a.norms.items():
        keep = keep_of(vs)
        if not bool(keep.all()) or q in plan.mean_shift:
            m = modules[q]
            new = _shrink_norm(m, keep, plan.mean_shift.get(q))
            _replace(gm, q, new)
            layers.append({"name": node_of.get(q, q), "module": q, "in_channels": [len(vs), int(keep.sum())],
                           "out_channels": [len(vs), int(keep.sum())],
                           "params": [sum(p.numel() for p in m.parameters()), sum(p.numel() for p in new.parameters())]})
    for q, vs in a.masks.items():
        keep = keep_of(vs)
        m = modules[q]
        if not bool(keep.all()) and isinstance(m, ActivationPrune) and m.channel_mask is not None:
            m.channel_mask = m.channel_mask[keep.to(m.channel_mask.device)].clone()

    after_info = collect_pruning_info(graph)["totals"]
    registry = graph.context.model_name
    if layers:
        graph.context.shrunk = True  # smaller than its class's architecture: files record it, loaders resize
        if graph.context.original_params is None:
            graph.context.original_params = params_before
    info = {
        "layers": layers,
        "totals": {
            "params": [params_before, dense_parameter_count(gm)],
            "macs": [before_info["macs_dense"], after_info["macs_dense"]],
            "macs_effective_before": before_info["macs_effective"],
            "removed_channels": sum(l["out_channels"][0] - l["out_channels"][1] for l in layers
                                    if l["module"] in a.producers),
        },
        "kept": kept,
        "carriers": plan.carriers,
        "approximate": plan.approximate,
        "biases_added": biases_added,
        "registry_model": registry if layers else None,
        "latency": {"ms": [latency_before, _latency_ms(gm, inputs)], "batch": int(inputs[0].shape[0]) if inputs else 0,
                    "runs": LATENCY_RUNS, "device": str(graph.device)},
    }
    t = info["totals"]
    logger.info("shrink: %d layer(s) changed, params %d -> %d, MACs %s -> %s; %d pruned channel group(s) kept",
                len(layers), *t["params"], *t["macs"], len(kept))
    return graph, info


def _kept_report(a: Analysis, plan: _Plan, weights: dict[str, torch.Tensor], modules: dict[str, nn.Module],
                 node_of: dict[str, str], graph: MaseGraph) -> list[dict]:
    """Pruned channels (all-zero weight rows, masked activation channels) still in the model, with the reason."""
    V = a.vars
    out: dict[tuple[str, str], list[int]] = {}
    for w in graph.weights():  # layers the analysis does not shrink at all
        dim = w.kind.channel_dim
        if dim is None or w.qualname in a.producers:
            continue
        value = w.value().movedim(dim, 0)
        empty = (~value.reshape(value.shape[0], -1).ne(0).any(dim=1)).nonzero().flatten().tolist()
        if empty:
            module = w.module
            if w.qualname in a.unfollowed:
                reason = f"not followed ({a.unfollowed[w.qualname]})"
            elif w.node is not None:
                reason = f"{type(module).__name__} layers are not shrunk"
            else:
                reason = "runs inside another module (not a graph node of its own): its channels are not followed"
            out.setdefault((w.name, reason), []).extend(empty)
    for q, vs in a.producers.items():
        w = weights[q]
        empty = ~w.reshape(w.shape[0], -1).ne(0).any(dim=1)
        for c, v in enumerate(vs):
            r = V.find(v)
            if empty[c] and r not in plan.removed:
                out.setdefault((node_of.get(q, q), plan.why.get(r, "not removable")), []).append(c)
    for q, vs in a.masks.items():
        m = modules[q]
        if m.channel_mask is None:
            continue
        roots = [V.find(v) for v in vs]
        for c, r in enumerate(roots):
            if c < m.channel_mask.numel() and not bool(m.channel_mask[c]) and r not in plan.removed:
                partial = [i for i, other in enumerate(roots) if other == r and bool(m.channel_mask[i])]
                reason = ("masks only some of the columns one channel becomes after a flatten (a channel goes when "
                          "all of its columns are masked)") if partial else plan.why.get(r, "not removable")
                out.setdefault((node_of.get(q, q), reason), []).append(c)
    return [{"layer": name, "channels": chans, "reason": reason} for (name, reason), chans in out.items()]
