"""The ``vil`` command line. Each feature module contributes a subcommand through ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .utils.optional import MissingDependency

# Modules that add a subcommand; each defines register(subparsers) -> None and sets a ``func(args) -> int``.
COMMAND_MODULES = [
    "vil.commands.models",
    "vil.commands.checkpoints",
    "vil.commands.convert",
    "vil.commands.bench",
    "vil.commands.info",
    "vil.commands.study",
    "vil.commands.train",
    "vil.commands.eval",
    "vil.commands.predict",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vil", description="Vision-LSTM (ViL): models, weights, training, benchmarks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, MissingDependency) as error:
        print(f"vil {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
