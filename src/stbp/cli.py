"""The `stbp` command line: each feature module registers its own sub-commands."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from stbp import __version__
from stbp.checkpoint import CheckpointWarning

# Each module exposes `register(subparsers)`, adding parsers whose `func(args)` runs the command.
COMMAND_MODULES = (
    "stbp.commands",
    "stbp.results",
    "stbp.data.emulate",
    "stbp.stats",
    "stbp.plots",
    "stbp.nir_export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stbp", description="Direct training of deep spiking neural networks (STBP)."
    )
    parser.add_argument("--version", action="version", version=f"stbp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line(warnings.showwarning)
        try:
            return int(args.func(args) or 0)
        except BrokenPipeError:  # the reader stopped early (`stbp stats ... | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


def _one_line(show):
    """A `warnings.showwarning` that prints stbp's own warnings as one line, no source."""

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CheckpointWarning):
            print(f"stbp: warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return show_warning


if __name__ == "__main__":
    sys.exit(main())
