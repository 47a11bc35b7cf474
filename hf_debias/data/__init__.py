"""Offline benchmark data sets that mimic the papers' protocols, and ``load_image_dataset`` for the user's own
image datasets in the usual layouts."""

from .artifacts import (ARTIFACTS, ArtifactSpec, ArtifactSplit, build_controlled_artifact,
                        controlled_artifact_arrays, insert_artifact)
from .colour_digits import (COLOUR_NAMES, COLOURS, ArraySplit, assign_colours, build_colour_digits,
                            colour_digits_arrays, colourise, digit_arrays)
from .image_dataset import load_image_dataset

__all__ = ["ARTIFACTS", "COLOURS", "COLOUR_NAMES", "ArraySplit", "ArtifactSpec", "ArtifactSplit", "assign_colours",
           "build_colour_digits", "build_controlled_artifact", "colour_digits_arrays", "colourise",
           "controlled_artifact_arrays", "digit_arrays", "insert_artifact", "load_image_dataset"]
