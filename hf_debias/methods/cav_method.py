"""What every CAV-based correction shares (RR-ClArC, P-ClArC, A-ClArC): the CAV in the config, its loading and
saving, and the checks that it belongs to this model and layer."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cav import CAV
from ..config import DebiasConfig
from ..layers import LayerRef, resolve_layer
from ..loading import model_identity
from .base import DebiasMethod

CAV_SUBFOLDER = "cav"
"""Where a saved config keeps its CAV, next to ``debias_config.json``."""


@dataclass
class CAVConfig(DebiasConfig):
    """Base of the configs that correct along a CAV.

    Args:
        cav: a ``CAV``, or where to load one (a folder or a Hub repo id, optionally ``repo_id/subfolder``).
        allow_cav_mismatch: use a CAV whose recorded layer or base model differ from this model's (warns
            instead of refusing).
    """

    cav: Any = None
    allow_cav_mismatch: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cav is None:
            raise ValueError(f"{type(self).__name__} needs a CAV: cav=CAV(...), a folder or a Hub repo id "
                             "(see hf_debias.compute_cav and `hf-debias cav`).")
        if not isinstance(self.cav, (CAV, str, os.PathLike)):
            raise ValueError(f"cav must be a CAV, a folder or a Hub repo id, got {type(self.cav).__name__}.")
        if isinstance(self.cav, os.PathLike):
            self.cav = str(self.cav)
        if not isinstance(self.allow_cav_mismatch, bool):
            raise ValueError(f"allow_cav_mismatch must be True or False, got {self.allow_cav_mismatch!r}.")
        if isinstance(self.cav, CAV) and self.layer is None and self.cav.layer is not None:
            self.layer = self.cav.layer  # the CAV knows where it belongs

    def load_cav(self) -> CAV:
        """The CAV object, loaded once from ``cav`` if that is a path or a Hub id."""
        if not isinstance(self.cav, CAV):
            self.cav = _load_cav(self.cav)
        return self.cav

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if isinstance(self.cav, CAV):
            data["cav"] = self.cav.name_or_path  # None for a CAV that was never saved; save_pretrained saves it
        return data

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """``debias_config.json`` plus the CAV in ``cav/``, referenced relatively so the folder can move."""
        cav = self.load_cav()
        folder = Path(save_directory)
        saved_from = cav.name_or_path
        cav.save_pretrained(folder / CAV_SUBFOLDER)
        cav.name_or_path = CAV_SUBFOLDER
        try:
            return super().save_pretrained(folder)
        finally:
            cav.name_or_path = saved_from or str(folder / CAV_SUBFOLDER)

    def resolve_paths(self, directory: Path) -> None:
        """The ``cav`` read from a saved folder's file must name a folder inside it: no absolute path, no ``..``,
        no symlink out of it and no Hub repo id (a Hub id is followed only when passed in Python or on the
        command line)."""
        from ..hub.paths import check_subfolder, inside

        if not isinstance(self.cav, str):
            return
        check_subfolder(self.cav, "field 'cav'", allow_root=False)
        path = directory / self.cav
        if not path.is_dir():
            raise ValueError(f"field 'cav' is {self.cav!r}, which is no folder inside {str(directory)!r}; a saved "
                             f"config keeps its CAV in its own folder ({CAV_SUBFOLDER!r}), never elsewhere.")
        self.cav = str(inside(directory, path, "the CAV folder named by field 'cav'"))


def _load_cav(reference: str) -> CAV:
    if Path(reference).is_dir():
        return CAV.from_pretrained(reference)
    parts = reference.split("/")
    if len(parts) > 2:  # "org/repo/subfolder"
        return CAV.from_pretrained("/".join(parts[:2]), subfolder="/".join(parts[2:]))
    return CAV.from_pretrained(reference)


class CAVMethod(DebiasMethod):
    """A method acting along ``config.cav`` at ``config.layer``; checks the CAV against the model and layer."""

    def __init__(self, model: nn.Module, config: CAVConfig):
        super().__init__(model, config)
        self.cav = config.load_cav()
        if config.layer is None and self.cav.layer is not None:
            config.layer = self.cav.layer  # the CAV knows where it belongs
        self.layer: LayerRef = resolve_layer(model, config.layer)
        self._check_cav_origin(model, config)
        self._channels_checked = False

    def _check_cav_origin(self, model: nn.Module, config: CAVConfig) -> None:
        problems = []
        if self.cav.layer is not None:
            try:
                same_layer = resolve_layer(model, self.cav.layer).module is self.layer.module and \
                    resolve_layer(model, self.cav.layer).on_input == self.layer.on_input
            except ValueError:
                same_layer = False
            if not same_layer:
                problems.append(f"it was computed at layer {self.cav.layer!r}, the correction acts at "
                                f"{self.layer.spec!r}")
        model_name = config.base_model_name_or_path or model_identity(model)[0]
        if self.cav.base_model_name_or_path and model_name and \
                _base_name(self.cav.base_model_name_or_path) != _base_name(model_name):
            problems.append(f"it was computed on {self.cav.base_model_name_or_path!r}, this model is {model_name!r}")
        if not problems:
            return
        name = f"The CAV for {self.cav.concept!r}" if self.cav.concept else "The CAV"
        message = f"{name} does not match this model: {'; '.join(problems)}."
        if not config.allow_cav_mismatch:
            raise ValueError(message + " Recompute it for this model and layer, or pass allow_cav_mismatch=True "
                                       "(--allow_cav_mismatch) if you know the directions correspond.")
        warnings.warn(message + " Using it anyway (allow_cav_mismatch=True).", stacklevel=4)

    def fingerprint(self) -> bytes:
        data = self.config.to_dict()
        data.pop("cav", None)  # where each process loaded it from may differ; the vector may not
        return repr(sorted(data.items())).encode() + self.cav.vector.numpy().tobytes()

    def check_channels(self, activation: torch.Tensor) -> None:
        """On the first forward: the layer's channel count must be the CAV's (the error names both)."""
        if not self._channels_checked:
            self.cav.check_activation(activation, self.layer.spec)
            self._channels_checked = True


def _base_name(name: str) -> str:
    """Compare model ids without the ``hf-hub:`` / ``timm/`` spellings and pretrained tags."""
    return name.removeprefix("hf-hub:").removeprefix("timm/").split(".")[0]
