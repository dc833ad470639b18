"""`run_action`: load and check the config, then run the action."""

from __future__ import annotations

from machop.config import load_config
from machop.training import check_accelerator

from .common import check_names, check_output_dir
from .test import test
from .train import train
from .transform import transform


def run_action(action: str, config_path: str | None, overrides: dict, progress: bool = True) -> int:
    """Run ``action``; bad input raises `ConfigError` (the CLI prints it as one line, exit 2)."""
    config = load_config(config_path, overrides)
    check_names(config)
    check_accelerator(config.training)
    if action != "test":  # test writes nothing
        check_output_dir(config)
    if action == "train":
        return train(config, progress)
    if action == "test":
        return test(config, progress)
    return transform(config, config_path, progress)
