"""Several CAVs in one repo: each in its own subfolder, with a card that lists them all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..cav import CAV
from ..cav.cav import CAV_CONFIG_NAME
from .atomic import CAV_OWNED, files_under, install, staging_folder
from .cards import cav_card
from .paths import check_subfolder
from .push import save_and_push


def _by_folder(cavs: Mapping[str, CAV] | list[CAV] | CAV) -> dict[str, CAV]:
    """``{subfolder: CAV}``; a list is keyed by concept name, a single CAV goes to the repo root."""
    if isinstance(cavs, CAV):
        return {"": cavs}
    if isinstance(cavs, Mapping):
        mapping = dict(cavs)
    else:
        mapping = {}
        for cav in cavs:
            if not isinstance(cav, CAV) or not cav.concept:
                raise ValueError("A list of CAVs is stored by concept name, so every CAV needs a concept; pass "
                                 "{subfolder: CAV} instead.")
            if cav.concept in mapping:
                raise ValueError(f"Two CAVs share the concept {cav.concept!r}; pass {{subfolder: CAV}} instead.")
            mapping[cav.concept] = cav
    if not mapping or not all(isinstance(cav, CAV) for cav in mapping.values()):
        raise ValueError(f"cavs must be a CAV, a list of CAVs or {{subfolder: CAV}}, got {cavs!r}.")
    for folder in mapping:
        check_subfolder(folder, "CAV subfolder")
        if folder.count("/"):
            raise ValueError(f"CAV subfolder {folder!r} must be one folder name such as 'ruler' (no '/').")
    return mapping


def save_cavs(cavs: Mapping[str, CAV] | list[CAV] | CAV, save_directory: str | os.PathLike, *,
              repo_id: str | None = None, card_folder: str = "") -> Path:
    """Write each CAV into its subfolder of ``save_directory`` plus a ``README.md`` card listing them (in
    ``card_folder``: the root by default). Atomic like every hf_debias save (``hub.atomic``): CAV files of an
    earlier save there are replaced or removed, other files left alone."""
    mapping = _by_folder(cavs)
    card_folder = check_subfolder(card_folder, "card_folder")
    folder = Path(save_directory)
    with staging_folder(folder) as staging:
        for subfolder, cav in mapping.items():
            cav.save_pretrained(staging / subfolder)
        (staging / card_folder).mkdir(parents=True, exist_ok=True)
        cav_card(mapping, repo_id=repo_id or folder.resolve().name).save(staging / card_folder / "README.md")
        configs = [name for name in files_under(staging) if Path(name).name == CAV_CONFIG_NAME]
        install(staging, folder, owned=CAV_OWNED, last=configs)
    for subfolder, cav in mapping.items():
        cav.name_or_path = str(folder / subfolder) if subfolder else str(folder)
    return folder


def push_cavs_to_hub(repo_id: str, cavs: Mapping[str, CAV] | list[CAV] | CAV, *,
                     commit_message: str = "Upload CAVs with hf_debias", token: str | None = None,
                     private: bool | None = None, revision: str | None = None, create_pr: bool = False,
                     card_folder: str = ""):
    """Push CAVs (``{subfolder: CAV}``, a list keyed by concept, or one CAV for the root) in one commit, with a
    card listing them in ``card_folder`` (the repo root by default: push a repo's concepts together)."""
    mapping = _by_folder(cavs)

    def save(folder: Path) -> None:
        origins = {subfolder: cav.name_or_path for subfolder, cav in mapping.items()}
        try:
            save_cavs(mapping, folder, repo_id=repo_id, card_folder=card_folder)
        finally:  # saving into a staging folder does not re-point the CAVs
            for subfolder, cav in mapping.items():
                cav.name_or_path = origins[subfolder]

    return save_and_push(save, repo_id, commit_message=commit_message, token=token, private=private,
                         revision=revision, create_pr=create_pr)
