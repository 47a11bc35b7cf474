"""A Hugging Face Hub on this machine only: an offline cache that repos are "published" into, and a patched
``HfApi`` whose commits land in that cache (the rest of the real client runs unchanged)."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import huggingface_hub
from huggingface_hub import constants


def publish(cache: Path, folder: Path | dict[str, bytes], repo_id: str, *, blobs: bool = False) -> Path:
    """Make ``folder`` (or ``{path_in_repo: bytes}``) the ``main`` revision of ``repo_id`` in the cache; with
    ``blobs``, in huggingface_hub's own layout (each snapshot file a symlink into ``blobs/``)."""
    files = folder if isinstance(folder, dict) else {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in Path(folder).rglob("*") if path.is_file()}
    commit = hashlib.sha1(repr(sorted((k, len(v)) for k, v in files.items())).encode() + repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if blobs:
            blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(content)
            target.symlink_to(Path(os.path.relpath(blob, target.parent)))
        else:
            target.write_bytes(content)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@dataclass
class FakeHub:
    """Records ``repo_exists`` / ``create_repo`` / ``create_commit`` / ``delete_repo`` calls and publishes each commit
    into the cache (``existing``: the repos there before the test)."""

    cache: Path
    repos: list[str] = field(default_factory=list)
    commits: list[dict] = field(default_factory=list)
    tokens: list[object] = field(default_factory=list)
    fail_with: Exception | None = None
    contents: dict[str, dict[str, bytes]] = field(default_factory=dict)
    existing: set[str] = field(default_factory=set)
    deleted: list[str] = field(default_factory=list)

    def repo_exists(self, api, repo_id, **kwargs):
        return repo_id in self.existing

    def create_repo(self, api, repo_id, **kwargs):
        self.tokens.append(api.token)
        self.repos.append(repo_id)
        self.existing.add(repo_id)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def delete_repo(self, api, repo_id, **kwargs):
        self.deleted.append(repo_id)
        self.existing.discard(repo_id)

    def create_commit(self, api, repo_id, operations, **kwargs):
        if self.fail_with is not None:
            raise self.fail_with
        files = {}
        for operation in operations:
            assert isinstance(operation, huggingface_hub.CommitOperationAdd)
            files[operation.path_in_repo] = Path(operation.path_or_fileobj).read_bytes()
        self.commits.append({"repo_id": repo_id, "files": sorted(files), **kwargs})
        merged = {**self.contents.get(repo_id, {}), **files}
        self.contents[repo_id] = merged
        publish(self.cache, merged, repo_id)
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0",
                                          commit_message=kwargs.get("commit_message", ""),
                                          commit_description="", oid="0" * 40)

    def patch(self):
        hub = self
        return mock.patch.multiple(
            huggingface_hub.HfApi,
            repo_exists=lambda api, repo_id, **kw: hub.repo_exists(api, repo_id, **kw),
            delete_repo=lambda api, repo_id, **kw: hub.delete_repo(api, repo_id, **kw),
            create_repo=lambda api, repo_id, **kw: hub.create_repo(api, repo_id, **kw),
            create_commit=lambda api, repo_id, operations, **kw: hub.create_commit(api, repo_id, operations, **kw))


def offline_cache(monkeypatch, tmp_path: Path) -> Path:
    """Point huggingface_hub (and so timm and transformers) at an empty cache with offline mode on."""
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
