"""The weight files behind bench/tiers.py's rows: a random-weight model of a real shape,
made once, and the page cache state of its files (dropped for cold rows, read for warm)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig

GB = 1e9
SHARD_BYTES = 5 * 10**9  # what Hugging Face's save_pretrained makes by default


def llama3(hidden: int, layers: int, intermediate: int, tied: bool, rope: float) -> dict[str, Any]:
    """A Llama 3 config: 32 heads, 8 KV heads, 128256-token vocabulary, llama3 rope scaling."""
    scaling = {"rope_type": "llama3", "factor": rope, "low_freq_factor": 1.0}
    scaling |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": intermediate,
        "vocab_size": 128256,
        "tie_word_embeddings": tied,
        "rope_theta": 500000.0,
        "rope_scaling": scaling,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
    }


SHAPES = {  # Llama-3.2-1B and Llama-3.1-8B
    "1b": llama3(2048, 16, 8192, tied=True, rope=32.0),
    "8b": llama3(4096, 32, 14336, tied=False, rope=8.0),
}


# -- the random-weight model ------------------------------------------------------------


def make_model(shape: str, root: Path, device: torch.device) -> Path:
    """A random bf16 model of `shape` in `root`, made once (reused while complete)."""
    folder = root / f"llama-{shape}-shape-random"
    done = folder / ".complete"
    if done.is_file() and done.read_text() == json.dumps(SHAPES[shape], sort_keys=True):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = LlamaConfig(**SHAPES[shape])
    config.dtype = torch.bfloat16
    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    names = [
        (n, p.shape)
        for n, p in skeleton.named_parameters(remove_duplicate=False)
        if not (config.tie_word_embeddings and n == "lm_head.weight")  # saved once, as HF does
    ]
    generator = torch.Generator(device).manual_seed(0)
    shards: list[dict[str, torch.Tensor]] = [{}]
    held = 0
    weight_map: dict[str, str] = {}
    files: list[str] = []

    def flush() -> None:
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shards[-1], folder / name, metadata={"format": "pt"})
        files.append(name)
        weight_map.update(dict.fromkeys(shards[-1], name))
        shards[-1] = {}

    for name, size in names:
        # Made directly in bf16 on the device, one tensor at a time: no fp32 copy of the model.
        tensor = torch.empty(size, dtype=torch.bfloat16, device=device)
        if name.endswith("norm.weight"):
            tensor.fill_(1.0)
        else:
            tensor.normal_(0.0, 0.02, generator=generator)
        nbytes = tensor.numel() * tensor.element_size()
        if held and held + nbytes > SHARD_BYTES:
            flush()
            held = 0
        shards[-1][name] = tensor.cpu()
        held += nbytes
    flush()
    if len(files) == 1:
        (folder / files[0]).rename(folder / "model.safetensors")
    else:
        total = sum((folder / f).stat().st_size for f in files)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(folder)
    done.write_text(json.dumps(SHAPES[shape], sort_keys=True))
    return folder


# -- page cache ---------------------------------------------------------------------------


def drop_pages(files: list[Path]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_rate(path: Path, size: int = 64 << 20) -> float:
    """GB/s of one read of `size` bytes from the middle of `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        length = min(size, os.fstat(fd).st_size)
        start = (os.fstat(fd).st_size - length) // 2
        buffer = bytearray(length)
        began = time.perf_counter()
        os.preadv(fd, [buffer], start)
        return length / (time.perf_counter() - began) / GB
    finally:
        os.close(fd)


def make_cold(files: list[Path]) -> float:
    """Drop the files' pages; the GB/s of a sample read after, to tell if the kernel did."""
    drop_pages(files)
    rate = read_rate(max(files, key=lambda f: f.stat().st_size))
    drop_pages(files)  # the sample itself is cached now
    return rate


def cold_note(rates: list[float], warm: float) -> str:
    """Pages count as dropped when a sample read ran at less than half the warm rate."""
    kept = sum(rate > 0.5 * warm for rate in rates)
    span = f"{min(rates):.1f}-{max(rates):.1f} GB/s"
    if kept:
        return f"KEPT by the kernel in {kept} of {len(rates)} runs (sample reads {span})"
    return f"dropped (sample reads {span})"


def make_warm(files: list[Path]) -> None:
    for path in files:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
