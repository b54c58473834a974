"""The model folder of bench/gpu.py's load and e2e sections: bench/tiers.py's random model
with a tokenizer, its artifact digest, and its entry in a HOST cache as staging leaves one."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

import tiers
from pervade.core.cache_policy import Tier
from pervade.core.context import Artifact
from pervade.storage.cache import ArtifactCache
from pervade.storage.digests import FileRecord, digest_files, hash_file, list_files
from pervade.storage.host import HOST_MARGIN


def make_folder(shape: str, root: Path, device: torch.device, tokenizer: Any) -> Path:
    """bench/tiers.py's random model of `shape`, with a tokenizer (HFEngine.load needs one)."""
    folder = tiers.make_model(shape, root, device)
    if not (folder / "tokenizer.json").is_file():
        tokenizer.save_pretrained(folder)
    return folder


def digest_folder(folder: Path) -> tuple[str, dict[str, str]]:
    """The artifact digest of `folder` (pervade.storage.digests), its files hashed at once."""
    files = list_files(folder)
    with ThreadPoolExecutor(max(1, len(files))) as pool:
        shas = list(pool.map(hash_file, (path for _, path in files)))
    pairs = [(relative, sha) for (relative, _), sha in zip(files, shas, strict=True)]
    return digest_files("folder", pairs), dict(pairs)


class _FolderCopy:
    """A `Source` that copies a hashed folder into a cache entry, its files side by side."""

    tier = Tier.ORIGIN
    kind = "folder"

    def __init__(self, folder: Path, shas: dict[str, str]) -> None:
        self.where = str(folder)
        self._files = list_files(folder)
        self._shas = shas
        self.size = sum(path.stat().st_size for _, path in self._files)

    def fill(self, partial: Path) -> list[FileRecord]:
        def copy(pair: tuple[str, Path]) -> FileRecord:
            relative, path = pair
            target = partial / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            stat = target.stat()
            return FileRecord(relative, stat.st_size, self._shas[relative], stat.st_mtime_ns)

        with ThreadPoolExecutor(max(1, len(self._files))) as pool:
            return list(pool.map(copy, self._files))


def seed_host(root: Path, artifact: Artifact, folder: Path, shas: dict[str, str]) -> Path:
    """Put the folder into a HOST cache at `root` as a worker's staging would; its path."""
    cache = ArtifactCache(root, None, margin=HOST_MARGIN, tier=Tier.HOST)
    staged = cache.stage(artifact, _FolderCopy(folder, shas))
    cache.unpin(artifact.digest)
    return staged.path
