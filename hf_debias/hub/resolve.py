"""Find a saved artifact: a local folder, or a Hub repo resolved through huggingface_hub's cache. A file of a local
folder must resolve inside it (no symlink out).

Every Hub lookup goes through here so that "not found" always reads the same way: it names the id, says whether
offline mode is on, and says what to do — instead of a bare ``LocalEntryNotFoundError`` from deep inside.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .paths import inside

PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]
"""Files hf_debias never downloads, reads or uploads (pickle-based formats)."""


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _not_found(name: str, what: str, err: Exception) -> Exception:
    where = ("offline mode is on (HF_HUB_OFFLINE=1), so only the local Hugging Face cache was searched"
             if _offline() else "the Hub was asked")
    return FileNotFoundError(f"{name!r} is not a local folder and {what} could not be found: {where}. Pass a "
                             f"folder, fix the repo id, or download it once with network access "
                             f"({type(err).__name__}).")


def resolve_folder(name_or_path: str | os.PathLike, *, revision: str | None = None,
                   allow_patterns: list[str] | None = None, **hub_kwargs: Any) -> Path:
    """A local folder as is, else the Hub repo's snapshot (downloaded or from the cache), without pickle files."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=allow_patterns,
                                      ignore_patterns=PICKLE_PATTERNS, **hub_kwargs))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise _not_found(str(name_or_path), "no such repo", err) from err
    except ValueError as err:  # an id that is not a valid repo id
        raise ValueError(f"{str(name_or_path)!r} is neither a local folder nor a valid Hub repo id ({err}).") from err


def resolve_file(name_or_path: str | os.PathLike, filename: str, *, subfolder: str | None = None,
                 revision: str | None = None, **hub_kwargs: Any) -> Path:
    """One file of a local folder or of a Hub repo (downloaded or from the cache)."""
    folder = Path(name_or_path) / (subfolder or "")
    if Path(name_or_path).is_dir():
        path = folder / filename
        if not path.is_file():
            found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise FileNotFoundError(f"{str(folder)!r} has no {filename}; found {found}.")
        return inside(name_or_path, path, filename)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(str(name_or_path), filename, subfolder=subfolder, revision=revision,
                                    **hub_kwargs))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        shown = f"{subfolder}/{filename}" if subfolder else filename
        raise _not_found(str(name_or_path), f"its file {shown}", err) from err
    except ValueError as err:
        raise ValueError(f"{str(name_or_path)!r} is neither a local folder nor a valid Hub repo id ({err}).") from err
