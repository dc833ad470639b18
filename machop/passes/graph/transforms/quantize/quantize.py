"""The quantize pass: fixed point (``integer``) or k-means weight sharing (``kmeans``) per weight.

Every compressible weight the config selects (see `config`) is quantized in place:

- ``integer``: `FixedPoint` parametrizations on the weight and its bias
  (after any prune mask, so zeros stay zero) and a `FixedPoint` module
  inserted in the fx graph in front of each node calling the layer, for its
  input;
- ``kmeans``: a `KMeansWeight` parametrization on the weight (after any
  prune mask) holding the centroids (trainable), the cluster index and the
  prune mask (or all True). The original weight stays underneath, frozen.
  ``codebook`` rounds the centroids to 16 bits in forward; ``bias`` puts a
  `Compact` parametrization (16-bit rounding) on the layer's bias;
- ``side``: a `Compact` parametrization on every float parameter that is
  not a compressible weight and has no parametrization yet.

A tied weight or a layer called twice is one weight: quantized once, one
codebook at every site. A weight is quantized once: selecting an already
quantized weight is an error (a later pass never silently undoes an earlier
one). The arguments are validated, and every key is checked against the
graph, before anything changes.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch.nn.utils import parametrize

from machop.config import ConfigError, join, pass_path
from machop.ir import MaseGraph
from machop.nn import (
    Compact,
    FixedPoint,
    KMeansWeight,
    Weight,
    get_mask,
    index_dtype,
    kmeans_1d,
    most_specific,
    quantizer_of,
    register,
    require_finite,
    tensor_sites,
)
from machop.nn.fixed_point import ChannelFixedPoint, auto_candidates, best_frac_width, squared_errors
from machop.passes.graph.analysis.allocation import InfeasibleBudget, choose_bits
from machop.passes.graph.analysis.quantization import input_quantizer, quantization_row, totals
from machop.passes.graph.analysis.sensitivity import Sensitivity, measure_sensitivity
from machop.training import calibration_batch

from .config import (
    AUTO,
    AUTO_BITS,
    KIND_NAMES,
    IntegerConfig,
    KMeansConfig,
    LayerConfig,
    QuantizeArgs,
    parse_quantize_args,
)

logger = logging.getLogger(__name__)

ZEROED_WARNING = 0.99  # a fixed-point layer rounding this share of its non-zero weights to zero is warned about


def select_weights(graph: MaseGraph, args: QuantizeArgs) -> list[tuple[Weight, LayerConfig]]:
    """Each compressible weight with the config that applies to it (``default`` when no key does).

    Raises `ConfigError` for a key that selects no weight, listing the valid keys.
    """
    weights = graph.weights()
    patterns = args.patterns()

    def matches(key: str, w: Weight) -> bool:
        if args.by == "type":
            return KIND_NAMES[key] is w.kind
        if args.by == "name":
            return key in w.ancestry()
        return patterns[key].fullmatch(w.name) is not None

    def key_of(w: Weight) -> str | None:
        if args.by == "name":
            return most_specific(args.rules, w.ancestry(), w.name)
        return next((k for k in args.rules if matches(k, w)), None)  # the first in file order

    for key in args.rules:
        if not any(matches(key, w) for w in weights):
            if args.by == "type":
                valid = f"valid types: {', '.join(sorted({w.kind.name for w in weights})) or 'none'}"
            else:
                valid = f"valid names: {', '.join(w.name for w in weights) or 'none'}"
            raise ConfigError(join(args.path, key), f"matches no weight of this model; {valid}")
    plan, used = [], set()
    for w in weights:
        key = key_of(w)
        used.add(key)
        plan.append((w, args.rules[key] if key is not None else args.default))
    for key in args.rules:
        if key not in used:
            logger.warning("%s: every weight it matches is taken by an earlier key", join(args.path, key))
    return plan


def check_quantize_args(graph: MaseGraph, args: QuantizeArgs, path: str, earlier: list[str] = ()) -> None:
    """Check a parsed quantize table against ``graph`` (every key selects a weight; per-channel widths fit the
    layers' channels) without changing it."""
    for w, cfg in select_weights(graph, args):
        if not isinstance(cfg, IntegerConfig) or cfg.weight_granularity != "channel":
            continue
        key = join(args.path, "weight_granularity")
        if w.kind.channel_dim is None:
            raise ConfigError(key, f'"channel" needs output channels; {w.name} is a {w.kind.name}, which has none')
        n = w.stored().shape[w.kind.channel_dim]
        if isinstance(cfg.weight_frac_width, list) and len(cfg.weight_frac_width) != n:
            raise ConfigError(join(args.path, "weight_frac_width"),
                              f"{len(cfg.weight_frac_width)} widths for {w.name}, which has {n} output channels")


def _check_not_quantized(graph: MaseGraph, w: Weight) -> None:
    for name in (w.tensor_name, w.bias_name):
        if name is not None and (quantizer_of(w.module, name) is not None or _channel_quantizer(w.module, name)):
            raise ValueError(f"{w.name} is already quantized ({name}); a weight can be quantized only once")
    for node in graph.call_nodes(w.qualname):
        if input_quantizer(graph, node) is not None:
            raise ValueError(f"layer {node.name} already has an input quantizer; a layer can be quantized only once")


def _channel_quantizer(module: torch.nn.Module, name: str) -> ChannelFixedPoint | None:
    if not parametrize.is_parametrized(module, name):
        return None
    return next((p for p in module.parametrizations[name] if isinstance(p, ChannelFixedPoint)), None)


def calibrate_inputs(graph: MaseGraph, weights: list[tuple[Weight, int]], samples: int) -> dict[str, dict]:
    """The input frac width ``"auto"`` gives each layer of ``weights`` (pairs of a weight and its input width), from
    ``samples`` training inputs: ``{name: {"max_abs", "frac_width"}}``.

    Two forward passes of the model as it is (eval mode, no gradient, chunks
    of 64): the largest |input| each layer sees (its module's first argument;
    over all its calls), then the squared error of that input at each of the
    `auto_candidates` widths; the least wins (ties: the coarser).
    """
    data = graph.context.require_data("quantize")
    x = calibration_batch(data, samples)
    widths = {w.name: width for w, width in weights}
    seen: dict[str, float] = {}
    errors: dict[str, list[float]] = {}
    candidates: dict[str, list[int]] = {}

    def record_max(name: str, t: torch.Tensor) -> None:
        seen[name] = max(seen.get(name, 0.0), float(t.detach().abs().max()))

    def record_error(name: str, t: torch.Tensor) -> None:
        e = squared_errors(t, widths[name], candidates[name])
        errors[name] = [a + b for a, b in zip(errors.get(name, [0.0] * len(e)), e)]

    for record in (record_max, record_error):
        if record is record_error:
            candidates = {name: auto_candidates(m, widths[name]) for name, m in seen.items()}
        _run_with_input_hooks(graph, [w for w, _ in weights if record is record_max or w.name in seen], x, record)
    return {name: {"max_abs": seen[name],
                   "frac_width": candidates[name][min(range(len(candidates[name])),
                                                      key=lambda i: (errors[name][i], i))]}
            for name in seen}


def _run_with_input_hooks(graph: MaseGraph, weights: list[Weight], x: torch.Tensor, record) -> None:
    """One forward pass over ``x`` calling ``record(name, first input)`` at each call of the weights' modules."""
    hooks = []
    for w in weights:
        def hook(module, args, name=w.name):
            if args and isinstance(args[0], torch.Tensor) and args[0].numel() and args[0].is_floating_point():
                record(name, args[0])
        hooks.append(w.module.register_forward_pre_hook(hook))
    model = graph.model
    was_training = model.training
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    dtype = next((t.dtype for t in model.parameters() if t.is_floating_point()), torch.float32)
    try:
        model.eval()
        with torch.no_grad():
            for chunk in torch.split(x, 64):
                model(chunk.to(device=device, dtype=dtype if chunk.is_floating_point() else chunk.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def resolve_frac_widths(w: Weight, cfg: IntegerConfig, input_frac: int | None) -> dict:
    """The frac widths a layer gets: ``{"weight": int | [int per channel], "bias": int | None, "data_in": int | None}``.

    ``"auto"`` weights and biases by `best_frac_width` on their values (per
    output channel with ``weight_granularity = "channel"``); ``input_frac``:
    the calibrated input's (`calibrate_inputs`).
    """
    with torch.no_grad():
        weight = w.value()
        if cfg.weight_granularity == "channel":
            dim = w.kind.channel_dim
            if isinstance(cfg.weight_frac_width, list):
                fw = list(cfg.weight_frac_width)
            else:
                fw = [best_frac_width(c, cfg.weight_width) for c in weight.detach().movedim(dim, 0)]
        elif cfg.weight_frac_width == AUTO:
            fw = best_frac_width(weight, cfg.weight_width)
        else:
            fw = cfg.weight_frac_width
        fb = cfg.bias_frac_width
        if fb == AUTO:
            bias = getattr(w.module, w.bias_name) if w.bias_name is not None else None
            fb = best_frac_width(bias if bias is not None else torch.zeros(0), cfg.bias_width)
    fx = cfg.data_in_frac_width
    if fx == AUTO:
        fx = input_frac
    return {"weight": fw, "bias": fb, "data_in": fx}


def quantize_integer(graph: MaseGraph, w: Weight, cfg: IntegerConfig, fracs: dict | None = None) -> str | None:
    """Fixed point on the weight, its bias and the layer's input (those whose widths are not "NA").

    ``fracs``: the resolved frac widths (`resolve_frac_widths`; None: ``cfg``'s,
    which must then be numbers). Returns why the input stays float, if it does.
    """
    if fracs is None:
        fracs = {"weight": cfg.weight_frac_width, "bias": cfg.bias_frac_width, "data_in": cfg.data_in_frac_width}
    if isinstance(fracs["weight"], list):
        dim = w.kind.channel_dim
        if dim is None:
            raise ValueError(f'{w.name}: weight_granularity = "channel" needs output channels; a {w.kind.name} has none')
        if len(fracs["weight"]) != w.stored().shape[dim]:
            raise ValueError(f"{w.name}: {len(fracs['weight'])} weight frac widths for {w.stored().shape[dim]} "
                             "output channels")
        register(w, ChannelFixedPoint(cfg.weight_width, fracs["weight"], dim))
    else:
        register(w, FixedPoint(cfg.weight_width, fracs["weight"]))
    if w.bias_name is not None and cfg.bias_width is not None:
        parametrize.register_parametrization(
            w.module, w.bias_name, FixedPoint(cfg.bias_width, fracs["bias"]), unsafe=True
        )
    if cfg.data_in_width is None:
        return None
    if w.kind.input_channel_dim is None:
        return f"its input ({w.kind.name}) is not a tensor of values"
    nodes = graph.call_nodes(w.qualname)
    if not nodes:
        return "its module is not a node of the graph (it runs inside another module)"
    if fracs["data_in"] is None:
        return "no calibration input reached it"
    for node in nodes:
        if input_quantizer(graph, node) is None:  # a module with several weights gets one input quantizer
            graph.insert_before(node, 0, f"{node.name}_data_in_quantizer", FixedPoint(cfg.data_in_width, fracs["data_in"]))
    return None


def zeroed_share(before: torch.Tensor, after: torch.Tensor) -> float:
    """The share of ``before``'s non-zero values that are zero in ``after`` (0 when it has none)."""
    nonzero = before != 0
    count = int(nonzero.sum())
    return float((nonzero & (after == 0)).sum()) / count if count else 0.0


def quantize_kmeans(w: Weight, bits: int, cfg: KMeansConfig, generator: torch.Generator | None = None,
                    model: torch.nn.Module | None = None) -> dict:
    """Share the weight's kept values among at most ``2**bits`` centroids; returns clustering figures.

    The weights the prune mask keeps (all, if unpruned: exact zeros are then
    ordinary values) are clustered; pruned weights stay exactly zero. The
    clustering runs in float64; the centroids are stored in the weight's
    dtype (rounded to it: a float16, bfloat16 or float64 model keeps its
    dtype), so ``weight = centroids[index] * mask`` is in that dtype.
    """
    with torch.no_grad():
        weight = w.value()
        mask = get_mask(w.module, w.tensor_name)
        values = weight.reshape(-1) if mask is None else torch.masked_select(weight, mask)
        result = kmeans_1d(values, 2**bits, cfg.init, cfg.max_iter, cfg.tol, generator)
        centroids = result.centroids.to(weight.dtype)
        if centroids.numel() == 0:  # fully pruned: one (unused) centroid keeps the indexing valid
            centroids = torch.zeros(1, dtype=weight.dtype, device=weight.device)
        labels = result.labels.to(index_dtype(centroids.numel()))
        if mask is None:
            mask = torch.ones_like(weight, dtype=torch.bool)
            index = labels.view(weight.shape)
        else:
            index = torch.zeros(weight.shape, dtype=labels.dtype, device=weight.device).masked_scatter_(mask, labels)
    register(w, KMeansWeight(centroids, index, mask, bits, codebook=cfg.codebook))
    w.stored().requires_grad_(False)
    if cfg.bias != "float32" and w.bias_name is not None and not parametrize.is_parametrized(w.module, w.bias_name):
        compact(w.module if model is None else model, w.module, w.bias_name, cfg.bias)
    return {"n_iter": result.n_iter, "converged": result.converged, "sse": result.sse, "relocation": result.relocation}


def compact(model, module, name: str, dtype: str) -> str:
    """A `Compact` (16-bit rounding) parametrization on ``module.name``, at every site of ``model`` holding it.

    Returns the first site's ``module.name`` key.
    """
    param = module._parameters[name]
    group = tensor_sites(model).get(id(param)) or [("", module, name)]
    rounding = Compact(dtype)  # one object at every site of a tied parameter
    for _, m, n in group:
        parametrize.register_parametrization(m, n, rounding, unsafe=True)
    return f"{group[0][0]}.{group[0][2]}".lstrip(".")


def compact_side(graph: MaseGraph, dtype: str) -> list[str]:
    """`Compact` on every float parameter that is not a compressible weight and has no parametrization yet.

    Returns the ``module.name`` keys it rounds (a tied parameter once).
    """
    weights = {id(w.stored()) for w in graph.weights()}
    done = []
    for group in tensor_sites(graph.model).values():
        _, module, name = group[0]
        if parametrize.is_parametrized(module, name):
            continue
        param = module._parameters[name]
        if id(param) in weights or not param.is_floating_point():
            continue
        done.append(compact(graph.model, module, name, dtype))
    return done


def choose_auto_bits(graph: MaseGraph, args: QuantizeArgs,
                     plan: list[tuple[Weight, LayerConfig]]) -> tuple[dict[str, int], Sensitivity | None]:
    """The width of every ``weight_bits = "auto"`` layer, from its measured sensitivity (see `config`)."""
    auto = [(w, cfg) for w, cfg in plan if isinstance(cfg, KMeansConfig) and cfg.weight_bits == AUTO]
    if not auto:
        return {}, None
    graph.context.require_data("quantize")
    sens = measure_sensitivity(graph, [w for w, _ in auto], sparsities=(), bits=AUTO_BITS, samples=args.samples,
                               progress=graph.context.progress_bar)
    codebook_bits = {w.name: 32 if cfg.codebook == "float32" else 16 for w, cfg in auto}
    (key, limit), = args.bits_limit().items()
    try:
        chosen = choose_bits(sens, codebook_bits=codebook_bits, **{key: limit})
    except InfeasibleBudget as e:
        raise ConfigError(join(args.path, key), f"no k-means widths (1-8) stay within it: {e}") from None
    logger.info("weight_bits = auto (%s %g): %s", key, limit,
                ", ".join(f"{name} {bits}" for name, bits in chosen.items()))
    return chosen, sens


def written_out(args: QuantizeArgs, plan: list[tuple[Weight, LayerConfig]], bits: dict[str, int],
                fracs: dict[str, dict] | None = None) -> dict:
    """The table that repeats this step exactly: every quantized weight by name with its widths spelled out."""
    table: dict = {"by": "name", "side": args.side, "calibration_samples": args.calibration_samples,
                   "default": {"config": {"name": "NA"}}}
    fracs = fracs or {}
    for w, cfg in plan:
        if cfg is None:
            continue
        config = dataclasses.asdict(cfg)
        if isinstance(cfg, KMeansConfig):
            config["weight_bits"] = bits[w.name] if cfg.weight_bits == AUTO else cfg.bits_for(w.kind)
        elif w.name in fracs:
            chosen = fracs[w.name]
            config["weight_frac_width"] = chosen["weight"]
            if cfg.bias_frac_width == AUTO:
                config["bias_frac_width"] = chosen["bias"]
            if cfg.data_in_frac_width == AUTO:
                if chosen["data_in"] is None:  # no input quantizer: the pair written as "NA"
                    config["data_in_width"] = config["data_in_frac_width"] = "NA"
                else:
                    config["data_in_frac_width"] = chosen["data_in"]
        table[w.name] = {"config": {k: ("NA" if v is None else v) for k, v in config.items()}}
    return table


def _channel_row(row: dict, w: Weight, q: ChannelFixedPoint) -> dict:
    """A summary row's columns for a per-channel fixed-point weight (the analysis knows per-tensor quantizers only)."""
    size = row["size_bits"] - row["weight_size_bits"] + row["numel"] * q.width
    return {**row, "arithmetic": "integer", "bits": q.width, "weight_size_bits": row["numel"] * q.width,
            "size_bits": size, "compression": row["fp32_size_bits"] / size if size else None}


def quantize_transform_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Quantize the weights ``[passes.quantize]`` selects (see `config` for the table).

    Returns ``info = {"by", "layers": [row, ...], "skipped": [{name, reason}], "float_inputs": [{name, reason}],
    "total", "uncompressed", "warnings"}`` (``warnings``: fixed-point layers that round (nearly) all their
    non-zero weights to zero; ``uncompressed``: parameters no pass compresses, with the reason), one row per quantized weight (see `summarize_quantization` for the columns; k-means rows add
    ``n_iter``, ``converged``, ``sse`` and ``relocation``), also written to its node's
    ``graph.meta(node)["software"]["quantize"]``. With ``weight_bits = "auto"`` it adds ``sensitivity``
    (the measured curves) and ``allocation`` (the chosen widths); integer rows with an ``"auto"`` or per-channel
    width add ``frac_widths`` (the widths used, ``"auto"`` resolved) and ``data_in_max_abs`` (calibrated). With any ``"auto"`` it adds ``table``
    (this step written out).
    """
    args = parse_quantize_args(pass_args, pass_path(graph.context.step, "passes.quantize"))
    require_finite(graph.model, pass_path(graph.context.step, "passes.quantize"))  # k-means would make a NaN layer
    check_quantize_args(graph, args, args.path)
    plan = select_weights(graph, args)
    for w, cfg in plan:
        if cfg is not None:
            _check_not_quantized(graph, w)
    auto_bits, sens = choose_auto_bits(graph, args, plan)
    calibrated = [(w, cfg.data_in_width) for w, cfg in plan if isinstance(cfg, IntegerConfig)
                  and cfg.data_in_frac_width == AUTO and graph.call_nodes(w.qualname)]
    inputs = calibrate_inputs(graph, calibrated, args.calibration_samples) if calibrated else {}
    generator = torch.Generator().manual_seed(int(graph.context.training.seed))
    nodes = {n.name: n for n in graph.nodes}
    rows, skipped, float_inputs, warnings, fracs = [], [], [], [], {}
    for w, cfg in plan:
        if cfg is None:
            skipped.append({"name": w.name, "reason": 'config name = "NA" (default)'})
            continue
        extra = {}
        if isinstance(cfg, IntegerConfig):
            chosen = resolve_frac_widths(w, cfg, inputs[w.name]["frac_width"] if w.name in inputs else None)
            with torch.no_grad():
                before = w.value().detach().clone()
            why = quantize_integer(graph, w, cfg, chosen)
            if why is not None:
                float_inputs.append({"name": w.name, "reason": why})
            fracs[w.name] = chosen
            extra = {"frac_widths": chosen} if cfg.has_auto() or isinstance(chosen["weight"], list) else {}
            if w.name in inputs:
                extra["data_in_max_abs"] = inputs[w.name]["max_abs"]
            with torch.no_grad():
                zeroed = zeroed_share(before, w.value())
            if zeroed >= ZEROED_WARNING:
                message = (f"{w.name}: fixed point {cfg.weight_width}.{_frac_text(chosen['weight'])} rounds "
                           f"{zeroed:.1%} of its non-zero weights to zero (largest |weight| "
                           f"{float(before.abs().max()):.3g}); set weight_frac_width = \"auto\"")
                logger.warning("%s", message)
                warnings.append({"name": w.name, "zeroed": zeroed, "message": message})
        else:
            bits = auto_bits[w.name] if cfg.weight_bits == AUTO else cfg.bits_for(w.kind)
            extra = quantize_kmeans(w, bits, cfg, generator, graph.model)
        row = quantization_row(graph, w)
        channel = _channel_quantizer(w.module, w.tensor_name)
        if channel is not None:
            row = _channel_row(row, w, channel)
        if w.node is not None:
            graph.meta(nodes[w.node])["software"]["quantize"] = row
        rows.append({**row, **extra})
        logger.info("quantized %s: %s %d bits, %d distinct values, %.1f kB", w.name, row["arithmetic"],
                    row["bits"], row["distinct"], row["size_bits"] / 8192)
    if skipped:
        logger.info("left in float: %s", ", ".join(s["name"] for s in skipped))
    side = compact_side(graph, args.side) if args.side != "float32" else []
    if side:
        logger.info("side parameters rounded to %s: %s", args.side, ", ".join(side))
    info = {"by": args.by, "layers": rows, "skipped": skipped, "float_inputs": float_inputs, "total": totals(rows),
            "uncompressed": graph.uncompressed(), "warnings": warnings}
    if args.side != "float32":
        info["side"] = {"format": args.side, "tensors": side}
    if sens is not None:
        info |= {"sensitivity": sens.to_json(), "allocation": args.bits_limit() | {"bits": auto_bits}}
    auto_fracs = {w.name: fracs[w.name] for w, cfg in plan if isinstance(cfg, IntegerConfig) and cfg.has_auto()}
    if auto_fracs:
        logger.info("frac widths = auto: %s", ", ".join(
            f"{name} weight {_frac_text(c['weight'])} input {c['data_in']}" for name, c in auto_fracs.items()))
    if sens is not None or auto_fracs:
        info["table"] = written_out(args, plan, auto_bits, fracs)
    return graph, info


def _frac_text(frac: int | list[int]) -> str:
    return str(frac) if isinstance(frac, int) else f"{min(frac)}..{max(frac)}"
