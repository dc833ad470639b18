"""Pieces shared by the train, test and transform actions."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from machop.config import Config, ConfigError
from machop.datasets import DATASETS, MaseDataModule
from machop.ir import MaseGraph, PassContext
from machop.ir.serialize import load_model
from machop.models import MODELS, get_model
from machop.passes.graph.transforms.huffman import load_compressed

console = Console(highlight=False, soft_wrap=True)


def data_module(config: Config):
    """The set-up data module; missing or bad files are a ConfigError naming where to put them."""
    dm = MaseDataModule(
        config.dataset,
        batch_size=config.batch_size,
        data_dir=config.data_dir,
        seed=config.seed,
        val_fraction=config.val_fraction,
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


def context(config: Config, dm, progress: bool) -> PassContext:
    return PassContext(
        data_module=dm, model_name=config.model, dataset_info=dm.info, training=config.training, progress_bar=progress
    )


def load(config: Config, ctx: PassContext, info) -> MaseGraph:
    """The graph of ``config.load_name`` (any load type, the compressed ``huffman`` one included)."""
    if config.load_type == "huffman":
        return load_compressed(config.load_name, context=ctx)
    return load_model(config.load_name, config.load_type, model_name=config.model, dataset_info=info, context=ctx)


def build_graph(config: Config, dm, progress: bool = True) -> MaseGraph:
    """A MaseGraph of the config's model: loaded from ``load_name`` if given, else freshly initialised."""
    torch.manual_seed(config.seed)
    ctx = context(config, dm, progress)
    if config.load_name is None:
        graph = MaseGraph(get_model(config.model, dm.info), context=ctx)
    else:
        try:
            graph = load(config, ctx, dm.info)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise ConfigError("load_name", str(e).splitlines()[0]) from None
        if graph.context.model_name != config.model:
            raise ConfigError("load_name", f"{config.load_name} holds a {graph.context.model_name}, not {config.model}")
        graph.context = ctx
        ctx.loaded_from = config.load_name
    graph.dummy_input = dm.dummy_input(2)
    return graph


def is_rank_zero() -> bool:
    """False in the extra processes Lightning launches for DDP (they must not write run files)."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def run_dir(config: Config, action: str) -> Path:
    """A new ``PROJECT_DIR/PROJECT/<action>_<model>_<dataset>_<time>`` folder (made by rank 0 only)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.project_dir) / config.project / f"{action}_{config.model}_{config.dataset}_{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    if is_rank_zero():
        path.mkdir(parents=True)
    return path


def print_effective(config: Config, keys: list[str]) -> None:
    table = Table(title="Effective configuration", show_header=False, box=None)
    for k in keys:
        v = getattr(config, k)
        table.add_row(k, "NA" if v is None else str(v))
    console.print(table)
