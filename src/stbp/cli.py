"""The `stbp` command line: each feature module registers its own sub-commands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes `register(subparsers)`, adding parsers whose `func(args)` runs the command.
COMMAND_MODULES = (
    "stbp.train",
    "stbp.data.emulate",
    "stbp.stats",
    "stbp.plots",
    "stbp.nir_export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stbp", description="Direct training of deep spiking neural networks (STBP)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
