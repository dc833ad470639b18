"""Following channels through an fx graph: which tensor channels are one channel, who reads them, which are constant.

The model runs once (eval mode, `torch.no_grad`) under an `fx.Interpreter`
on a sample input; for every node whose output has a channel dimension the
analysis records a `Tracked`: per index along that dimension, the *channel
variable* it carries, whether it is input-independent (structurally: it does
not depend on the data) and the node's numeric output (to read constants).

Channel variables live in a union-find (`Vars`). A convolution or Linear
layer creates fresh variables for its output channels. Channel-wise ops
(BatchNorm, activations, pooling, dropout, `ActivationPrune`, reductions over
other dimensions) pass them through; ``flatten`` repeats each one over the
columns it becomes (``H*W`` consecutive columns); ``cat`` concatenates the
lists; an elementwise binary op (a residual ``add``) unifies the variables of
its operands: channels coupled there are one variable and are removed
together or not at all. A depthwise convolution (``groups == in == out``)
keeps its input's variables (its channel ``c`` exists only with input ``c``).

Anything the analysis does not understand pins the variables reaching it
(with a reason): the model input and output, grouped convolutions, ops
mixing channels, fixed-size reshapes, per-sample activation pruning, modules
called twice or with tied weights. A pinned variable is never removed.

Readers are the layers that mix channels (a convolution with ``groups == 1``
or a Linear layer): a variable can be removed when every column a reader
reads it at either has all-zero weights or carries a constant (a channel
whose producer's weights are all pruned outputs its bias; through BatchNorm,
ReLU or pooling it stays a per-channel constant), which the shrink pass folds
into the reader. This is `Torch-Pruning`'s dependency-graph idea, written for
machop's graphs.

Two passes read it: ``shrink`` (which channels can go, `follow`) and
``prune`` (`couplings`: layers whose output channels are one variable are
scored and pruned together, so that shrink can remove what they prune).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from machop.ir import MaseGraph
from machop.nn import ActivationPrune, channels, flow_of, function_flow, is_depthwise, kind_of, method_flow, module_flow


class Vars:
    """Union-find over channel variables, with the reasons a variable is pinned."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.reasons: dict[int, list[str]] = {}

    def new(self, n: int, reason: str | None = None) -> list[int]:
        start = len(self.parent)
        ids = list(range(start, start + n))
        self.parent.extend(ids)
        if reason:
            for v in ids:
                self.reasons[v] = [reason]
        return ids

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        if rb in self.reasons:
            self.reasons.setdefault(ra, []).extend(self.reasons.pop(rb))

    def pin(self, vs, reason: str) -> None:
        for v in set(self.find(v) for v in vs):
            reasons = self.reasons.setdefault(v, [])
            if reason not in reasons:
                reasons.append(reason)

    def pinned(self, v: int) -> list[str]:
        return self.reasons.get(self.find(v), [])


