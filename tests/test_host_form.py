"""CPU builds from the HOST tier: a model converted once is kept in tmpfs in its device's
dtype, and later builds map it (no copy of a weight) with the same result."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pervade.core.cache_policy import Tier
from pervade.engines.fast_load import load_causal_lm
from pervade.engines.host_form import form_dir, has_form
from pervade.storage.cache import ArtifactCache
from tests.test_fast_load import IDS, assert_same_model, save_tiny

CPU = torch.device("cpu")


def in_host_cache(tmp_path: Path, tied: bool = True) -> tuple[Path, Path]:
    """A tiny bf16 model as an entry of a HOST cache root: (root, entry folder)."""
    source = save_tiny(tmp_path / "source", tied=tied)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    root = tmp_path / "host"
    entry = root / hashlib.sha256(str(tmp_path).encode()).hexdigest()
    model.save_pretrained(entry)
    return root, entry


def mapped_from(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from the file at `path`."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path):
            begin, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((begin, end))
    return ranges


@pytest.mark.parametrize("tied", [True, False])
def test_first_build_writes_the_form_and_the_next_maps_it(tmp_path: Path, tied: bool) -> None:
    root, entry = in_host_cache(tmp_path, tied)
    reference = AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32).eval()
    form = form_dir(entry, torch.float32, root)
    assert form is not None and not has_form(form)

    first, report = load_causal_lm(entry, CPU, torch.float32, host_root=root)
    assert report.method == "fast"
    assert has_form(form), "the converted weights were kept beside the entry"
    assert_same_model(first, reference)

    again, report = load_causal_lm(entry, CPU, torch.float32, host_root=root)
    assert report.method == "host form"
    assert_same_model(again, reference)
    # No weight was copied: every parameter lies in the mapping of the form's file.
    ranges = mapped_from((form / "model.safetensors").resolve())
    assert ranges
    for name, param in again.named_parameters():
        ptr = param.data_ptr()
        assert any(b <= ptr < e for b, e in ranges), f"{name} is not a view of the form"


def test_folders_outside_the_host_cache_get_no_form(tmp_path: Path) -> None:
    root, entry = in_host_cache(tmp_path)
    assert form_dir(entry, torch.float32, tmp_path / "elsewhere") is None
    assert form_dir(tmp_path / "source", torch.float32, root) is None  # not a digest
    _, report = load_causal_lm(entry, CPU, torch.float32, host_root=tmp_path / "elsewhere")
    assert report.method == "fast" and not (root / ".forms").exists()


def test_a_broken_form_falls_back_to_the_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, entry = in_host_cache(tmp_path)
    load_causal_lm(entry, CPU, torch.float32, host_root=root)
    form = form_dir(entry, torch.float32, root)
    assert form is not None
    weights = form / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with caplog.at_level(logging.WARNING):
        model, report = load_causal_lm(entry, CPU, torch.float32, host_root=root)
    assert report.method == "fast"
    assert "device form" in caplog.text
    reference = AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32).eval()
    with torch.inference_mode():
        assert torch.equal(model(IDS).logits, reference(IDS).logits)


def test_the_cache_removes_a_form_with_its_entry(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w" * 100)
    from pervade.runtime.artifacts import artifact

    spec = artifact("model", weights)
    cache = ArtifactCache(tmp_path / "host", margin=0, tier=Tier.HOST)
    staged = cache.stage(spec)
    cache.unpin(spec.digest)
    derived = cache.root / ".forms" / f"{spec.digest}-float32"
    derived.mkdir(parents=True)
    (derived / "model.safetensors").write_bytes(b"x")
    assert staged.path.exists()
    assert cache._evict(spec.digest)
    assert not derived.exists() and not staged.path.exists()
