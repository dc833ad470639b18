"""Pieces shared by the train, test and transform actions."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from machop.config import Config, ConfigError
from machop.files import output_problem
from machop.datasets import DATASETS, MaseDataModule, get_dataset_info
from machop.ir import MaseGraph, PassContext
from machop.ir.mchz import load_compressed
from machop.ir.serialize import load_model
from machop.models import MODELS, get_model
from machop.nn import NonFiniteError, require_finite

console = Console(highlight=False, soft_wrap=True)


def data_module(config: Config):
    """The set-up data module; missing or bad files are a ConfigError naming where to put them."""
    dm = MaseDataModule(
        config.dataset,
        batch_size=config.batch_size,
        data_dir=config.data_dir,
        seed=config.seed,
        val_fraction=config.val_fraction,
        train_limit=config.train_limit,
        test_limit=config.test_limit,
        num_workers=config.num_workers,
    )
    try:
        dm.prepare_data()
        dm.setup()
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ConfigError("dataset", str(e).splitlines()[0]) from None
    return dm


def check_names(config: Config) -> None:
    """The config's model and dataset must be in the registries."""
    if config.model not in MODELS:
        raise ConfigError("model", f"unknown model {config.model!r}; choose from {', '.join(sorted(MODELS))}")
    if config.dataset not in DATASETS:
        raise ConfigError("dataset", f"unknown dataset {config.dataset!r}; choose from {', '.join(sorted(DATASETS))}")


def load(config: Config, ctx: PassContext) -> MaseGraph:
    """The graph of ``config.load_name`` (any load type, the compressed ``huffman`` one included)."""
    if config.load_type == "huffman":
        return load_compressed(config.load_name, context=ctx)
    return load_model(config.load_name, config.load_type, model_name=config.model, dataset_info=ctx.dataset_info,
                      context=ctx)


def build_graph(config: Config, progress: bool = True) -> MaseGraph:
    """A MaseGraph of the config's model, loaded from ``load_name`` if given, else freshly initialised.

    A loaded file must hold finite weights only: a NaN or an infinity is a
    ConfigError naming the tensor, before step 1 and before anything is written.

    It needs no data (shapes come from the data set's registry entry), so
    everything about the model is checked before any data is read; the
    action sets ``graph.context.data_module`` afterwards.
    """
    torch.manual_seed(config.seed)
    info = get_dataset_info(config.dataset)
    ctx = PassContext(model_name=config.model, dataset_info=info, training=config.training, progress_bar=progress)
    if config.load_name is None:
        graph = MaseGraph(get_model(config.model, info), context=ctx)
    else:
        try:
            graph = load(config, ctx)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise ConfigError("load_name", str(e).splitlines()[0]) from None
        if graph.context.model_name != config.model:
            raise ConfigError("load_name", f"{config.load_name} holds a {graph.context.model_name}, not {config.model}")
        try:  # one NaN would turn a k-means layer NaN, or code as the smallest int64
            require_finite(graph.model, config.load_name)
        except NonFiniteError as e:
            raise ConfigError("load_name", str(e)) from None
        graph.context = ctx
        ctx.loaded_from = config.load_name
    graph.dummy_input = torch.zeros(2, info.in_channels, *info.image_size)
    return graph


def check_output_dir(config: Config) -> None:
    """Refuse, before any work and without creating anything, a ``project_dir`` no run folder can be made in."""
    root = Path(config.project_dir)
    problem = output_problem(root, folder=True) or output_problem(root / config.project, folder=True)
    if problem is not None:
        raise ConfigError("project_dir", problem)


def is_rank_zero() -> bool:
    """False in the extra processes Lightning launches for DDP (they must not write run files)."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _numbered(base: Path, i: int) -> Path:
    """``base`` for 0, else ``base-i``."""
    return base.with_name(f"{base.name}-{i}") if i else base


def _output_error(path: Path, e: OSError) -> ConfigError:
    """An output folder that cannot be made (its parent is a file, no permission): one line naming project_dir."""
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        return ConfigError("project_dir", f"cannot create {path}: part of that path is a file, not a folder")
    return ConfigError("project_dir", f"cannot create {path}: {e.strerror or e}")


def run_dir(config: Config, action: str) -> Path:
    """A new ``PROJECT_DIR/PROJECT/<action>_<model>_<dataset>_<time>`` folder (made by rank 0 only).

    Runs started in the same second get ``-1``, ``-2``, ... suffixes: each
    name is claimed by creating it (``mkdir`` fails if another run got there
    first), so two runs never share, nor crash on, a folder.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.project_dir) / config.project / f"{action}_{config.model}_{config.dataset}_{stamp}"
    i = 0
    if not is_rank_zero():
        while _numbered(base, i).exists():
            i += 1
        return _numbered(base, i)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _output_error(base.parent, e) from None
    while True:
        path = _numbered(base, i)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            i += 1
        except OSError as e:
            raise _output_error(path, e) from None


def print_effective(config: Config, keys: list[str]) -> None:
    table = Table(title="Effective configuration", show_header=False, box=None)
    for k in keys:
        v = getattr(config, k)
        table.add_row(k, "NA" if v is None else str(v))
    console.print(table)
