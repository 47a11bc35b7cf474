"""Push a saved folder to the Hub in exactly one commit.

``HfApi.upload_folder`` may split a large folder into several commits (its xet pipeline), so hf_debias builds
the commit itself: one ``CommitOperationAdd`` per file, one ``create_commit``. The folder is written completely
before anything is sent, so a failed push commits nothing and leaves the saved files where they are. Pickle
files are never uploaded. The token goes to ``HfApi`` and nowhere else: it is never printed or logged.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .resolve import PICKLE_PATTERNS


class PushError(RuntimeError):
    """A push failed. Nothing was committed; ``folder`` still holds everything that was to be pushed."""

    def __init__(self, message: str, folder: Path):
        super().__init__(message)
        self.folder = folder


def files_to_push(folder: str | os.PathLike) -> list[Path]:
    """Every file under ``folder`` except pickle files and hidden ones (``.git``, ``.cache``)."""
    root = Path(folder)
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in PICKLE_PATTERNS):
            continue
        files.append(path)
    return files


def push_folder(folder: str | os.PathLike, repo_id: str, *, commit_message: str = "Upload with hf_debias",
                commit_description: str | None = None, token: str | None = None, private: bool | None = None,
                revision: str | None = None, create_pr: bool = False, path_in_repo: str = ""):
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; return huggingface_hub's ``CommitInfo``.

    Raises:
        PushError: the repo could not be created or the commit failed; the message says where the files are.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not isinstance(repo_id, str) or not repo_id or repo_id.count("/") > 1:
        raise ValueError(f"repo_id must look like 'name' or 'org/name', got {repo_id!r}.")
    files = files_to_push(folder)
    if not files:
        raise ValueError(f"Nothing to push: {str(folder)!r} holds no files.")
    prefix = f"{path_in_repo.strip('/')}/" if path_in_repo.strip("/") else ""
    operations = [CommitOperationAdd(path_in_repo=prefix + path.relative_to(folder).as_posix(),
                                     path_or_fileobj=str(path)) for path in files]
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.create_commit(repo_id, operations, commit_message=commit_message,
                                 commit_description=commit_description, revision=revision, create_pr=create_pr)
    except Exception as err:
        cause = f"{type(err).__name__}: {err}"
        if token:
            cause = cause.replace(token, "***")
        raise PushError(f"Pushing {str(folder)!r} to {repo_id!r} failed, and nothing was committed; the saved files "
                        f"are intact in {str(folder)!r}. Retry with hf_debias.push_folder({str(folder)!r}, "
                        f"{repo_id!r}). Cause: {cause}", folder) from None


def save_and_push(save: Callable[[Path], Any], repo_id: str, *, save_directory: str | os.PathLike | None = None,
                  **push_kwargs: Any):
    """``save(folder)`` into ``save_directory`` (kept) or a fresh staging folder, then push it in one commit.

    A staging folder is removed after a successful push and kept after a failed one (``PushError`` names it)."""
    staging = save_directory is None
    folder = Path(tempfile.mkdtemp(prefix="hf_debias_push_")) if staging else Path(save_directory)
    save(folder)
    info = push_folder(folder, repo_id, **push_kwargs)
    if staging:
        shutil.rmtree(folder, ignore_errors=True)
    return info
