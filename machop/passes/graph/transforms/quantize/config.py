"""The ``[passes.quantize]`` table, as MASE writes it, parsed and validated.

.. code-block:: toml

    [passes.quantize]
    by = "type"                       # "type" | "name" | "regex_name"
    side = "float32"                  # optional; "float16" | "bfloat16": round every other float parameter
                                      # (biases, norm affine parameters) to it, stored so in the .mchz file
    max_acc_drop = 0.002              # optional; weight_bits = "auto": the summed accuracy loss allowed
    value_bits = 3.0                  # optional, instead of max_acc_drop: bits per kept weight for values + codebooks
    samples = 2000                    # optional; weight_bits = "auto": validation images measured
    calibration_samples = 256         # optional; data_in_frac_width = "auto": training inputs calibrated on

    [passes.quantize.default.config]  # layers no other key selects
    name = "NA"                       # "NA": leave the layer alone

    [passes.quantize.linear.config]   # by = "type": a layer kind (machop.nn.KINDS): linear, conv1d, conv2d,
                                      # conv3d, convtranspose1d/2d/3d, embedding, mha (attention), lstm, gru, rnn
    name = "integer"                  # signed fixed point
    data_in_width = 8                 # "NA" (both width and frac): input not quantized
    data_in_frac_width = 4
    weight_width = 8
    weight_frac_width = 6
    bias_width = 8                    # "NA" (both width and frac): bias not quantized
    bias_frac_width = 4               # any frac width may be "auto": chosen per layer (see below)
    weight_granularity = "tensor"     # optional; "channel": one weight frac width per output channel

    [passes.quantize.conv2d.config]
    name = "kmeans"                   # Deep Compression weight sharing
    weight_bits = 8                   # optional; default 8 for convolutions, 5 for the rest; "auto": chosen
    init = "linear"                   # optional; "linear" | "density" | "random"
    max_iter = 300                    # optional; Lloyd iterations at most
    tol = 1e-4                        # optional; stop when the squared centroid shift <= tol * var(weights)
    codebook = "float32"              # optional; "float16" | "bfloat16": centroids used and stored in 16 bits
    bias = "float32"                  # optional; "float16" | "bfloat16": the layer's bias likewise

The six ``integer`` keys are all required, as MASE writes them; a
``"NA"`` width/frac pair leaves that tensor (input or bias) in float.

With ``by = "name"`` the keys are weight names (``features_0``,
``lstm.weight_hh_l0``; see `machop.nn.Weight`) or the name of a module or
parent module, which selects every weight under it (the most specific key
wins); with ``by = "regex_name"`` they are regular expressions fully
matched against weight names, the first matching key (in file order) wins.
``default`` is optional (absent = ``name = "NA"``). A key that matches no
weight (a ``conv2d`` key on an MLP included) is a `ConfigError` listing the
valid names or types, raised before anything changes (`check_quantize_args`).

``integer`` quantizes the weight, its bias (``bias``, ``in_proj_bias``,
``bias_ih_l0``, ...) and, for a layer that is a node of the graph, its first
input; a weight inside a module with no node of its own (the Linear layers
of an ``nn.TransformerEncoderLayer``) and an embedding (whose input is
token indices) keep a float input, and the pass's info says so.

``codebook``, ``bias`` and ``side`` make the model *use* the values the
compressed file stores in 16 bits (`machop.nn.Compact`, rounding with a
straight-through gradient; `KMeansWeight` rounds its centroids): set them
before the last fine-tune and the decoded model stays bit-identical.
``side`` applies, after the layer configs, to every float parameter that is
not a compressible weight and has no parametrization yet (biases of layers
left alone or k-means layers without ``bias``, batch-norm weight and bias,
...); a fixed-point bias keeps its fixed point. Buffers (batch-norm running
statistics) cannot be parametrized: they stay as they are (in their dtype).
``"float32"`` (the default) leaves everything as before: in the model's own
dtype (a float64, float16 or bfloat16 model keeps it; its k-means centroids
are in the weight's dtype, its fixed point is computed in float32, float64
for float64, and cast back).

``weight_bits = "auto"`` lets the pass choose each such layer's width
(1..8) from the layers' sensitivity to weight sharing: every auto layer is
shared alone at each width and evaluated on ``samples`` validation images
(`machop.passes.graph.analysis.sensitivity`), then the widths with the
smallest coded size whose summed accuracy loss stays within
``max_acc_drop`` are taken (`allocation.choose_bits`; a width costs its
kept values at their label entropy plus its codebook, so a 256-entry
codebook never goes to a 325-weight layer). With ``value_bits`` instead,
the budget is in bytes: the widths with the least summed loss whose values
and codebooks average at most ``value_bits`` per kept weight, so the file
lands where a prune step's ``auto.value_bits`` planned it, whatever the
curves' noise. The pass's info holds the
curves and the choice, and the run's ``config.toml`` gets the table
written out per layer (``by = "name"``), so the run repeats exactly.

``"auto"`` frac widths are chosen per layer: among the width whose range
holds the tensor's largest magnitude and the next three finer ones, the one
with the least squared error (rounding and saturation) on the tensor
(`machop.nn.fixed_point.best_frac_width`): weights and biases from their own
values (per output channel with ``weight_granularity
= "channel"``), a layer's input from the largest magnitude it sees on
``calibration_samples`` training inputs of the run's data (one forward pass
of the model as it is before this step). The chosen widths are in the
pass's info (``frac_widths``) and the run's ``config.toml`` gets the table
written out per layer, as for ``weight_bits = "auto"``. A fixed-point layer
whose weights round (nearly) all to zero is logged as a warning and listed
in ``info["warnings"]``.

Ranges: widths 1..16 bits (see `fixed_point`), frac widths 0..32 and allowed
to exceed the width; ``weight_bits`` 1..16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Union

from machop.config import ConfigError, check_range, convert, from_dict, join
from machop.nn import FLOAT_FORMATS, KIND_NAMES, MAX_FRAC_WIDTH, MAX_WIDTH, LayerKind

from machop.nn.kmeans import Init

BY = ("type", "name", "regex_name")
ARITHMETICS = ("integer", "kmeans")
MAX_KMEANS_BITS = 16
AUTO = "auto"  # weight_bits chosen by the pass
AUTO_BITS = tuple(range(1, 9))  # the widths weight_bits = "auto" chooses from
# [passes.quantize] options that are not rules
SCALARS = ("side", "max_acc_drop", "value_bits", "samples", "calibration_samples")
FloatFormat = Literal["float32", "float16", "bfloat16"]  # machop.nn.FLOAT_FORMATS (a test keeps them equal)


def _check_pair(cfg, prefix: str, path: str, optional: bool) -> None:
    width, frac = getattr(cfg, f"{prefix}_width"), getattr(cfg, f"{prefix}_frac_width")
    if optional and (width is None) != (frac is None):
        missing = f"{prefix}_frac_width" if frac is None else f"{prefix}_width"
        raise ConfigError(join(path, missing), f'must be "NA" exactly when {prefix}_width/{prefix}_frac_width is')
    check_range(width, join(path, f"{prefix}_width"), 1, MAX_WIDTH)
    if isinstance(frac, int):
        check_range(frac, join(path, f"{prefix}_frac_width"), 0, MAX_FRAC_WIDTH)


@dataclass
class IntegerConfig:
    """Signed fixed point for inputs, weights and biases (``"NA"`` pair: that tensor stays float).

    A frac width may be ``"auto"``: chosen per layer from the range (weights,
    biases) or from a calibration batch of the run's data (``data_in``), see
    `machop.nn.fixed_point.best_frac_width`. ``weight_granularity =
    "channel"`` gives every output channel its own weight frac width (with
    ``weight_frac_width = "auto"``, or a list of one width per channel as the
    run's ``config.toml`` writes it out).
    """

    name: Literal["integer"]
    data_in_width: int | None
    data_in_frac_width: int | Literal["auto"] | None
    weight_width: int
    weight_frac_width: int | list[int] | Literal["auto"]
    bias_width: int | None
    bias_frac_width: int | Literal["auto"] | None
    weight_granularity: Literal["tensor", "channel"] = "tensor"

    def validate(self, path: str) -> None:
        _check_pair(self, "data_in", path, optional=True)
        _check_pair(self, "weight", path, optional=False)
        _check_pair(self, "bias", path, optional=True)
        key = join(path, "weight_frac_width")
        if self.weight_granularity == "channel" and isinstance(self.weight_frac_width, int):
            raise ConfigError(key, 'with weight_granularity = "channel" it must be "auto" or a list of '
                                   f"one width per output channel, got {self.weight_frac_width}")
        if isinstance(self.weight_frac_width, list):
            if self.weight_granularity != "channel":
                raise ConfigError(key, 'a list of widths needs weight_granularity = "channel"')
            if not self.weight_frac_width:
                raise ConfigError(key, "must not be an empty list")
            for i, f in enumerate(self.weight_frac_width):
                check_range(f, f"{key}[{i}]", 0, MAX_FRAC_WIDTH)

    def has_auto(self) -> bool:
        """True when a frac width is chosen by the pass."""
        return AUTO in (self.data_in_frac_width, self.weight_frac_width, self.bias_frac_width)


@dataclass
class KMeansConfig:
    """Weight sharing: ``2**weight_bits`` shared values per layer, found by 1-D k-means."""

    name: Literal["kmeans"]
    weight_bits: int | Literal["auto"] | None = None  # None: the kind's default (8 conv, 5 others); "auto": chosen
    init: Init = "linear"
    max_iter: int = 300
    tol: float = 1e-4
    codebook: FloatFormat = "float32"  # the centroids' format, used in forward and stored
    bias: FloatFormat = "float32"  # the bias's format (float32: left alone, or to ``side``)

    def validate(self, path: str) -> None:
        if self.weight_bits != AUTO:
            check_range(self.weight_bits, join(path, "weight_bits"), 1, MAX_KMEANS_BITS)
        check_range(self.max_iter, join(path, "max_iter"), 1, 100_000)
        check_range(self.tol, join(path, "tol"), 0.0, float("inf"))

    def bits_for(self, kind: LayerKind) -> int:
        """The width this config gives a layer of ``kind`` (not for ``"auto"``: the pass chooses those)."""
        if self.weight_bits == AUTO:
            raise ValueError('weight_bits = "auto" is chosen by the quantize pass')
        return self.weight_bits if self.weight_bits is not None else kind.kmeans_bits


LayerConfig = Union[IntegerConfig, KMeansConfig, None]  # None: leave the layer alone


@dataclass
class QuantizeArgs:
    """Validated pass arguments. ``rules`` maps each key (op type, node name or regex) to its config."""

    by: Literal["type", "name", "regex_name"]
    default: LayerConfig = None
    rules: dict[str, LayerConfig] = field(default_factory=dict)
    path: str = "passes.quantize"
    side: str = "float32"  # FloatFormat of every other float parameter (see the module docstring)
    max_acc_drop: float = 0.002  # weight_bits = "auto": summed accuracy loss allowed
    value_bits: float | None = None  # weight_bits = "auto", instead of max_acc_drop: bits per kept weight for values
    samples: int = 2000  # weight_bits = "auto": validation images measured
    calibration_samples: int = 256  # data_in_frac_width = "auto": training inputs the input ranges are taken from

    def bits_limit(self) -> dict[str, float]:
        """What ``weight_bits = "auto"`` keeps within: ``{"value_bits": v}`` if given, else ``{"max_acc_drop": d}``."""
        return {"max_acc_drop": self.max_acc_drop} if self.value_bits is None else {"value_bits": self.value_bits}

    def patterns(self) -> dict[str, re.Pattern]:
        return {key: re.compile(key) for key in self.rules} if self.by == "regex_name" else {}


def parse_layer_config(table: object, path: str) -> LayerConfig:
    """One ``[... .config]`` table → `IntegerConfig`, `KMeansConfig` or None (``name = "NA"``)."""
    if not isinstance(table, dict):
        raise ConfigError(path, f"must be a table, got {table!r}")
    if "name" not in table:
        raise ConfigError(join(path, "name"), f"is required; choose from {', '.join(ARITHMETICS)}, NA")
    name = table["name"]
    if name == "NA" or name is None:
        extra = sorted(k for k in table if k != "name")
        if extra:
            raise ConfigError(join(path, extra[0]), 'unknown key: with name = "NA" the layer is left alone')
        return None
    if name == "integer":
        return from_dict(IntegerConfig, table, path)
    if name == "kmeans":
        return from_dict(KMeansConfig, table, path)
    choices = ", ".join(repr(a) for a in ARITHMETICS)
    raise ConfigError(join(path, "name"), f"must be one of {choices}, 'NA', got {name!r}")


def parse_quantize_args(pass_args: dict | None, path: str = "passes.quantize") -> QuantizeArgs:
    """Validate ``[passes.quantize]`` (never mutating it); raises `ConfigError` naming the key."""
    if pass_args is None:
        pass_args = {}
    if not isinstance(pass_args, dict):
        raise ConfigError(path, f"must be a table, got {pass_args!r}")
    if "by" not in pass_args:
        raise ConfigError(join(path, "by"), f"is required; choose from {', '.join(BY)}")
    by = pass_args["by"]
    if by not in BY:
        raise ConfigError(join(path, "by"), f"must be one of {', '.join(repr(b) for b in BY)}, got {by!r}")
    args = QuantizeArgs(by=by, path=path)
    # scalar options; a table under one of these names is a rule (by = "name")
    if "side" in pass_args and not isinstance(pass_args["side"], dict):
        side = pass_args["side"]
        if side not in FLOAT_FORMATS:
            raise ConfigError(join(path, "side"), f"must be one of {', '.join(map(repr, FLOAT_FORMATS))}, got {side!r}")
        args.side = side
    if "max_acc_drop" in pass_args and not isinstance(pass_args["max_acc_drop"], dict):
        args.max_acc_drop = convert(float, pass_args["max_acc_drop"], join(path, "max_acc_drop"))
        check_range(args.max_acc_drop, join(path, "max_acc_drop"), 0, 1)
    if "value_bits" in pass_args and not isinstance(pass_args["value_bits"], dict):
        if "max_acc_drop" in pass_args and not isinstance(pass_args["max_acc_drop"], dict):
            raise ConfigError(join(path, "value_bits"), "give max_acc_drop or value_bits, not both")
        args.value_bits = convert(float, pass_args["value_bits"], join(path, "value_bits"))
        if not 0 < args.value_bits <= 32:
            raise ConfigError(join(path, "value_bits"), f"must be in (0, 32], got {args.value_bits}")
    if "samples" in pass_args and not isinstance(pass_args["samples"], dict):
        args.samples = convert(int, pass_args["samples"], join(path, "samples"))
        check_range(args.samples, join(path, "samples"), 1, 10_000_000)
    if "calibration_samples" in pass_args and not isinstance(pass_args["calibration_samples"], dict):
        args.calibration_samples = convert(int, pass_args["calibration_samples"], join(path, "calibration_samples"))
        check_range(args.calibration_samples, join(path, "calibration_samples"), 1, 1_000_000)
    for key, entry in pass_args.items():
        if key == "by" or (key in SCALARS and not isinstance(entry, dict)):
            continue
        key_path = join(path, key)
        if not isinstance(entry, dict):
            raise ConfigError(key_path, f"must be a table with a 'config' table, got {entry!r}")
        unknown = sorted(set(entry) - {"config"})
        if unknown:
            raise ConfigError(join(key_path, unknown[0]), "unknown key; allowed keys: config")
        if "config" not in entry:
            raise ConfigError(join(key_path, "config"), "is required")
        cfg = parse_layer_config(entry["config"], join(key_path, "config"))
        if key == "default":
            args.default = cfg
            continue
        if by == "type" and key not in KIND_NAMES:
            keys = ", ".join(KIND_NAMES)
            raise ConfigError(key_path, f'unknown op type; with by = "type" the keys are {keys}, default')
        if by == "regex_name":
            try:
                re.compile(key)
            except re.error as e:
                raise ConfigError(key_path, f"is not a valid regular expression ({e})") from None
        args.rules[key] = cfg
    return args
