"""The consistency record that ties a saved folder together.

``debias_config.json`` records the sha256 of every model file saved with it (``config.json``, the weights, the
CAV) under ``hf_debias_files``. ``check_folder`` compares the folder with that record before anything is built,
so a folder mixing two saves (an interrupted save, a file replaced by hand) is refused with the file named,
instead of loading as something else. A guarded ``config.json`` (see ``native``) without its
``debias_config.json`` is refused too: the correction could not be restored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..config import CONFIG_NAME as DEBIAS_CONFIG_NAME
from ..config import FILES_KEY, read_json_object
from .paths import check_subfolder, inside

UNRECORDED = ("README.md", "report.png", "heatmaps.png", "preprocessor_config.json", DEBIAS_CONFIG_NAME)
"""Files a record leaves out: the card and its images (users edit them on the Hub), the image processor (Trainer
rewrites it after each checkpoint) and the record itself."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_record(folder: Path, files: list[str]) -> None:
    """Write the sha256 of ``files`` (relative paths under ``folder``) into ``folder``'s ``debias_config.json``."""
    path = folder / DEBIAS_CONFIG_NAME
    data = read_json_object(path, "debias config")
    data[FILES_KEY] = {name: sha256(folder / name) for name in sorted(files) if name not in UNRECORDED}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_folder(folder: Path, *, guarded: bool) -> None:
    """Refuse ``folder`` when its files disagree with ``debias_config.json``'s record, or when a guarded
    ``config.json`` has no ``debias_config.json``.

    Raises:
        ValueError: naming the missing or mismatching files and what to do.
    """
    path = folder / DEBIAS_CONFIG_NAME
    if not path.is_file():
        if guarded:
            raise ValueError(
                f"{str(folder / 'config.json')!r} is guarded by hf_debias (the correction changes the forward pass, "
                f"or a save into this folder did not finish), but {DEBIAS_CONFIG_NAME} is missing, so the "
                "correction cannot be restored; loading the plain network would give the uncorrected model's "
                "outputs. Nothing was loaded: save the model again, or download the complete repo.")
        return
    inside(folder, path, DEBIAS_CONFIG_NAME)
    record = read_json_object(path, "debias config").get(FILES_KEY)
    if record is None:
        return  # saved by an hf_debias version that kept no record
    if not isinstance(record, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in record.items()):
        raise ValueError(f"{path}: field {FILES_KEY!r} must map file names to sha256 sums, got {record!r}.")
    missing, changed = [], []
    for name, digest in sorted(record.items()):
        check_subfolder(name, f"{path.name} field {FILES_KEY!r} entry", allow_root=False)
        file = folder / name
        if not file.is_file():
            missing.append(name)
        elif sha256(inside(folder, file, name)) != digest:
            changed.append(name)
    if missing or changed:
        problems = ([f"missing {missing}"] if missing else []) + ([f"changed {changed}"] if changed else [])
        raise ValueError(
            f"{str(folder)!r} does not match its {DEBIAS_CONFIG_NAME}: {'; '.join(problems)} since hf_debias saved "
            "it (an interrupted save, or files from two saves mixed). Nothing was loaded: save the model again, or "
            "download the complete repo.")