@dataclass
class Tracked:
    """One node's output along its channel dimension ``dim``."""

    dim: int
    vars: list[int]
    indep: torch.Tensor  # bool per index: does not depend on the model's input
    value: torch.Tensor  # the node's output on the sample

    def constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(const: bool per index, value per index): input-independent and uniform over every other position."""
        v = self.value.detach().movedim(self.dim, 0).reshape(len(self.vars), -1).double().cpu()
        uniform = (v.amax(dim=1) == v.amin(dim=1)) if v.shape[1] else torch.ones(len(self.vars), dtype=torch.bool)
        first = v[:, 0] if v.shape[1] else torch.zeros(len(self.vars), dtype=torch.float64)
        return self.indep & uniform & torch.isfinite(first), first


@dataclass
class Reader:
    """A layer that mixes the channels it reads (``groups == 1`` convolution, Linear), at one call."""

    node: fx.Node
    qualname: str
    source: fx.Node  # the node whose output it reads
    vars: list[int]  # per input column (a convolution's input channel, a Linear column)


@dataclass
class Analysis:
    vars: Vars
    tracked: dict[str, Tracked]
    readers: list[Reader]
    producers: dict[str, list[int]] = field(default_factory=dict)  # conv/linear qualname → out-channel vars
    inputs: dict[str, list[int]] = field(default_factory=dict)  # conv (groups == 1)/linear qualname → in-channel vars
    depthwise: set[str] = field(default_factory=set)  # depthwise convs (input vars == output vars)
    norms: dict[str, list[int]] = field(default_factory=dict)  # BatchNorm qualname → channel vars
    masks: dict[str, list[int]] = field(default_factory=dict)  # ActivationPrune qualname → channel vars
    calls: dict[str, int] = field(default_factory=dict)  # module qualname → number of call nodes
    unfollowed: dict[str, str] = field(default_factory=dict)  # module qualname → why its node was not followed


def _describe(n: fx.Node) -> str:
    t = n.target
    what = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return f"{n.name} ({n.op} {what})"


def _tensors_in(args) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, out.append)
    return out


class _Runner(fx.Interpreter):
    """Runs the model once and builds the `Analysis` node by node."""

    def __init__(self, gm: fx.GraphModule, weights: dict[str, torch.Tensor]):
        super().__init__(gm)
        self.modules = dict(gm.named_modules())
        self.weights = weights  # conv/linear qualname → effective weight
        self.a = Analysis(Vars(), {}, [])

    # ------------------------------------------------------------------ helpers
    def t(self, arg) -> Tracked | None:
        return self.a.tracked.get(arg.name) if isinstance(arg, fx.Node) else None

    def pin_inputs(self, n: fx.Node, reason: str) -> None:
        for src in _tensors_in((n.args, n.kwargs)):
            t = self.a.tracked.get(src.name)
            if t is not None:
                self.a.vars.pin(t.vars, reason)

    def opaque(self, n: fx.Node, out, reason: str) -> Tracked | None:
        """Pin every tracked input and give a tensor output fresh pinned variables."""
        self.pin_inputs(n, f"read by {reason}")
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            vs = self.a.vars.new(out.shape[1], f"produced by {reason}")
            return Tracked(1, vs, torch.zeros(out.shape[1], dtype=torch.bool), out)
        return None

    def same(self, t: Tracked, out: torch.Tensor, indep: torch.Tensor | None = None, dim: int | None = None) -> Tracked:
        return Tracked(t.dim if dim is None else dim, t.vars, t.indep if indep is None else indep, out)

    # ------------------------------------------------------------------ the walk
    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        try:
            tracked = self.track(n, out)
        except _Unfollowable as e:
            if n.op == "call_module":
                self.a.unfollowed.setdefault(str(n.target), f"{_describe(n)}: {e}")
            tracked = self.opaque(n, out, f"{_describe(n)}: {e}")
        if tracked is not None:
            if not isinstance(out, torch.Tensor) or tracked.dim >= out.dim() or out.shape[tracked.dim] != len(tracked.vars):
                tracked = self.opaque(n, out, _describe(n))
            if tracked is not None:
                self.a.tracked[n.name] = tracked
        return out

    def track(self, n: fx.Node, out) -> Tracked | None:
        if n.op == "placeholder":
            if isinstance(out, torch.Tensor) and out.dim() >= 2 and out.is_floating_point():
                vs = self.a.vars.new(out.shape[1], "the model's input")
                return Tracked(1, vs, torch.zeros(out.shape[1], dtype=torch.bool), out)
            return None
        if n.op == "output":
            self.pin_inputs(n, "the model's output")
            return None
        if n.op == "get_attr":
            return None
        tracked_args = [s for s in _tensors_in((n.args, n.kwargs)) if s.name in self.a.tracked]
        if n.op == "call_module":
            return self.on_module(n, self.modules[n.target], out)
        if not tracked_args:
            return None
        if n.op == "call_function":
            return self.on_function(n, out)
        if n.op == "call_method":
            return self.on_method(n, out)
        raise _Unfollowable("unknown op")

    # ------------------------------------------------------------------ modules
    def on_module(self, n: fx.Node, m: nn.Module, out) -> Tracked | None:
        q = str(n.target)
        self.a.calls[q] = self.a.calls.get(q, 0) + 1
        x = self.t(n.args[0]) if n.args else None
        if isinstance(m, ActivationPrune):
            if x is None:
                return None
            dim = m.channel_dim % out.dim()
            if dim != x.dim:
                raise _Unfollowable("its channel dimension is not the tracked one")
            if m.stages:
                self.a.vars.pin(x.vars, f"masked per sample by {n.name} (activation pruning stages depend on all channels)")
            indep = x.indep.clone()
            if m.channel_mask is not None:
                indep |= ~m.channel_mask.cpu()
            self._record(self.a.masks, q, x.vars)
            return self.same(x, out, indep)
        flow = flow_of(m)
        if flow == "mix":
            return self.mix(n, q, m, x, out)
        if flow == "norm":
            if x is None:
                return None
            if x.dim != 1:
                raise _Unfollowable("batch norm over a dimension that is not the tracked channel")
            self._record(self.a.norms, q, x.vars)
            return self.same(x, out)
        if x is None:
            return None if not isinstance(out, torch.Tensor) else self.opaque(n, out, _describe(n))
        op = module_flow(m)
        if op == "through":
            return self.same(x, out)
        if op == "pool":
            if x.dim != 1:
                raise _Unfollowable("pooling over the tracked channel dimension")
            return self.same(x, out)
        if op == "flatten":
            return self.flatten(x, n.args[0], m.start_dim, m.end_dim, out)
        raise _Unfollowable(f"{type(m).__name__.removeprefix('Parametrized')} is not followed")

    def _record(self, table: dict[str, list[int]], q: str, vs: list[int]) -> None:
        if q in table:  # a module called again: its channels are the same ones
            if len(table[q]) != len(vs):
                raise _Unfollowable("called with different channel counts")
            for a, b in zip(table[q], vs):
                self.a.vars.union(a, b)
        else:
            table[q] = list(vs)

    def _mixing(self, q: str, cols: int, x: Tracked | None, out_channels: int, group_of=None) -> torch.Tensor:
        """Out channel o is input-independent iff every column it weighs non-zero is."""
        w = self.weights[q]
        used = w.reshape(w.shape[0], w.shape[1], -1).ne(0).any(dim=2)  # (out, in per group)
        indep_in = x.indep if x is not None else torch.zeros(cols, dtype=torch.bool)
        if group_of is None:
            return ~(used & ~indep_in[None, :]).any(dim=1)
        per = w.shape[1]
        rows = []
        for o in range(out_channels):
            g = group_of(o)
            rows.append(not bool((used[o] & ~indep_in[g * per:(g + 1) * per]).any()))
        return torch.tensor(rows, dtype=torch.bool)

    def _single_call(self, q: str) -> None:
        if q in self.a.producers:  # called again: its channels cannot follow two places
            reason = f"module {q} is called at several places"
            self.a.vars.pin(self.a.producers[q] + self.a.inputs.get(q, []), reason)
            raise _Unfollowable(reason)

    def mix(self, n: fx.Node, q: str, m: nn.Module, x: Tracked | None, out) -> Tracked:
        """A layer that reads input channels and writes new ones (a convolution, Linear; see `machop.nn.layers`)."""
        if x is None or x.dim != kind_of(m).input_channel_dim % x.value.dim():
            raise _Unfollowable("its input channels are not followed")
        self._single_call(q)
        cout, cin, groups = channels(m)
        dim = kind_of(m).input_channel_dim % out.dim()
        if groups == 1:
            indep = self._mixing(q, cin, x, cout)
            self.a.readers.append(Reader(n, q, n.args[0], list(x.vars)))
            self.a.inputs[q] = list(x.vars)
            vs = self.a.vars.new(cout)
            self.a.producers[q] = vs
            return Tracked(dim, vs, indep, out)
        per_out = cout // groups
        indep = self._mixing(q, cin, x, cout, group_of=lambda o: o // per_out)
        if is_depthwise(m):  # channel c reads input channel c only
            self.a.depthwise.add(q)
            self.a.producers[q] = list(x.vars)
            return Tracked(dim, list(x.vars), indep, out)
        self.a.vars.pin(x.vars, f"read by grouped convolution {n.name} (groups={groups})")
        vs = self.a.vars.new(cout, f"produced by grouped convolution {n.name} (groups={groups})")
        self.a.producers[q] = vs
        return Tracked(dim, vs, indep, out)

    # ------------------------------------------------------------------ functions and methods
    def on_function(self, n: fx.Node, out) -> Tracked | None:
        flow = function_flow(n.target)
        x = self.t(n.args[0]) if n.args else None
        if flow == "ignore":
            return None
        if flow == "through" and x is not None and len(_tensors_in((n.args[1:], n.kwargs))) == 0:
            return self.same(x, out)
        if flow == "pool" and x is not None:
            if x.dim != 1:
                raise _Unfollowable("pooling over the tracked channel dimension")
            return self.same(x, out)
        if flow == "binary":
            return self.binary(n, out)
        if flow == "flatten" and x is not None:
            start = n.kwargs.get("start_dim", n.args[1] if len(n.args) > 1 else 0)
            end = n.kwargs.get("end_dim", n.args[2] if len(n.args) > 2 else -1)
            return self.flatten(x, n.args[0], start, end, out)
        if flow == "cat":
            parts = n.args[0] if n.args else n.kwargs.get("tensors")
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
            return self.cat(list(parts), dim, out)
        if flow == "reduce" and x is not None:
            return self.reduce(n, x, out)
        raise _Unfollowable("not followed")

    def on_method(self, n: fx.Node, out) -> Tracked | None:
        flow = method_flow(n.target)
        x = self.t(n.args[0]) if n.args else None
        if flow == "ignore":
            return None
        if x is None:
            raise _Unfollowable("not followed")
        if flow == "through" and len(_tensors_in((n.args[1:], n.kwargs))) == 0:
            return self.same(x, out)
        if flow == "binary":
            return self.binary(n, out)
        if flow == "flatten":
            start = n.kwargs.get("start_dim", n.args[1] if len(n.args) > 1 else 0)
            end = n.kwargs.get("end_dim", n.args[2] if len(n.args) > 2 else -1)
            return self.flatten(x, n.args[0], start, end, out)
        if flow == "reshape":
            return self.reshape(n, x, out)
        if flow == "reduce":
            return self.reduce(n, x, out)
        raise _Unfollowable("not followed")

    def binary(self, n: fx.Node, out) -> Tracked:
        if not isinstance(out, torch.Tensor):
            raise _Unfollowable("no tensor output")
        operands = list(n.args[:2]) + [n.kwargs[k] for k in ("other", "input") if k in n.kwargs]
        tracked, indep = [], None
        for arg in operands:
            if isinstance(arg, (int, float, bool)):
                continue
            t = self.t(arg)
            if t is None:  # a tensor the analysis does not follow: fine only if it is one value per channel position
                raise _Unfollowable("an operand is not followed")
            aligned = t.dim + out.dim() - t.value.dim()
            if t.value.shape[t.dim] != out.shape[aligned]:
                raise _Unfollowable("an operand broadcasts over the channels")
            tracked.append((t, aligned))
        if not tracked:
            raise _Unfollowable("no followed operand")
        first, dim = tracked[0]
        for t, aligned in tracked[1:]:
            if aligned != dim:
                raise _Unfollowable("operands have their channels on different dimensions")
            for a, b in zip(first.vars, t.vars):
                self.a.vars.union(a, b)
        indep = first.indep.clone()
        for t, _ in tracked[1:]:
            indep &= t.indep
        return Tracked(dim, list(first.vars), indep, out)

    def flatten(self, x: Tracked, src: fx.Node, start: int, end: int, out) -> Tracked:
        nd = x.value.dim()
        start, end = start % nd, end % nd
        if x.dim < start:
            return self.same(x, out)
        if x.dim > end:
            return self.same(x, out, dim=x.dim - (end - start))
        if x.dim != start:
            raise _Unfollowable("flattens dimensions before the channels into them")
        rep = math.prod(x.value.shape[x.dim + 1:end + 1])
        vs = [v for v in x.vars for _ in range(rep)]
        indep = x.indep.repeat_interleave(rep)
        return Tracked(start, vs, indep, out)

    def reshape(self, n: fx.Node, x: Tracked, out) -> Tracked:
        shape = list(n.args[1:]) if len(n.args) > 1 else list(n.kwargs.get("shape", ()))
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = list(shape[0])
        if tuple(out.shape) == tuple(x.value.shape):
            return self.same(x, out)
        nd = x.value.dim()
        flat = (out.dim() == x.dim + 1 and tuple(out.shape[:x.dim]) == tuple(x.value.shape[:x.dim])
                and out.shape[x.dim] == math.prod(x.value.shape[x.dim:]))
        fixed = [s for i, s in enumerate(shape) if isinstance(s, int) and s != -1 and i >= x.dim]
        if not flat or fixed:
            raise _Unfollowable("a reshape to a fixed size (use flatten or -1)" if flat else "a reshape")
        return self.flatten(x, n.args[0], x.dim, nd - 1, out)

    def reduce(self, n: fx.Node, x: Tracked, out) -> Tracked:
        dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
        if dims is None:
            raise _Unfollowable("reduces over every dimension")
        nd = x.value.dim()
        dims = {d % nd for d in ((dims,) if isinstance(dims, int) else dims)}
        if x.dim in dims:
            raise _Unfollowable("reduces over the channels")
        dim = x.dim if keep else x.dim - sum(1 for d in dims if d < x.dim)
        return self.same(x, out, dim=dim)

    def cat(self, parts: list, dim: int, out) -> Tracked:
        ts = [self.t(p) for p in parts]
        if any(t is None for t in ts):
            raise _Unfollowable("concatenates a tensor that is not followed")
        nd = out.dim()
        dim = dim % nd
        if any(t.dim != ts[0].dim for t in ts):
            raise _Unfollowable("concatenates tensors with channels on different dimensions")
        if dim == ts[0].dim:
            return Tracked(dim, [v for t in ts for v in t.vars], torch.cat([t.indep for t in ts]), out)
        for t in ts[1:]:
            for a, b in zip(ts[0].vars, t.vars):
                self.a.vars.union(a, b)
        indep = ts[0].indep.clone()
        for t in ts[1:]:
            indep &= t.indep
        return Tracked(ts[0].dim, list(ts[0].vars), indep, out)


class _Unfollowable(Exception):
    pass


def analyse(gm: fx.GraphModule, inputs: tuple, weights: dict[str, torch.Tensor]) -> Analysis:
    """Run ``gm`` once on ``inputs`` (eval mode, no grad) and follow every channel (see module doc).

    ``weights``: the effective weight of every convolution and Linear module, by qualified name.
    """
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            runner = _Runner(gm, weights)
            runner.run(*inputs)
    finally:
        gm.train(was_training)
    return runner.a


def sample_inputs(graph: MaseGraph) -> tuple[torch.Tensor, ...]:
    """A few inputs to follow channels with: the graph's dummy input, or random images of its data set's shape."""
    if graph.dummy_inputs is not None:
        return tuple(t[:4].to(graph.device) for t in graph.dummy_inputs)
    info = graph.context.dataset_info
    if info is not None:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(2, info.in_channels, *info.image_size, generator=g).to(graph.device),)
    raise ValueError("following channels needs the model's input shape: set graph.dummy_input "
                     "(or graph.context.dataset_info for a registry model)")


def effective_weights(gm: nn.Module) -> dict[str, torch.Tensor]:
    """Every channel-mixing layer's weight (convolutions, Linear) as the model computes with it (masks applied), on CPU."""
    out = {}
    for q, m in gm.named_modules():
        if flow_of(m) == "mix" and ".parametrizations" not in f".{q}":
            with torch.no_grad():
                out[q] = m.weight.detach().cpu()
    return out


