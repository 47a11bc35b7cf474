"""Offline benchmark data sets that mimic the papers' protocols."""

from .colour_digits import (COLOUR_NAMES, COLOURS, ArraySplit, assign_colours, build_colour_digits,
                            colour_digits_arrays, colourise)

__all__ = ["COLOURS", "COLOUR_NAMES", "ArraySplit", "assign_colours", "build_colour_digits",
           "colour_digits_arrays", "colourise"]
