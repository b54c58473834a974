"""The fast loader builds the same model as from_pretrained, bit for bit, or falls back to it."""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config

from pervade.engines import fast_load
from pervade.engines.bundled import ensure_smollm2
from pervade.engines.fast_load import (
    Bounce,
    Readers,
    fast_build,
    load_causal_lm,
    read_file,
    read_header,
)

CPU = torch.device("cpu")
IDS = torch.tensor([[3, 17, 250, 9, 101, 64, 7, 300], [5, 5, 42, 199, 2, 88, 13, 6]])


@pytest.fixture(scope="module", autouse=True)
def two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def tiny_config(kind: str, tied: bool) -> PretrainedConfig:
    shape: dict[str, Any] = {
        "vocab_size": 320,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
        "tie_word_embeddings": tied,
        # Large weights: a wrong or missing tensor changes every logit.
        "initializer_range": 0.3,
    }
    if kind == "llama":
        return LlamaConfig(rope_theta=500000.0, **shape)
    return Qwen2Config(**shape)


def save_tiny(path: Path, kind: str = "llama", tied: bool = True, shard: str | None = None) -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, tied))
    if shard is None:
        model.save_pretrained(path)
    else:
        model.save_pretrained(path, max_shard_size=shard)
    return path


def reference(path: Path, dtype: torch.dtype) -> Any:
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def assert_same_model(fast: Any, ref: Any, ids: torch.Tensor = IDS) -> None:
    """Same logits, parameters, buffers (values and dtypes), tying and generation settings."""
    with torch.inference_mode():
        assert torch.equal(fast(ids).logits, ref(ids).logits)
    fast_state, ref_state = fast.state_dict(), ref.state_dict()
    assert fast_state.keys() == ref_state.keys()
    for name, value in ref_state.items():
        assert fast_state[name].dtype == value.dtype, name
        assert torch.equal(fast_state[name], value), name
    # Non-persistent buffers are in no file and no state dict: rotary inv_freq among them.
    fast_buffers, ref_buffers = dict(fast.named_buffers()), dict(ref.named_buffers())
    assert fast_buffers.keys() == ref_buffers.keys()
    assert any("inv_freq" in name for name in ref_buffers)
    for name, value in ref_buffers.items():
        assert fast_buffers[name].dtype == value.dtype, name
        assert torch.equal(fast_buffers[name], value), name
    tied = ref.lm_head.weight is ref.get_input_embeddings().weight
    assert (fast.lm_head.weight is fast.get_input_embeddings().weight) == tied
    assert fast.generation_config.to_dict() == ref.generation_config.to_dict()
    assert not fast.training
    assert {p.device.type for p in fast.parameters()} == {"cpu"}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_tiny_models_equal_from_pretrained(
    tmp_path: Path, kind: str, tied: bool, dtype: torch.dtype
) -> None:
    path = save_tiny(tmp_path, kind, tied)  # saved in fp32: bf16 converts while loading
    model, report = load_causal_lm(path, CPU, dtype)
    assert report.method == "fast" and report.reason is None
    file = path / "model.safetensors"
    assert report.bytes == file.stat().st_size - read_header(file)[0]
    assert_same_model(model, reference(path, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_through_bounce_buffers_and_threads(tmp_path: Path, dtype: torch.dtype) -> None:
    path = save_tiny(tmp_path, "llama", tied=False)
    # 64 KiB buffers: every file takes many rounds through both of them.
    model, _ = fast_build(path, CPU, dtype, readers=3, bounce=True, bounce_bytes=64 << 10)
    assert_same_model(model, reference(path, dtype))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_sharded_folder(tmp_path: Path, tied: bool) -> None:
    path = save_tiny(tmp_path, "qwen2", tied, shard="100KB")
    shards = sorted(path.glob("model-*.safetensors"))
    assert (path / "model.safetensors.index.json").is_file() and len(shards) > 2
    model, report = load_causal_lm(path, CPU, torch.float32)
    assert report.method == "fast"
    assert report.bytes == sum(s.stat().st_size - read_header(s)[0] for s in shards)
    assert_same_model(model, reference(path, torch.float32))


def test_index_naming_a_missing_shard_is_an_error(tmp_path: Path) -> None:
    path = save_tiny(tmp_path, "llama", shard="100KB")
    next(path.glob("model-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="not there"):
        load_causal_lm(path, CPU, torch.float32)


def test_folder_without_safetensors_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = save_tiny(tmp_path, "llama", tied=True)
    weights = load_file(path / "model.safetensors")
    torch.save(weights, path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger=fast_load.__name__):
        model, report = load_causal_lm(path, CPU, torch.float32)
    assert report.method == "from_pretrained" and report.bytes == 0
    assert report.reason is not None and "no model.safetensors" in report.reason
    assert "from_pretrained" in caplog.text and report.reason in caplog.text
    with torch.inference_mode():
        assert torch.isfinite(model(IDS).logits).all()


def _rewrite_weights(path: Path, change: str) -> None:
    weights = load_file(path / "model.safetensors")
    if change == "unknown name":
        weights["model.extra_projection.weight"] = torch.ones(2, 2)
    elif change == "missing weight":
        del weights["model.layers.0.mlp.up_proj.weight"]
    else:
        weights["model.norm.weight"] = torch.ones(3)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "change, reason",
    [
        ("unknown name", "does not have"),
        ("missing weight", "missing"),
        ("wrong shape", "another shape"),
    ],
)
def test_checkpoints_the_fast_path_cannot_map_fall_back(
    tmp_path: Path, change: str, reason: str
) -> None:
    path = save_tiny(tmp_path, "llama", tied=True)
    _rewrite_weights(path, change)
    with pytest.raises(fast_load.FallbackNeeded, match=reason):
        fast_build(path, CPU, torch.float32)


def test_quantized_config_falls_back(tmp_path: Path) -> None:
    path = save_tiny(tmp_path, "llama")
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(fast_load.FallbackNeeded, match="quantised"):
        fast_build(path, CPU, torch.float32)


def _write_safetensors(path: Path, header: dict[str, Any], data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("bounce", [False, True], ids=["direct", "bounce"])
def test_tensors_at_offsets_that_are_not_whole_elements(tmp_path: Path, bounce: bool) -> None:
    # safetensors does not promise aligned offsets: a 3-byte tensor puts the next at byte 3.
    flags = torch.tensor([1, 0, 1], dtype=torch.uint8)
    values = torch.tensor([[1.5, -2.25]], dtype=torch.float32)
    half = torch.tensor([7.0], dtype=torch.bfloat16)
    data = b"".join(t.numpy().tobytes() for t in (flags, values, half.view(torch.int16)))
    header = {
        "__metadata__": {"format": "pt"},
        "flags": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "values": {"dtype": "F32", "shape": [1, 2], "data_offsets": [3, 11]},
        "half": {"dtype": "BF16", "shape": [1], "data_offsets": [11, 13]},
    }
    path = tmp_path / "odd.safetensors"
    _write_safetensors(path, header, data)
    offset, entries = read_header(path)
    with ThreadPoolExecutor(2) as pool:
        buffers = Bounce(CPU, 4) if bounce else None
        found, size = read_file(path, offset, entries, CPU, Readers(pool, 2), buffers)
    assert size == 13
    assert torch.equal(found["flags"], flags)
    assert torch.equal(found["values"], values)
    assert torch.equal(found["half"], half)


@pytest.mark.parametrize("size", [40 << 20, (40 << 20) + 12345])
def test_parallel_reads_and_bounce_copy_every_byte(tmp_path: Path, size: int) -> None:
    path = tmp_path / "blob"
    payload = os.urandom(size + 100)
    path.write_bytes(payload)
    expected = torch.frombuffer(bytearray(payload[100:]), dtype=torch.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(3) as pool:
            readers = Readers(pool, 3)  # 40 MiB over 3 threads: several parts of >= 16 MiB
            direct = torch.zeros(size, dtype=torch.uint8)
            readers.fill(fd, direct.numpy().data, 100)
            bounced = torch.zeros(size, dtype=torch.uint8)
            Bounce(CPU, 7 << 20).copy(fd, 100, bounced, readers)
    finally:
        os.close(fd)
    assert torch.equal(direct, expected)
    assert torch.equal(bounced, expected)


def test_a_file_shorter_than_its_header_says_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    header = {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    _write_safetensors(path, header, b"\0" * 8)
    offset, entries = read_header(path)
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="shorter"):
        read_file(path, offset, entries, CPU, Readers(pool, 1), None)


@pytest.mark.model
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bundled_model_equals_from_pretrained(dtype: torch.dtype) -> None:
    path = ensure_smollm2()
    model, report = load_causal_lm(path, CPU, dtype)
    assert report.method == "fast"
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314, 2, 28, 9000]])
    assert_same_model(model, reference(path, dtype), ids)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_cuda_through_pinned_bounce_buffers(tmp_path: Path, tied: bool) -> None:
    cuda = torch.device("cuda")
    path = save_tiny(tmp_path, "qwen2", tied, shard="100KB")
    # 64 KiB buffers: many chunks per shard, so both buffers and their events are reused.
    model, moved = fast_build(path, cuda, torch.bfloat16, bounce_bytes=64 << 10)
    assert moved > 0 and {p.device.type for p in model.parameters()} == {"cuda"}
    assert {b.device.type for b in model.buffers()} == {"cuda"}
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda")
    with torch.inference_mode():
        assert torch.equal(model(IDS.to(cuda)).logits, ref(IDS.to(cuda)).logits)
    for name, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
