"""The HOST tier's copy of a model in the form its device uses, for CPU workers.

A CPU worker computes in float32 while checkpoints ship bfloat16: every build from the
files converts every weight into fresh memory, and that, not reading, is most of a CPU
build. So the first build of a model found in the HOST cache (tmpfs) also writes its
converted weights there, beside the entry:

    <host root>/.forms/<digest>-<dtype>/model.safetensors   (+ config files)

and later builds on the node (a restarted worker, another worker process, a context demoted
and built again) map that file instead: the parameters are copy-on-write views of the tmpfs
pages, so a build copies no weight at all, and the node's workers share one copy in RAM.
The artifact cache removes a form with its entry (`ArtifactCache._remove`); a form is
written only where the tmpfs keeps room to spare, and atomically (a rename), so a reader
sees a whole form or none.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from pervade.engines.safetensors_files import write_safetensors
from pervade.storage.cache import FORMS_DIR, is_digest
from pervade.storage.host import HOST_MARGIN, default_host_root

logger = logging.getLogger(__name__)

# Files besides the weights that building the skeleton reads.
_CONFIG_FILES = ("config.json", "generation_config.json")


def form_dir(folder: Path, dtype: torch.dtype, host_root: Path | None = None) -> Path | None:
    """Where the device form of `folder` lives, when `folder` is an entry of the HOST cache
    at `host_root` (by default the configured one); else None (no form for it)."""
    root = (host_root or default_host_root()).resolve()
    folder = folder.resolve()
    if folder.parent != root or not is_digest(folder.name):
        return None
    return root / FORMS_DIR / f"{folder.name}-{str(dtype).removeprefix('torch.')}"


def has_form(form: Path | None) -> bool:
    return form is not None and (form / "model.safetensors").is_file()


def write_form(model: Any, folder: Path, form: Path) -> bool:
    """Save `model`'s weights (as they are on the CPU) and its config files as `form`.
    False, with the reason logged, when the tmpfs lacks room or another process wrote it
    first; a failure never affects the model already built."""
    if has_form(form):
        return False
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    form.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(form.parent).free
    if free < size + HOST_MARGIN:
        logger.info("pervade: no device form of %s: %d bytes free on the tmpfs", folder, free)
        return False
    scratch = form.parent / f".{form.name}-{secrets.token_hex(4)}"
    try:
        scratch.mkdir()
        write_safetensors(_untied(model), scratch / "model.safetensors")
        for name in _CONFIG_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, scratch / name)
        os.rename(scratch, form)  # fails when another process got there first: fine
        return True
    except OSError as exc:
        logger.info("pervade: no device form of %s: %s", folder, exc)
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _untied(model: Any) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once, under its first name (the input
    embedding before the tied head, as checkpoints hold it; the loader ties the rest)."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.contiguous()
    return out
