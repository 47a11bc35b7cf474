"""The ``hf-debias`` command line: ``demo``, ``layers``, ``cav``, ``train``, ``sweep`` and ``compare``, one module
per command, each a thin layer over the library (``add_parser(subparsers)`` builds its parser, ``run(args)`` runs
it); ``sweep`` and ``compare`` take ``train``'s flags.

Building the parsers imports neither torch nor transformers nor datasets: each command imports what it needs in
``run``, so ``--help`` is quick (``train``, ``sweep`` and ``compare --help`` are the exception: they need
``TrainingArguments``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import cav, compare, demo, layers, sweep, train
from ._parsing import ArgumentParser, HelpFormatter

COMMANDS = (demo, layers, cav, train, sweep, compare)

# Exceptions defined in (or raised from inside) these packages are about the user's input or environment: a model
# or dataset that does not exist or does not load, a file that is not an image, a Hub or network failure.
LIBRARIES = frozenset({"accelerate", "datasets", "httpx", "httpx2", "huggingface_hub", "PIL", "pyarrow", "requests",
                       "safetensors", "timm", "torch", "torchvision", "transformers"})
DEBUG_HELP = "show the full traceback of an error instead of the one-line message"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command."""
    from .. import __version__

    parser = ArgumentParser(  # its sub-parsers take --foo-bar and --foo_bar alike
        prog="hf-debias",
        description="Remove known biases from timm / Hugging Face image classifiers while fine-tuning.\n"
                    "Every option may be spelled with dashes or underscores (--output-dir or --output_dir).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hf-debias {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP + " (also accepted after the command)")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = command.add_parser(subparsers)
        if command is not train:  # `train` passes every flag on to HfArgumentParser (see main)
            sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hf-debias``; returns the exit status.

    Errors are reported by kind:

    - **Expected user errors** print ONE line, ``hf-debias: error: ...``, on stderr and return 2: ``ValueError``
      (our own input checks), ``OSError`` (``FileNotFoundError``, permissions, Hub and network errors),
      ``KeyError`` (a missing key in a config or row), ``ImportError`` (a missing optional package), every
      exception class defined by datasets / huggingface_hub / timm / transformers / torch / PIL / safetensors /
      accelerate, and a ``RuntimeError`` or ``AssertionError`` raised from inside one of those libraries (timm's
      ``RuntimeError("Unknown model ...")``, a shape check on a wrong input size, a checkpoint that does not fit).
    - **Anything else is a bug** in hf_debias (an ``AssertionError``, ``TypeError``, ``AttributeError`` ... raised
      in our own code): it keeps Python's traceback and exit status 1, so that it can be reported.
    - ``--debug`` (before or after the command; for ``train`` a bare ``--debug``, since ``--debug VALUE`` is the
      Trainer's own option) re-raises user errors too, with their traceback.
    - Bad flags are argparse's usual usage message and exit status 2; Ctrl-C returns 130; a closed output
      pipe (``| head``) returns 1 quietly.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = _split_train_arguments(argv)
    args = build_parser().parse_args(argv)
    debug = debug or getattr(args, "debug", False)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("hf-debias: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a pipe that closed early (`| head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush does not fail
        return 1
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        print(f"hf-debias: error: {error_message(error)}", file=sys.stderr)
        return 2


def _split_train_arguments(argv: list[str]) -> tuple[list[str], bool]:
    """For ``train``, put every flag behind ``--`` (HfArgumentParser owns them) and take out a bare ``--debug``
    (one not followed by a value: ``--debug underflow_overflow`` is ``TrainingArguments.debug``)."""
    position = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if position is None or argv[position] != "train":
        return argv, False
    head, rest = argv[:position + 1], argv[position + 1:]
    debug = False
    kept = []
    for index, token in enumerate(rest):
        following = rest[index + 1] if index + 1 < len(rest) else None
        if token == "--debug" and (following is None or following.startswith("-")):
            debug = True
        else:
            kept.append(token)
    return [*head, "--", *kept], debug


def is_user_error(error: BaseException) -> bool:
    """True for errors about the user's input or environment, False for bugs (see ``main``)."""
    if isinstance(error, (ValueError, OSError, KeyError, ImportError)):
        return True
    if type(error).__module__.split(".")[0] in LIBRARIES:
        return True
    if isinstance(error, (RuntimeError, AssertionError)):
        return _raised_in_library(error)
    return False


def _raised_in_library(error: BaseException) -> bool:
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    module = traceback.tb_frame.f_globals.get("__name__", "")
    return module.split(".")[0] in LIBRARIES


def error_message(error: BaseException) -> str:
    """The error on one line; the class name is kept where it says something (not for our ``ValueError``s)."""
    text = " ".join(str(error).split()) or "(no message)"
    if type(error) in (ValueError, FileNotFoundError, OSError, NotADirectoryError, IsADirectoryError):
        return text
    return f"{type(error).__name__}: {text} (--debug shows the traceback)"
