"""The ``hf-debias`` command line: ``demo``, ``layers``, ``cav`` and ``train``, one module per command, each a thin
layer over the library (``add_parser(subparsers)`` builds its parser, ``run(args)`` runs it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import cav, demo, layers, train

COMMANDS = (demo, layers, cav, train)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="hf-debias",
        description="Remove known biases from timm / Hugging Face image classifiers while fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"hf-debias {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hf-debias``; returns the exit status (2 with one ``hf-debias: error:`` line for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # HfArgumentParser owns every `train` flag
        argv = ["train", "--", *argv[1:]]
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:  # bad input: a clear message, no traceback
        print(f"hf-debias: error: {error}", file=sys.stderr)
        return 2