def follow(graph: MaseGraph, weights: dict[str, torch.Tensor] | None = None) -> Analysis:
    """`analyse` ``graph`` on `sample_inputs` with ``weights`` (default: its `effective_weights`)."""
    return analyse(graph.model, sample_inputs(graph), effective_weights(graph.model) if weights is None else weights)


@dataclass
class Coupling:
    """Layers whose output channels are coupled (a residual ``add``, a depthwise convolution, ...).

    ``units[i]``: the ``(layer qualname, output channel)`` pairs that are one
    channel variable: removable only together.
    """

    layers: list[str]
    units: list[list[tuple[str, int]]]


def couplings(a: Analysis) -> list[Coupling]:
    """Every set of two or more convolution/Linear layers that share output channel variables, in graph order."""
    by_root: dict[int, list[tuple[str, int]]] = {}
    for q, vs in a.producers.items():
        for c, v in enumerate(vs):
            by_root.setdefault(a.vars.find(v), []).append((q, c))
    index = {q: i for i, q in enumerate(a.producers)}
    clusters = Vars()  # over layers: two layers sharing a channel variable are one cluster
    clusters.new(len(index))
    for members in by_root.values():
        for q, _ in members[1:]:
            clusters.union(index[members[0][0]], index[q])
    layers: dict[int, list[str]] = {}
    for q, i in index.items():
        layers.setdefault(clusters.find(i), []).append(q)
    out = []
    for qs in layers.values():
        if len(qs) > 1:
            roots = dict.fromkeys(a.vars.find(v) for q in qs for v in a.producers[q])
            out.append(Coupling(qs, [by_root[r] for r in roots]))
    return out


def reader_weights(a: Analysis, weights: dict[str, torch.Tensor], q: str) -> torch.Tensor | None:
    """``(C, S)``: per output channel of layer ``q``, every weight downstream that reads it, or None.

    A channel is read at every reader column carrying its channel variable
    (after BatchNorm, activations, pooling, residual adds, flatten, ...).
    None when the layer's channels are not followed or are pinned (they
    reach the model output or an op the analysis does not understand), when
    nothing reads them, or when a reader reads its channels unevenly.
    ``weights``: the effective weights the analysis ran with.
    """
    vs = a.producers.get(q)
    if vs is None or any(a.vars.pinned(v) for v in vs):
        return None
    roots = [a.vars.find(v) for v in vs]
    slices = []
    for rd in a.readers:
        columns = [[j for j, v in enumerate(rd.vars) if a.vars.find(v) == r] for r in roots]
        if not any(columns):
            continue
        if len({len(c) for c in columns}) != 1:
            return None
        w = weights[rd.qualname].movedim(1, 0)  # (input columns, out, kernel...)
        index = torch.tensor(columns, dtype=torch.long)
        slices.append(w[index].reshape(len(vs), -1))
    return torch.cat(slices, dim=1) if slices else None
