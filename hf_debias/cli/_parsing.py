"""What every ``hf-debias`` command's parser shares: help that shows defaults, and both spellings of every
option (``--output-dir`` and ``--output_dir``), as ``HfArgumentParser`` accepts them for ``train``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import textwrap


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description on its own and keeps indented paragraphs (examples) as written;
    appends ``(default: X)`` to every option whose default says something: not ``None``, not plain on/off flags
    (``store_true``; ``--x / --no-x`` pairs do show theirs), and not when the help already names a default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = textwrap.dedent(text).strip("\n").split("\n\n")
        return "\n\n".join(
            "\n".join(indent + line for line in paragraph.splitlines()) if paragraph.startswith(" ")
            else textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent, subsequent_indent=indent)
            for paragraph in paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if flag or action.default is None or action.default is argparse.SUPPRESS or "%(default)" in text \
                or "default:" in text:
            return text
        return f"{text} (default: %(default)s)"


def other_spelling(option: str) -> str | None:
    """``--output-dir`` -> ``--output_dir`` and back; ``None`` for a short or one-word option."""
    if not option.startswith("--"):
        return None
    name = option[2:]
    swapped = name.replace("-", "_") if "-" in name else name.replace("_", "-")
    return None if swapped == name else f"--{swapped}"


class ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` (and so its sub-parsers) that reads ``--foo_bar`` as ``--foo-bar`` and back.

    The token is rewritten to the spelling the option was declared with before parsing, so actions that look at
    the spelling (``--no-x`` of ``BooleanOptionalAction``) see their own; the help lists one spelling."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self.declared_spelling(args), namespace)

    def declared_spelling(self, args: list[str]) -> list[str]:
        """``args`` with every long option this parser does not know, but knows in the other spelling, rewritten
        (``--opt_name=value`` too); nothing after a bare ``--``."""
        out = []
        for index, token in enumerate(args):
            if token == "--":
                return out + args[index:]
            name, equals, value = token.partition("=")
            alias = other_spelling(name) if name not in self._option_string_actions else None
            out.append(alias + equals + value if alias in self._option_string_actions else token)
        return out



class TrainFlagsParser(argparse.ArgumentParser):
    """The sub-parser of a command that takes ``hf-debias train``'s flags (``sweep``, ``compare``): every token goes
    to ``HfArgumentParser`` (as for ``train``), except a bare ``--debug`` (one not followed by a value), which is
    ``hf-debias``'s own."""

    def parse_known_args(self, args=None, namespace=None):
        from . import _split_train_arguments

        namespace = namespace if namespace is not None else argparse.Namespace()
        split, debug = _split_train_arguments(["train", *(sys.argv[2:] if args is None else args)])
        namespace.arguments = split[2:]  # after "train", "--"
        namespace.handler = self.get_default("handler")
        if debug:
            namespace.debug = True
        return namespace, []


def add_train_flags_command(subparsers, name: str, help: str, main) -> argparse.ArgumentParser:
    """Register ``name`` as a command that takes ``hf-debias train``'s flags and runs ``main(argv)``."""
    parser = subparsers.add_parser(name, add_help=False, help=help)
    parser.__class__ = TrainFlagsParser  # subparsers build their own parser class; only the parsing differs
    parser.set_defaults(handler=handler_for(main))
    return parser


def handler_for(main):
    """The ``handler`` of a command whose tokens were collected in ``args.arguments`` (a leading ``--`` dropped)."""
    def run(args: argparse.Namespace) -> int:
        arguments = args.arguments[1:] if args.arguments[:1] == ["--"] else args.arguments
        return main(arguments)
    return run


@contextlib.contextmanager
def info_logging():
    """hf_debias's info lines (weights, eval split) on the terminal as ``hf-debias: ...`` while a command runs."""
    logger = logging.getLogger("hf_debias")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hf-debias: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
