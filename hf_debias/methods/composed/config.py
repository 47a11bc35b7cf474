"""``ComposedConfig``: several corrections applied to one model together, saved as one ``debias_config.json``.

``{"debias_method": "composed", "corrections": [{...}, {...}]}``: each part is a method's own config (its CAV in its
own folder, ``cav_<index>/``). What can be checked without the model is checked here, naming the parts: an empty
list or a list of one, a nested composition, an unknown method, two EnD parts (one bias column feeds one EnD), two
RRR parts reading different mask columns, parts with different freeze policies (one policy applies to the whole
model), and duplicate parts. ``ComposedMethod`` checks the rest on the model (two parts changing one layer).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...cav import CAV
from ...config import REQUIRED_KEYS, DebiasConfig

CAV_FOLDER = "cav_{index}"
"""Where a composition keeps the CAV of its part ``index`` (its position in ``corrections``), next to its
``debias_config.json``."""
SAVED_KEYS = ("debias_method", "corrections")
"""Keys a saved composed ``debias_config.json`` must have (each part then needs ``REQUIRED_KEYS``)."""


@dataclass
class ComposedConfig(DebiasConfig):
    """Several corrections on one model: the hooks of every part, the sum of their penalties.

    Args:
        corrections: two or more method configs (``EnDConfig``, ``RRClArCConfig``, ...) or their dicts; applied in
            this order (a part sees a layer's activation as the parts before it left it). Built by
            ``get_debias_model(model, [config, config, ...])``.

    Rules: at most one EnD part (``DebiasModel`` takes one ``bias_labels`` column) and one RRR mask column; the
    parts that freeze parameters (RR-ClArC, A-ClArC, RRR) must name the same ``freeze`` policy, which applies to
    the whole model (EnD, which has none, trains what that policy leaves trainable); no two identical parts;
    no two parts that change one layer's activation (checked on the model). Each penalty term is logged as
    ``<part name>/<term>`` (``part_names``).
    """

    debias_method: ClassVar[str] = "composed"
    method_title: ClassVar[str] = "Composed correction"
    method_summary: ClassVar[str] = (
        "Several corrections applied together in one fine-tuning run: every part's hooks are on the model and the "
        "training loss adds the sum of their penalties.")
    is_composition: ClassVar[bool] = True

    corrections: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer is not None:
            raise ValueError(f"A composed config has no layer of its own, got layer={self.layer!r}; give each part "
                             "its layer.")
        if not isinstance(self.corrections, (list, tuple)):
            raise ValueError(f"corrections must be a list of debias configs, got {type(self.corrections).__name__}.")
        self.corrections = [_part(index, part) for index, part in enumerate(self.corrections)]
        if not self.corrections:
            raise ValueError("corrections is empty: a composed correction needs two or more configs, e.g. "
                             "[EnDConfig(...), RRClArCConfig(cav=...)].")
        if len(self.corrections) == 1:
            raise ValueError(f"corrections holds one config ({self.corrections[0].debias_method}): use that config "
                             "itself (get_debias_model(model, [config]) does so).")
        self._check_parts()

    # ------------------------------------------------------------------ checks without the model
    def _check_parts(self) -> None:
        labels = self.labels()
        ends = [labels[i] for i, part in enumerate(self.corrections) if part.debias_method == "end"]
        if len(ends) > 1:
            raise ValueError(f"{' and '.join(ends)} are both EnD: EnD reads the one bias_labels column a "
                             "DebiasModel is given, so a composition holds at most one EnD part; merge them into one "
                             "(its alpha and beta).")
        mask_columns = {labels[i]: part.mask_column for i, part in enumerate(self.corrections)
                        if part.debias_method == "rrr"}
        if len(set(mask_columns.values())) > 1:
            raise ValueError(f"The RRR parts read different mask columns ({mask_columns}); a DebiasModel is given "
                             "one masks tensor: give every RRR part the same mask_column.")
        freezes = {labels[i]: part.freeze for i, part in enumerate(self.corrections) if hasattr(part, "freeze")}
        if len(set(freezes.values())) > 1:
            shown = ", ".join(f"{label} freeze={policy!r}" for label, policy in freezes.items())
            raise ValueError(f"The parts freeze differently: {shown}. One freeze policy applies to the whole model: "
                             "give every part the same freeze ('conv_norm', 'before_layer' or 'none').")
        for first in range(len(self.corrections)):
            for second in range(first + 1, len(self.corrections)):
                if same_part(self.corrections[first], self.corrections[second]):
                    raise ValueError(f"{labels[first]} and {labels[second]} are identical: the same correction "
                                     "twice only doubles its weight; remove one (or raise its weight).")

    # ------------------------------------------------------------------ names
    def labels(self) -> list[str]:
        """How errors name the parts: ``corrections[1] (rrclarc)``."""
        return [f"corrections[{index}] ({part.debias_method})" for index, part in enumerate(self.corrections)]

    def part_names(self) -> list[str]:
        """The prefix of each part's logged penalty terms: the method (``end``) when it occurs once, else the
        method and the CAV's concept (``rrclarc_ruler``) when those are known and differ, else the method and
        the part's index (``rrclarc_2``)."""
        methods = [part.debias_method for part in self.corrections]
        names = []
        for index, part in enumerate(self.corrections):
            method = part.debias_method
            if methods.count(method) == 1:
                names.append(method)
                continue
            same = [other for other in self.corrections if other.debias_method == method]
            concepts = [_concept(other) for other in same]
            if all(concepts) and len(set(concepts)) == len(concepts):
                names.append(f"{method}_{_concept(part)}")
            else:
                names.append(f"{method}_{index}")
        return names

    @property
    def mask_column(self) -> str | None:
        """The mask column of the RRR part (``DebiasTrainer`` keeps it), None without one."""
        return next((part.mask_column for part in self.corrections if part.debias_method == "rrr"), None)

    # ------------------------------------------------------------------ JSON and files
    def to_dict(self) -> dict[str, Any]:
        return {"debias_method": self.debias_method, "corrections": [part.to_dict() for part in self.corrections],
                "base_model_name_or_path": self.base_model_name_or_path, "revision": self.revision,
                "hf_debias_version": self.hf_debias_version}

    @classmethod
    def missing_saved_fields(cls, data: dict[str, Any]) -> list[str]:
        missing = [key for key in SAVED_KEYS if key not in data]
        parts = data.get("corrections")
        if isinstance(parts, list):
            for index, part in enumerate(parts):
                if isinstance(part, dict):
                    missing += [f"corrections[{index}].{key}" for key in REQUIRED_KEYS if key not in part]
        return missing

    def cav_parts(self) -> list[tuple[int, Any]]:
        """``(index, part)`` of the parts that correct along a CAV."""
        return [(index, part) for index, part in enumerate(self.corrections) if hasattr(part, "load_cav")]

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """One ``debias_config.json`` plus each CAV part's CAV in ``cav_<index>/``, referenced relatively."""
        folder = Path(save_directory)
        with contextlib.ExitStack() as stack:
            for index, part in self.cav_parts():
                stack.enter_context(_cav_saved_as(part, folder, CAV_FOLDER.format(index=index)))
            return super().save_pretrained(folder)

    def resolve_paths(self, directory: Path) -> None:
        """Each part's paths, checked as that method checks them (a CAV folder inside ``directory``)."""
        for label, part in zip(self.labels(), self.corrections):
            try:
                part.resolve_paths(directory)
            except ValueError as err:
                raise ValueError(f"{label}: {err}") from None

    def card_notes(self) -> list[str]:
        return [note for part in self.corrections if callable(getattr(part, "card_notes", None))
                for note in part.card_notes()]


@contextlib.contextmanager
def _cav_saved_as(part, folder: Path, subfolder: str) -> Iterator[None]:
    """The part's CAV written to ``folder / subfolder`` and referenced as ``subfolder`` while the config is
    written (as ``CAVConfig.save_pretrained`` does for its ``cav/``)."""
    cav = part.load_cav()
    saved_from = cav.name_or_path
    cav.save_pretrained(folder / subfolder)
    cav.name_or_path = subfolder
    try:
        yield
    finally:
        cav.name_or_path = saved_from or str(folder / subfolder)


def _part(index: int, part: object) -> DebiasConfig:
    where = f"corrections[{index}]"
    if isinstance(part, dict):
        if part.get("debias_method") == ComposedConfig.debias_method:
            raise ValueError(f"{where} is itself a composed correction; list its parts in corrections directly.")
        try:
            return DebiasConfig.from_dict(part)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {err}") from None
    if isinstance(part, ComposedConfig):
        raise ValueError(f"{where} is itself a composed correction; list its parts in corrections directly.")
    if not isinstance(part, DebiasConfig):
        raise ValueError(f"{where} must be a debias config such as EnDConfig or RRClArCConfig (or its dict), got "
                         f"{type(part).__name__}.")
    return part


def _concept(part) -> str | None:
    cav = getattr(part, "cav", None)
    if isinstance(cav, CAV) and cav.concept:
        return re.sub(r"[^A-Za-z0-9_]+", "_", cav.concept)
    return None


def same_part(first: DebiasConfig, second: DebiasConfig) -> bool:
    """Whether two parts are the same correction: equal settings and, for CAV parts, the same CAV (one object,
    one reference, or equal vectors and metadata)."""
    if first.to_dict() != second.to_dict():
        return False
    cavs = getattr(first, "cav", None), getattr(second, "cav", None)
    if all(isinstance(cav, CAV) for cav in cavs):
        a, b = cavs
        return a is b or (a.metadata() == b.metadata() and torch.equal(a.vector, b.vector))
    return cavs[0] == cavs[1] and not any(isinstance(cav, CAV) for cav in cavs)
