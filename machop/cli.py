"""`./ch ACTION [options]`: argument parsing only; the work is in machop.actions.

Imports nothing heavy at start-up so that `./ch setup` runs before torch is installed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from machop.config import ConfigError, choices

ACTIONS = {
    "setup": "install dependencies and the Fashion-MNIST data (apt + pip); fast when done already",
    "train": "train a model from the registry; save the best checkpoint by val_acc",
    "test": "evaluate a checkpoint (pl, pt, mz or a huffman compressed file) on the test split",
    "transform": "run the [passes.*] tables of a TOML config in order and write a report",
}

# option → (type, help); the dest is the Config key
RUN_OPTIONS: dict[str, tuple[type | None, str]] = {
    "--model": (str, "model name (lenet300, lenet5, vgg7, resnet18)"),
    "--dataset": (str, "dataset name (fashion_mnist, mnist, colored_mnist, colored_fashion_mnist, cifar10)"),
    "--load": (str, "checkpoint to load (Config key load_name)"),
    "--load-type": (str, " | ".join(choices("load_type"))),
    "--batch-size": (int, "batch size"),
    "--max-epochs": (int, "training epochs"),
    "--learning-rate": (float, "learning rate"),
    "--optimizer": (str, " | ".join(choices("optimizer"))),
    "--weight-decay": (float, "weight decay"),
    "--accelerator": (str, " | ".join(choices("accelerator"))),
    "--devices": (None, "number of devices, or auto"),
    "--strategy": (str, " | ".join(choices("strategy"))),
    "--num-nodes": (int, "number of nodes"),
    "--num-workers": (int, "data loader workers"),
    "--seed": (int, "random seed"),
    "--project": (str, "project name: outputs go to PROJECT_DIR/PROJECT/<run>"),
    "--project-dir": (str, "output root (default mase_output)"),
    "--data-dir": (str, "data directory (else MACHOP_DATA_DIR, else the Debian package path)"),
    "--limit-train-batches": (None, "fraction (float) or number (int) of training batches per epoch"),
}


def _number_or_auto(text: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``ch train: error: ...`` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ch", description="machop: Deep Compression as torch.fx graph passes")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    for action, help_text in ACTIONS.items():
        p = sub.add_parser(action, help=help_text, description=help_text)
        if action == "setup":
            p.add_argument("--dev", action="store_true", help="also install the test dependencies")
            continue
        p.add_argument("--config", help="TOML config; values on the command line override it")
        for opt, (tp, help_opt) in RUN_OPTIONS.items():
            p.add_argument(opt, type=tp or _number_or_auto, help=help_opt, default=None)
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Command-line values as Config keys (None = not given)."""
    out = {opt[2:].replace("-", "_"): getattr(args, opt[2:].replace("-", "_")) for opt in RUN_OPTIONS}
    out["load_name"] = out.pop("load")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("machop").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.action == "setup":
        from machop.actions.setup import setup

        return setup(dev=args.dev)
    overrides = overrides_from_args(args)
    try:
        from machop.actions.run import run_action  # imports torch: not before `ch setup` has installed it

        return run_action(args.action, args.config, overrides, progress=not args.no_progress)
    except ConfigError as e:
        options = {opt[2:].replace("-", "_"): opt for opt in RUN_OPTIONS} | {"load_name": "--load"}
        if overrides.get(e.key) is not None and e.key in options:
            e = ConfigError(options[e.key], e.message)  # name the option the user typed
        print(f"ch {args.action}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ch {args.action}: interrupted", file=sys.stderr)
        return 130
