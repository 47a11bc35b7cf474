"""Paths that stay inside the lines: subfolder names, references read from saved files, and names recorded in
saved configs and cards.

- ``check_subfolder``: a relative POSIX path with no ``..``, no ``.``, no empty part and no backslash — for every
  subfolder a user or a file names (``save_cavs``, ``CAV.push_to_hub(subfolder=...)``, ``push_folder(path_in_repo=...)``).
- ``inside``: a path under a loaded folder that must resolve inside it (a symlink may not leave it; in a Hub cache
  snapshot, the repo's own ``blobs/`` are inside).
- ``recordable_name``: what a saved config or card records for a base model: its Hub id or its folder's *name*,
  never a local absolute path.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


def check_subfolder(name: object, what: str = "subfolder", *, allow_root: bool = True) -> str:
    """Return ``name`` (``""`` for the root when ``allow_root``) if it is a safe relative path inside a folder.

    Raises:
        ValueError: an absolute path, a ``..`` / ``.`` / empty part, a backslash, or not a string.
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a relative folder name such as 'ruler', got {type(name).__name__} "
                         f"{name!r}.")
    if name == "" and allow_root:
        return name
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":") or \
            any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{what}={name!r} is not a safe relative folder name: it must not be absolute, hold a "
                         "backslash, or have '..', '.' or empty parts (e.g. 'ruler' or 'concepts/ruler').")
    return name


def _roots(root: Path) -> list[Path]:
    """``root`` resolved, plus the repo's ``blobs/`` when ``root`` is (in) a Hub cache snapshot: huggingface_hub
    stores a snapshot's files as symlinks into them."""
    roots = [root.resolve()]
    for folder in (root, *root.parents):
        if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
            roots.append((folder.parent.parent / "blobs").resolve())
            break
    return roots


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str) -> Path:
    """``path`` (under ``root``) if it resolves inside ``root``; a symlink out of it is refused.

    Raises:
        ValueError: ``path`` resolves outside ``root`` (naming both and ``what``).
    """
    root, path = Path(root), Path(path)
    target = path.resolve()
    if not any(target == base or base in target.parents for base in _roots(root)):
        raise ValueError(f"{what} {str(path)!r} resolves to {str(target)!r}, outside {str(root)!r} (a symlink or "
                         "a path leaving the folder); hf_debias reads only files inside the folder it loads.")
    return path


def recordable_name(name: str | None) -> str | None:
    """A base model's Hub id (``org/name``, ``hf-hub:org/name``, a timm name) as is; a local path as its folder's
    name only — so no absolute local path reaches a saved config or card."""
    if not name:
        return name
    text = str(name)
    if text.startswith("hf-hub:"):
        return text
    if text.startswith("local-dir:"):
        text = text.removeprefix("local-dir:")
    looks_like_path = os.path.isabs(text) or text.startswith((".", "~")) or "\\" in text or \
        text.count("/") > 1 or os.path.exists(text)
    if looks_like_path:
        return PurePosixPath(text.replace("\\", "/").rstrip("/")).name or None
    return text
