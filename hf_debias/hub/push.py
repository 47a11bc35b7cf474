"""Push a saved folder to the Hub in exactly one commit, sending only what hf_debias wrote.

``HfApi.upload_folder`` may split a large folder into several commits (its xet pipeline), so hf_debias builds
the commit itself: one ``CommitOperationAdd`` per file, one ``create_commit``. The folder is written completely
before anything is sent, so a failed push commits nothing and leaves the saved files where they are; a repo the
push created is deleted again. Only files an hf_debias save writes are uploaded (an allow-list: ``atomic.OWNED``,
``atomic.CAV_OWNED``); anything else in the folder — notes, ``runs/``, checkpoints,
pickles — and every symlink is left out with a warning. The token goes to ``HfApi`` and nowhere else: it is
never printed, logged or written, and every error message has it (explicit, ``HF_TOKEN`` or the login's)
replaced by ``***``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import CAV_OWNED, OWNED, matches
from .paths import check_subfolder

ALLOWED = (*OWNED, *CAV_OWNED)
"""The only files a push uploads (relative paths, ``fnmatch`` patterns)."""


class PushError(RuntimeError):
    """A push failed. Nothing was committed; ``folder`` still holds everything that was to be pushed."""

    def __init__(self, message: str, folder: Path):
        super().__init__(message)
        self.folder = folder


def known_tokens(token: str | None = None) -> list[str]:
    """Every token this process may hold: ``token``, ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN`` and the login's."""
    tokens = [token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import get_token

        tokens.append(get_token())
    except Exception:  # no login, unreadable token file: nothing more to hide
        pass
    return sorted({t for t in tokens if isinstance(t, str) and t}, key=len, reverse=True)


def redact(text: str, token: str | None = None) -> str:
    """``text`` with every known token (see ``known_tokens``) replaced by ``***``."""
    for secret in known_tokens(token):
        text = text.replace(secret, "***")
    return text


def files_to_push(folder: str | os.PathLike) -> list[Path]:
    """The files under ``folder`` that an hf_debias save wrote (``ALLOWED``); the rest, and every symlink, is left
    out with one warning naming them."""
    root = Path(folder)
    files, skipped = [], []
    for directory, subdirs, names in os.walk(root, followlinks=False):
        for name in sorted(subdirs):
            if os.path.islink(os.path.join(directory, name)):
                skipped.append(Path(directory, name).relative_to(root).as_posix() + "/ (symlink)")
        subdirs[:] = sorted(name for name in subdirs if not os.path.islink(os.path.join(directory, name)))
        for name in sorted(names):
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                skipped.append(f"{relative} (symlink)")
            elif path.is_file() and matches(relative, ALLOWED):
                files.append(path)
            else:
                skipped.append(relative)
    if skipped:
        warnings.warn(f"Not pushing {len(skipped)} file(s) of {str(root)!r} that hf_debias did not write: "
                      f"{sorted(skipped)[:20]}{' ...' if len(skipped) > 20 else ''}.", stacklevel=3)
    return sorted(files)


def push_folder(folder: str | os.PathLike, repo_id: str, *, commit_message: str = "Upload with hf_debias",
                commit_description: str | None = None, token: str | None = None, private: bool | None = None,
                revision: str | None = None, create_pr: bool = False, path_in_repo: str = ""):
    """Create ``repo_id`` if needed and upload the hf_debias files of ``folder`` (see ``files_to_push``) as one
    commit; return huggingface_hub's ``CommitInfo``.

    Raises:
        ValueError: a bad ``repo_id`` or ``path_in_repo``, or nothing to push.
        PushError: the repo could not be created or the commit failed; a repo this call created is deleted
            again; the message says where the files are and never shows the token.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not isinstance(repo_id, str) or not repo_id or repo_id.count("/") > 1:
        raise ValueError(f"repo_id must look like 'name' or 'org/name', got {repo_id!r}.")
    path_in_repo = check_subfolder(path_in_repo.rstrip("/") if isinstance(path_in_repo, str) else path_in_repo,
                                   "path_in_repo")
    files = files_to_push(folder)
    if not files:
        raise ValueError(f"Nothing to push: {str(folder)!r} holds no file that hf_debias writes "
                         f"(such as config.json, model.safetensors, cav_config.json).")
    prefix = f"{path_in_repo}/" if path_in_repo else ""
    operations = [CommitOperationAdd(path_in_repo=prefix + path.relative_to(folder).as_posix(),
                                     path_or_fileobj=str(path)) for path in files]
    api = HfApi(token=token)
    created = False
    try:
        created = not api.repo_exists(repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.create_commit(repo_id, operations, commit_message=commit_message,
                                 commit_description=commit_description, revision=revision, create_pr=create_pr)
    except Exception as err:
        cleanup = ""
        if created:
            try:
                api.delete_repo(repo_id, missing_ok=True)
                cleanup = f" The repo {repo_id!r} that this push created was deleted again."
            except Exception as delete_err:
                cleanup = (f" This push created {repo_id!r}, and deleting it again failed too "
                           f"({type(delete_err).__name__}); delete it on the Hub.")
        raise PushError(redact(
            f"Pushing {str(folder)!r} to {repo_id!r} failed, and nothing was committed; the saved files are intact "
            f"in {str(folder)!r}.{cleanup} Retry with hf_debias.push_folder({str(folder)!r}, {repo_id!r}). Cause: "
            f"{type(err).__name__}: {err}", token), folder) from None


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
