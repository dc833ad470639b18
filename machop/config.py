"""TOML → typed, validated configuration.

Precedence is defaults < config file < command line. Every problem is a
`ConfigError` naming the TOML key (``passes.prune.weight.sparsity``) or the
command-line option, raised before anything runs or is written.

`from_dict` turns a TOML table into a dataclass: it rejects unknown keys,
checks types (``Literal`` choices, ``float | dict[str, float]``, lists, nested
dataclasses), maps the string ``"NA"`` to ``None`` and calls the dataclass's
``validate(path)`` hook for range checks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union


MAX_CONFIG_BYTES = 1 << 20
MAX_NAME_LENGTH = 100
MAX_NAME_BYTES = 200  # of UTF-8: a name becomes part of a file name (255 bytes on most file systems)
INT64 = (-(1 << 63), (1 << 63) - 1)
SEED_RANGE = (0, (1 << 32) - 1)  # Lightning's seed_everything (numpy's seed range)


def one_line(text: str) -> str:
    """``text`` with control and line-break characters escaped (``\\n``), so that it prints as one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class ConfigError(ValueError):
    """A bad configuration value; ``str(err)`` is one line naming the key."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(one_line(f"{key}: {message}" if key else message))

    def under(self, prefix: str) -> "ConfigError":
        """The same error with ``prefix`` put before its key."""
        return ConfigError(join(prefix, self.key), self.message)


def join(path: str, key: str) -> str:
    """``join("passes.prune", "weight")`` → ``"passes.prune.weight"``."""
    return f"{path}.{key}" if path and key else path or key


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a table of {_describe(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(tp, str(tp))


class _Mismatch(ConfigError):
    """``value`` is not of the annotated type at all (a union tries its next member)."""


def convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the type annotation ``tp``; return the typed value.

    Numbers must be finite (TOML has ``nan`` and ``inf``) and integers fit in
    64 bits (TOML's range), whatever the field. In a union, an error from a
    member whose kind the value has (a table's bad entry, a NaN for
    ``float``) is raised as it is, so that it names the inner key.
    """
    if value == "NA":
        value = None
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, path)
            except _Mismatch as e:
                if e.key != path:
                    raise
        raise _Mismatch(path, f"must be {_describe(tp)}, got {value!r}")
    if value is None:
        raise _Mismatch(path, f"must be {_describe(tp)}, got \"NA\"")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise _Mismatch(path, f"must be {_describe(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch(path, f"must be {_describe(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch(path, f"must be {_describe(tp)}, got {value!r}")
        _, item = typing.get_args(tp)
        return {k: convert(item, v, join(path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch(path, f"must be a table, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch(path, f"must be a number, got {value!r}")
        return check_finite(value, path)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch(path, f"must be an integer, got {value!r}")
        if not INT64[0] <= value <= INT64[1]:
            raise ConfigError(path, f"must be a 64-bit integer, got one of {value.bit_length()} bits")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch(path, f"must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch(path, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"config type {tp!r} is not supported")  # a bug in a dataclass, not user input


T = typing.TypeVar("T")


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from a TOML table, validating every key.

    Unknown keys are errors (typos are the commonest config bug). After the
    fields are converted, ``cls.validate(self, path)`` runs if it exists.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _Mismatch(path, f"must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        allowed = f"allowed keys: {', '.join(sorted(fields))}" if fields else "this pass takes no options"
        if len(unknown) == 1:
            raise ConfigError(join(path, unknown[0]), f"unknown key; {allowed}")
        names = ", ".join(join(path, _toml_key(k)) for k in unknown)  # all at once: a config from elsewhere
        raise ConfigError("", f"{len(unknown)} unknown keys: {names}; {allowed}")
    kwargs = {f.name: convert(hints[f.name], data[key], join(path, key)) for key, f in fields.items() if key in data}
    missing = [
        key for key, f in fields.items()
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(join(path, missing[0]), "is required")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path)
    return obj


@dataclass
class NoOptions:
    """The arguments of a pass that takes none: any key is an error."""


def pass_path(step: str | None, default: str) -> str:
    """The TOML path of the running step's table (``passes.prune_2``), or ``default`` outside `ch transform`."""
    return f"passes.{step}" if step else default


def check_finite(value: int | float, path: str) -> float:
    """``value`` as a float; ConfigError unless it is finite (NaN and infinities pass every range check)."""
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(path, f"must be a finite number, got an integer of {value.bit_length()} bits") from None
    if not math.isfinite(number):
        raise ConfigError(path, f"must be a finite number, got {value!r}")
    return number


def check_range(value: float | int | None, path: str, lo: float, hi: float, *, hi_open: bool = False) -> None:
    """Raise ConfigError unless ``lo <= value <= hi`` (``< hi`` with ``hi_open``); NaN is out of every range."""
    if value is None:
        return
    if not lo <= value <= hi or (hi_open and value == hi):
        bracket = ")" if hi_open else "]"
        raise ConfigError(path, f"must be in [{lo}, {hi}{bracket}, got {value}")


def check_name(value: str | None, path: str) -> None:
    """A file name, not a path: it becomes one folder under the output directory, never outside it.

    Refused: an empty name, ``.`` and ``..``, path separators, NUL and other
    control characters, and names over `MAX_NAME_LENGTH` characters or
    `MAX_NAME_BYTES` bytes of UTF-8 (file systems count bytes: 85 CJK
    characters are 255 of them).
    """
    if value is None:
        return
    if not value:
        raise ConfigError(path, "must be a name, got an empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise ConfigError(path, f"must be a name of at most {MAX_NAME_LENGTH} characters, got {len(value)}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise ConfigError(path, f"must be a name of at most {MAX_NAME_BYTES} bytes in UTF-8 (it becomes part of a "
                                f"file name), got {size} bytes in {len(value)} characters")
    if not value.isprintable():
        raise ConfigError(path, f"must be a name without control characters, got {value!r}")
    if "/" in value or "\\" in value or value in (".", ".."):
        raise ConfigError(path, f"must be a name, not a path (no '/', '\\', '.' or '..'), got {value!r}")


def check_path(value: str | None, path: str) -> None:
    """A file or folder path the operating system can take: no NUL character."""
    if value is not None and "\0" in value:
        raise ConfigError(path, f"must be a path without NUL characters, got {value!r}")


# --------------------------------------------------------------------------- the run config


Optimizer = Literal["adam", "sgd", "adamw"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
Strategy = Literal["auto", "ddp", "ddp_spawn", "fsdp", "ddp_find_unused_parameters_true"]
# Lightning's Trainer(precision=...) values, less "transformer-engine*" (they need NVIDIA's transformer_engine package)
Precision = Literal[
    "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "64", "32", "16", "bf16", 64, 32, 16,
]
BatchLimit = int | float  # int first: an integer is a number of batches, a float a fraction (Lightning's rule)


def check_batch_limit(value: BatchLimit, path: str) -> None:
    """A Lightning ``limit_*_batches``: a fraction in (0, 1] (float) or a number of batches >= 1 (int)."""
    if (isinstance(value, float) and not 0 < value <= 1) or (isinstance(value, int) and value < 1):
        raise ConfigError(path, f"must be a fraction in (0, 1] or a whole number of batches >= 1, got {value!r}")


@dataclass
class TrainSettings:
    """The one set of training settings: the run's top-level keys, overridden per train step.

    A train step's ``[passes.X.training]`` table may override
    `TRAINING_KEYS`, its ``[passes.X.trainer]`` table `TRAINER_KEYS`
    (`override`); the command line's choices come from the same annotations.
    """

    TRAINING_KEYS: ClassVar[tuple[str, ...]] = ("max_epochs", "optimizer", "learning_rate", "weight_decay", "batch_size")
    TRAINER_KEYS: ClassVar[tuple[str, ...]] = (
        "max_epochs", "max_steps", "accelerator", "devices", "strategy", "num_nodes", "precision",
        "accumulate_grad_batches", "limit_train_batches", "limit_val_batches", "limit_test_batches",
        "log_every_n_steps",
    )

    batch_size: int = 128
    max_epochs: int = 5
    learning_rate: float = 1e-3
    optimizer: Optimizer = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    accelerator: Accelerator = "auto"
    devices: int | str = 1
    strategy: Strategy = "auto"
    num_nodes: int = 1
    precision: Precision = "32-true"
    max_steps: int = -1  # -1: no limit, as in Lightning
    accumulate_grad_batches: int = 1
    limit_train_batches: BatchLimit = 1.0
    limit_val_batches: BatchLimit = 1.0
    limit_test_batches: BatchLimit = 1.0
    log_every_n_steps: int = 50

    def validate(self, path: str) -> None:
        check_range(self.batch_size, join(path, "batch_size"), 1, 1 << 20)
        check_range(self.max_epochs, join(path, "max_epochs"), 1, 10_000)
        check_range(self.num_nodes, join(path, "num_nodes"), 1, 1 << 16)
        check_range(self.log_every_n_steps, join(path, "log_every_n_steps"), 1, float("inf"))
        check_range(self.seed, join(path, "seed"), *SEED_RANGE)
        if not 0 < self.learning_rate <= 10:
            raise ConfigError(join(path, "learning_rate"), f"must be in (0, 10], got {self.learning_rate}")
        check_range(self.weight_decay, join(path, "weight_decay"), 0.0, 1.0)
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ConfigError(join(path, "devices"), f"must be a positive integer or 'auto', got {self.devices!r}")
        if isinstance(self.devices, int):
            check_range(self.devices, join(path, "devices"), 1, 1024)
        if isinstance(self.precision, float):  # 32.0 == 32 passes the Literal check; Lightning wants 32 or "32"
            raise ConfigError(join(path, "precision"), f"must be {_describe(Precision)}, got {self.precision!r}")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ConfigError(join(path, "max_steps"), f"must be -1 (no limit) or >= 1, got {self.max_steps}")
        check_range(self.accumulate_grad_batches, join(path, "accumulate_grad_batches"), 1, 1 << 20)
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            check_batch_limit(getattr(self, key), join(path, key))

    def override(self, table: Any, keys: tuple[str, ...], path: str) -> "TrainSettings":
        """A copy with the keys of ``table`` (a TOML table; only ``keys`` allowed) replaced, validated."""
        if table is None:
            return self
        if not isinstance(table, dict):
            raise ConfigError(path, f"must be a table, got {table!r}")
        unknown = sorted(set(table) - set(keys))
        if unknown:
            raise ConfigError(join(path, unknown[0]), f"unknown key; allowed keys: {', '.join(sorted(keys))}")
        hints = typing.get_type_hints(TrainSettings)
        values = {k: convert(hints[k], v, join(path, k)) for k, v in table.items()}
        values = {k: v for k, v in values.items() if v is not None}
        dataclasses.replace(TrainSettings(), **values).validate(path)  # name the key of this table
        return dataclasses.replace(self, **values)


def choices(field_name: str) -> tuple[str, ...]:
    """The allowed values of a ``Literal`` field of `Config` (for command-line help)."""
    tp = typing.get_type_hints(Config)[field_name]
    if typing.get_origin(tp) in (Union, types.UnionType):  # Optional[Literal[...]]
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return typing.get_args(tp)


@dataclass
class Config(TrainSettings):
    """Top-level keys, named as MASE names them. ``passes`` keeps file order.

    The training keys are `TrainSettings`'s; `training` returns them alone.
    Model and dataset names are checked against the registries by the
    actions, which know them.
    """

    model: str = "lenet5"
    dataset: str = "fashion_mnist"
    task: Literal["classification", "cls"] = "classification"
    load_name: str | None = None
    load_type: Literal["pl", "pt", "mz", "huffman"] | None = None
    project: str = "default"
    project_dir: str = "mase_output"
    num_workers: int = 0
    data_dir: str | None = None
    val_fraction: float = 0.1
    train_limit: int | None = None  # keep only the first N training images (validation included): a quick run
    test_limit: int | None = None  # keep only the first N test images
    passes: dict[str, dict] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.load_name in ("None", "none"):  # the seed's spellings of no checkpoint
            self.load_name = None
        check_range(self.num_workers, join(path, "num_workers"), 0, 256)
        check_range(self.val_fraction, join(path, "val_fraction"), 0.0, 1.0, hi_open=True)
        check_range(self.train_limit, join(path, "train_limit"), 2, 1 << 40)  # at least one image each to train, validate
        check_range(self.test_limit, join(path, "test_limit"), 1, 1 << 40)
        check_name(self.project, join(path, "project"))
        for key in ("project_dir", "data_dir", "load_name"):
            check_path(getattr(self, key), join(path, key))
        for label, table in self.passes.items():
            check_name(label, join("passes", _toml_key(label)))  # a train step's default checkpoint folder
            if not isinstance(table, dict):
                raise ConfigError(join("passes", label), "must be a table")

    @property
    def training(self) -> TrainSettings:
        """The training settings of the run."""
        return TrainSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainSettings)})


def read_toml(path: str | os.PathLike) -> dict:
    """Parse a TOML file; a missing, unreadable, oversized or malformed file is a ConfigError naming it.

    The size is checked before parsing (a config is a few hundred bytes), and
    nesting too deep for the parser is an error like any other bad TOML.
    """
    p = Path(path)
    try:
        exists, is_file = p.exists(), p.is_file()
    except OSError as e:
        raise ConfigError("--config", f"cannot read {p}: {e.strerror or e}") from None
    if not exists:
        raise ConfigError("--config", f"no such file: {p}")
    if not is_file:
        raise ConfigError("--config", f"not a file: {p}")
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError("--config", f"cannot read {p}: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("--config", f"{p} is larger than {MAX_CONFIG_BYTES >> 20} MiB, the most a config file may be")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError("--config", f"{p} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None
    except RecursionError:
        raise ConfigError("--config", f"{p} is not valid TOML (arrays or tables nested too deeply)") from None
    except ValueError as e:  # tomllib.TOMLDecodeError, or an integer too long to convert
        raise ConfigError("--config", f"{p} is not valid TOML ({e})") from None


def config_data(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """The TOML file at ``path`` with ``overrides`` (command-line values, None = not given) put over it, unchecked."""
    data = read_toml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return data


TRAIN_PASS_NAMES = ("train", "retrain")


def _capped(table: Any, cap: int, default: int) -> tuple[Any, int, int]:
    """(a step's table with its ``training``/``trainer`` max_epochs capped, its epochs before, after)."""
    if not isinstance(table, dict):
        return table, default, default
    table = dict(table)
    epochs = default
    for sub in ("trainer", "training"):  # training's max_epochs is applied last (`step_settings`)
        inner = table.get(sub)
        if isinstance(inner, dict) and isinstance(inner.get("max_epochs"), int) and not isinstance(
                inner.get("max_epochs"), bool):
            epochs = inner["max_epochs"]
            table[sub] = {**inner, "max_epochs": min(epochs, cap)}
    return table, epochs, min(epochs, cap)


def cap_epochs(data: dict, cap: int) -> dict:
    """``data`` (a raw config) with every training capped at ``cap`` epochs: ``--max-epochs-all``.

    The top-level ``max_epochs`` (the baseline and every step that does not
    set its own) and each ``[passes.X.training|trainer] max_epochs`` of a
    train step or of a prune step's ``gradual`` table become at most
    ``cap``. A gradual ramp is scaled by the same factor as its training
    (``start_epoch`` rounded down, ``ramp_epochs`` at least 1), so that it
    still ends while the step trains. Values are checked later, as any.
    """
    check_range(cap, "--max-epochs-all", 1, 10_000)
    data = dict(data)
    top = data.get("max_epochs", TrainSettings.max_epochs)
    top = top if isinstance(top, int) and not isinstance(top, bool) else TrainSettings.max_epochs
    data["max_epochs"] = min(top, cap)
    passes = data.get("passes")
    if not isinstance(passes, dict):
        return data
    out = {}
    for label, table in passes.items():
        if isinstance(table, dict) and table.get("pass", label) in TRAIN_PASS_NAMES:
            table = _capped(table, cap, top)[0]
        elif isinstance(table, dict) and isinstance(table.get("gradual"), dict):
            gradual, before, after = _capped(table["gradual"], cap, top)
            for key, lowest in (("start_epoch", 0), ("ramp_epochs", 1)):
                value = gradual.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and after < before:
                    gradual[key] = max(lowest, value * after // before)
            start, ramp = gradual.get("start_epoch", 0), gradual.get("ramp_epochs")
            if isinstance(start, int) and isinstance(ramp, int) and start + ramp > after >= 1:
                gradual["start_epoch"] = max(0, after - ramp)
                gradual["ramp_epochs"] = min(ramp, after)
            table = {**table, "gradual": gradual}
        out[label] = table
    data["passes"] = out
    return data


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults < TOML file at ``path`` < ``overrides`` (command-line values, None = not given)."""
    return from_dict(Config, config_data(path, overrides))


def to_toml(data: dict) -> str:
    """Write a dict (the effective config) as TOML with tomli-w; ``None`` becomes ``"NA"``, tuples lists.

    Any key or string (non-ASCII letters, newlines, quotes) reads back with
    `tomllib` to the same value. tomli-w is imported here, not at the top:
    this module is imported by ``./ch setup``, which runs before the
    third-party packages are installed.
    """
    import tomli_w

    return tomli_w.dumps(_plain(data))


def _plain(v: Any) -> Any:
    """``v`` with ``None`` as ``"NA"``, tuples as lists, and anything not TOML (a Path) as its string."""
    if v is None:
        return "NA"
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _toml_key(k: str) -> str:
    """``k`` as TOML writes it: bare if ASCII letters, digits, ``_`` and ``-`` only, else quoted."""
    if k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k):
        return k
    return '"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"'
