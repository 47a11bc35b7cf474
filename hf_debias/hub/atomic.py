"""Atomic saves: write into a temporary sibling folder, then move into place in an order that is safe to crash in.

A save into a folder that does not exist (or is empty) is one ``rename``. Into a folder that holds an earlier save,
the files are moved one by one, in this order:

1. the *barrier*: ``config.json`` in a guarded form (the new save's own guarded config, or one marked "save in
   progress"), so that plain timm / transformers refuse the folder from now on;
2. every file an earlier hf_debias save wrote there (``OWNED``) is removed — stale weights, an old ``cav/``, the
   old ``debias_config.json``;
3. the new files, except the ``last`` ones;
4. the ``last`` files, in order (``debias_config.json``, whose record of sha256 sums ties it to the files above,
   then the final ``config.json`` when it differs from the barrier).

A crash between any two moves therefore leaves a folder that loads as the old model, the new model, or a clear
error (a guarded ``config.json`` without its ``debias_config.json``, or one that disagrees with it) — never as the
uncorrected network. Files hf_debias did not write are left alone.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

OWNED = ("config.json", "model.safetensors", "hf_debias_model.safetensors", "model-*-of-*.safetensors",
         "model.safetensors.index.json", "debias_config.json", "preprocessor_config.json", "README.md", "report.png",
         "heatmaps.png",
         "cav/cav.safetensors", "cav/cav_config.json", "cav_[0-9]*/cav.safetensors",
         "cav_[0-9]*/cav_config.json")
"""What an hf_debias model save writes (relative POSIX paths, ``fnmatch`` patterns; ``preprocessor_config.json``
when it is given an image processor, or Trainer's ``processing_class`` writes it; ``cav_<index>/``: the CAV of a
composed correction's part ``index``): the files a later save into the same folder replaces or removes, and (with
``CAV_OWNED``) the only files a push uploads."""

CAV_OWNED = ("cav.safetensors", "cav_config.json", "README.md", "*/cav.safetensors", "*/cav_config.json",
             "*/README.md")
"""What a CAV save (one CAV, or ``save_cavs``' subfolders) writes."""

_REPLACE = os.replace
"""The primitive every move goes through (patched by the fault-injection tests)."""


def matches(relative: str, patterns: Sequence[str]) -> bool:
    """Whether the relative POSIX path matches one of ``patterns`` (a ``*`` does not cross ``/``)."""
    depth = relative.count("/")
    return any(pattern.count("/") == depth and fnmatch.fnmatchcase(relative, pattern) for pattern in patterns)


def files_under(folder: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``folder`` (symlinks are not followed, nor listed)."""
    found = []
    for directory, subdirs, names in os.walk(folder, followlinks=False):
        subdirs[:] = [name for name in subdirs if not os.path.islink(os.path.join(directory, name))]
        for name in names:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


@contextlib.contextmanager
def staging_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh, empty temporary sibling of ``target`` (same file system, so moves are renames); removed afterwards
    whatever happens. The parent of ``target`` is created if needed."""
    target = Path(os.path.abspath(target))  # "." or "a/..": the sibling must be outside the folder
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.hf_debias-", dir=target.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.hf_debias-tmp")
    temporary.write_bytes(data)
    _REPLACE(temporary, path)


def install(staging: Path, target: str | os.PathLike, *, owned: Sequence[str], barrier: tuple[str, bytes] | None = None,
            last: Sequence[str] = ()) -> Path:
    """Move the files of ``staging`` into ``target`` in the crash-safe order of the module docstring.

    Args:
        owned: patterns of the files an earlier hf_debias save wrote: all removed (after the barrier), the
            new save's own files then take their place.
        barrier: ``(name, bytes)`` written first, before anything else changes (a guarded ``config.json``).
        last: new files moved at the end, in this order (a file that is also the barrier and identical to it
            stays as the barrier wrote it).
    """
    target = Path(os.path.abspath(target))
    if target.is_symlink():
        raise ValueError(f"{str(target)!r} is a symlink; save into a real folder.")
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        _REPLACE(staging, target)  # one rename: the folder appears complete or not at all
        return target
    if not target.is_dir():
        raise ValueError(f"{str(target)!r} exists and is not a folder.")
    new = files_under(staging)
    if barrier is not None:
        _write_atomically(target / barrier[0], barrier[1])
    emptied = set()
    for relative in files_under(target):
        if matches(relative, owned) and (barrier is None or relative != barrier[0]):
            (target / relative).unlink()
            emptied.update(parent for parent in Path(relative).parents if parent != Path("."))
    for directory in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # a folder the old save left empty (rmdir refuses a non-empty one)
            (target / directory).rmdir()
    ordered = [name for name in new if name not in last] + [name for name in last if name in new]
    for relative in ordered:
        source, destination = staging / relative, target / relative
        if barrier is not None and relative == barrier[0] and source.read_bytes() == barrier[1]:
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        _REPLACE(source, destination)
    return target
