"""`run_action`: load and check the config, then run the action."""

from __future__ import annotations

from typing import Any

from machop.config import Config, cap_epochs, config_data, from_dict
from machop.training import check_accelerator

from .common import check_names, check_output_dir
from .export import export
from .opening import resolve_load
from .test import test
from .train import train
from .transform import transform


def effective_config(config_path: str | None, overrides: dict, max_epochs_all: int | None = None) -> Config:
    """Defaults < file < command line, every training capped at ``max_epochs_all``, and what ``--load`` is
    (type, model, data set) read from the file where the config does not say it."""
    data = config_data(config_path, overrides)
    given = set(data)
    if max_epochs_all is not None:
        data = cap_epochs(data, max_epochs_all)
    return resolve_load(from_dict(Config, data), given)


def run_action(action: str, config_path: str | None, overrides: dict, progress: bool = True,
               options: dict[str, Any] | None = None) -> int:
    """Run ``action``; bad input raises `ConfigError` (the CLI prints it as one line, exit 2).

    ``options``: the action's own command-line options (``max_epochs_all``;
    export's ``output`` and ``int8``).
    """
    options = options or {}
    config = effective_config(config_path, overrides, options.get("max_epochs_all"))
    check_names(config)
    check_accelerator(config.training)
    if action not in ("test", "export"):  # test writes nothing; export writes one file it checks itself
        check_output_dir(config)
    if action == "train":
        return train(config, progress)
    if action == "test":
        return test(config, progress)
    if action == "export":
        return export(config, options.get("output"), bool(options.get("int8")), progress)
    return transform(config, config_path, progress, load_on_command_line=overrides.get("load_name") is not None)
