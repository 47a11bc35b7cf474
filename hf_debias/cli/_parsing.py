"""What every ``hf-debias`` command's parser shares: help that shows defaults, and both spellings of every
option (``--output-dir`` and ``--output_dir``), as ``HfArgumentParser`` accepts them for ``train``."""

from __future__ import annotations

import argparse
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


def add_spelling_aliases(parser: argparse.ArgumentParser) -> None:
    """Let every long option of ``parser`` be given with dashes or underscores. The alias parses exactly like the
    option; the help lists one spelling (``--help`` says both work)."""
    for action in parser._actions:
        for option in list(action.option_strings):
            alias = other_spelling(option)
            if alias is not None and alias not in parser._option_string_actions:
                parser._option_string_actions[alias] = action
