"""`./ch ACTION [options]`: argument parsing only; the work is in machop.actions.

Imports nothing heavy at start-up so that `./ch setup` runs before torch is installed.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from machop.config import Config, ConfigError, cap_epochs, choices, config_data, from_dict, one_line
from machop.files import BadFileError

ACTIONS = {
    "setup": "install dependencies and the Fashion-MNIST data (apt + pip); fast when done already",
    "train": "train a model from the registry; save the best checkpoint by val_acc",
    "test": "evaluate a checkpoint (pl, pt, mz or a huffman compressed file) on the test split",
    "transform": "run the [passes.*] tables of a TOML config in order and write a report",
    "export": "write a file machop made (pl, pt, mz or huffman; type read from the file) as ONNX",
}
TRAINING_ACTIONS = ("train", "transform")
MAX_EPOCHS_ALL_HELP = (
    "cap every training of the run at N epochs: the baseline, every train/retrain step and every gradual prune "
    "(its ramp scaled to fit); a quick run. Precedence: a step trains min(N, its own max_epochs), its own being "
    "its [training]/[trainer] table's, else --max-epochs, else the config's top-level max_epochs"
)

# Config key → (option strings, type, help): the first string is the option's name in errors and help;
# the others are MASE's spellings of the same option
RUN_OPTIONS: dict[str, tuple[tuple[str, ...], Callable[[str], Any] | None, str]] = {
    "model": (("--model",), str, "model name (lenet300, lenet5, vgg7, resnet18); or the MODEL positional"),
    "dataset": (("--dataset",), str, "dataset name (fashion_mnist, mnist, colored_mnist, colored_fashion_mnist, "
                                     "cifar10); or the DATASET positional"),
    "load_name": (("--load",), str, "checkpoint to load (Config key load_name)"),
    "load_type": (("--load-type",), str, " | ".join(choices("load_type")) + "; default: read from the file"),
    "batch_size": (("--batch-size",), int, "batch size"),
    "max_epochs": (("--max-epochs",), int, "training epochs (the run's; a step's own table overrides it; see "
                                           "--max-epochs-all)"),
    "max_steps": (("--max-steps",), int, "stop after this many optimizer steps (-1: no limit)"),
    "learning_rate": (("--learning-rate",), float, "learning rate"),
    "optimizer": (("--optimizer", "--training-optimizer"), str, " | ".join(choices("optimizer"))),
    "weight_decay": (("--weight-decay",), float, "weight decay"),
    "accumulate_grad_batches": (("--accumulate-grad-batches",), int, "batches per optimizer step"),
    "precision": (("--precision", "--trainer-precision"), str,
                  "Lightning precision: " + " | ".join(c for c in choices("precision") if isinstance(c, str))),
    "accelerator": (("--accelerator",), str, " | ".join(choices("accelerator"))),
    "devices": (("--devices", "--num-devices", "--gpu"), None, "number of devices, or auto"),
    "strategy": (("--strategy",), str, " | ".join(choices("strategy"))),
    "num_nodes": (("--num-nodes", "--nodes"), int, "number of nodes"),
    "num_workers": (("--num-workers", "--cpu"), int, "data loader workers"),
    "seed": (("--seed",), int, "random seed"),
    "project": (("--project",), str, "project name: outputs go to PROJECT_DIR/PROJECT/<run>"),
    "project_dir": (("--project-dir",), str, "output root (default mase_output)"),
    "data_dir": (("--data-dir",), str, "data directory (else MACHOP_DATA_DIR, else the Debian package path)"),
    "train_limit": (("--train-limit",), int, "keep only the first N training images (validation included)"),
    "test_limit": (("--test-limit",), int, "keep only the first N test images"),
    "limit_train_batches": (("--limit-train-batches",), None, "fraction (float) or number (int) of training batches "
                                                              "per epoch"),
    "limit_val_batches": (("--limit-val-batches",), None, "fraction (float) or number (int) of validation batches"),
    "limit_test_batches": (("--limit-test-batches",), None, "fraction (float) or number (int) of test batches"),
}
POSITIONALS = {"model": "MODEL", "dataset": "DATASET"}  # MASE's `ch ACTION MODEL DATASET`
LOG_LEVELS = ("debug", "info", "warning", "error")


def _number_or_auto(text: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def option_names(args: argparse.Namespace) -> dict[str, str]:
    """Config key → the option string (or positional) the user typed for it."""
    if not hasattr(args, "option_names"):
        args.option_names = {}
    return args.option_names


class _Store(argparse.Action):
    """Store the value and remember which spelling was typed, so that errors name that one."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        option_names(namespace)[self.dest] = option_string


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``ch train: error: ...`` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class _ActionParser(_Parser):
    """The parser of one action: MODEL and DATASET positionals are merged into ``model`` and ``dataset``."""

    def parse_known_args(
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        for key, metavar in POSITIONALS.items():
            value = vars(namespace).pop(f"positional_{key}", None)
            if value is None:
                continue
            given = getattr(namespace, key, None)
            if given is not None and given != value:
                option = option_names(namespace).get(key, RUN_OPTIONS[key][0][0])
                self.error(f"{metavar} {value!r} conflicts with {option} {given!r}")
            if given is None:
                setattr(namespace, key, value)
                option_names(namespace)[key] = metavar
        return namespace, extras


def _add_logging(p: argparse.ArgumentParser, default: str) -> None:
    """-v/--verbose/--debug and --log-level, accepted before and after the action.

    ``default`` is "info" on the main parser and SUPPRESS on an action's, so
    that an action's parser does not overwrite a level typed before the action.
    """
    p.add_argument("-v", "--verbose", "--debug", dest="log_level", action="store_const", const="debug",
                   default=default, help="debug logging (= --log-level debug)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=default, help="machop's log level (default info)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ch", description="machop: Deep Compression as torch.fx graph passes")
    _add_logging(parser, "info")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=_ActionParser)
    for action, help_text in ACTIONS.items():
        p = sub.add_parser(action, help=help_text, description=help_text)
        _add_logging(p, argparse.SUPPRESS)
        if action == "setup":
            p.add_argument("--dev", action="store_true", help="also install the test dependencies")
            continue
        for key, metavar in POSITIONALS.items():
            p.add_argument(f"positional_{key}", metavar=metavar, nargs="?", help=f"same as {RUN_OPTIONS[key][0][0]}")
        p.add_argument("--config", help="TOML config; values on the command line override it")
        for key, (flags, tp, help_opt) in RUN_OPTIONS.items():
            metavar = flags[0][2:].upper().replace("-", "_")
            p.add_argument(*flags, dest=key, type=tp or _number_or_auto, action=_Store, metavar=metavar, help=help_opt,
                           default=None)
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if action in TRAINING_ACTIONS:
            p.add_argument("--max-epochs-all", type=int, metavar="N", default=None, help=MAX_EPOCHS_ALL_HELP)
        if action == "export":
            p.add_argument("--output", metavar="PATH.onnx", default=None, help="the ONNX file to write (required)")
            p.add_argument("--int8", action="store_true", help="the export pass's int8 option")
    return parser


def action_options(args: argparse.Namespace) -> dict[str, Any]:
    """The action's own options (not Config keys): ``max_epochs_all``, export's ``output`` and ``int8``."""
    return {key: getattr(args, key) for key in ("max_epochs_all", "output", "int8") if hasattr(args, key)}


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Command-line values as Config keys (None = not given)."""
    return {key: getattr(args, key) for key in RUN_OPTIONS}


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; raised where the program was, so that ``finally`` blocks clean up.

    A BaseException, like KeyboardInterrupt, so that ``except Exception``
    does not swallow it; unlike KeyboardInterrupt, Lightning passes it on
    (it turns KeyboardInterrupt into ``sys.exit(1)``).
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` for the duration; further signals wait until cleanup is done."""

    def handler(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


EXIT_ENVIRONMENT, EXIT_BAD_INPUT = 1, 2


def failure(e: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) of an expected failure; None for anything else (a bug: its traceback shows).

    2: bad input (a config value, a file that cannot be used); 1: the
    environment (a full disk, no permission, out of memory); 128 + N: signal N.
    """
    if isinstance(e, Interrupted):
        return 128 + e.signum, f"interrupted by {signal.Signals(e.signum).name}"
    if isinstance(e, KeyboardInterrupt):
        return 128 + signal.SIGINT, "interrupted"
    if isinstance(e, (ConfigError, BadFileError)):
        return EXIT_BAD_INPUT, str(e)
    if isinstance(e, MemoryError):
        return EXIT_ENVIRONMENT, "out of memory"
    if isinstance(e, OSError) and e.errno is not None:
        where = f": {e.filename}" if e.filename is not None else ""
        return EXIT_ENVIRONMENT, f"{e.strerror or errno.errorcode.get(e.errno, e.errno)}{where}"
    return None


def early_check(config_path: str | None, overrides: dict, options: dict) -> None:
    """The config's own values checked before torch and Lightning are imported, so that a typo is answered in
    a fraction of a second: the file, every top-level key and value, ``--max-epochs-all``. (Pass tables are
    checked by their passes after the import; the graph checks follow, all before step 1.)"""
    data = config_data(config_path, overrides)
    if options.get("max_epochs_all") is not None:
        data = cap_epochs(data, options["max_epochs_all"])
    from_dict(Config, data)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("machop").setLevel(args.log_level.upper())
    if args.action == "setup":
        from machop.actions.setup import setup

        return setup(dev=args.dev)
    overrides = overrides_from_args(args)
    options = action_options(args)
    try:
        with interruptible():
            early_check(args.config, overrides, options)
            from machop.actions.run import run_action  # imports torch: not before `ch setup` has installed it

            return run_action(args.action, args.config, overrides, progress=not args.no_progress, options=options)
    except BaseException as e:
        known = failure(e)
        if known is None:
            raise
        code, message = known
        if isinstance(e, ConfigError) and overrides.get(e.key) is not None and e.key in RUN_OPTIONS:
            typed = option_names(args).get(e.key) or RUN_OPTIONS[e.key][0][0]
            message = str(ConfigError(typed, e.message))  # name the option the user typed
        print(f"ch {args.action}: error: {one_line(message)}", file=sys.stderr)
        return code
