"""What each `ch` action does. `run_action` turns bad input into one-line errors with exit code 2."""

from __future__ import annotations

import logging
import sys

from machop.config import ConfigError

logger = logging.getLogger(__name__)


def run_action(action: str, config_path: str | None, overrides: dict, progress: bool = True) -> int:
    """Run ``action``; ConfigError (bad config, option, file or name) → one line on stderr, exit 2."""
    from machop.cli import RUN_OPTIONS
    from machop.config import load_config

    try:
        config = load_config(config_path, overrides)
        if action == "train":
            from .train import train

            return train(config, progress)
        if action == "test":
            from .test import test

            return test(config, progress)
        from .transform import transform

        return transform(config, config_path, progress)
    except ConfigError as e:
        options = {opt[2:].replace("-", "_"): opt for opt in RUN_OPTIONS} | {"load_name": "--load"}
        if overrides.get(e.key) is not None and e.key in options:
            e = ConfigError(options[e.key], e.message)  # name the option the user typed
        print(f"ch {action}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ch {action}: interrupted", file=sys.stderr)
        return 130
