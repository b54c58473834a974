"""Build a Hugging Face causal LM from a local folder with the fewest copies of its weights.

The model's skeleton is built with its parameters on the meta device (no memory, no random
initialisation); its buffers are built for real by the modules' own constructors, so values
that no file holds (the rotary `inv_freq`) are what `from_pretrained` gives too. Each
safetensors file's data region is then read, once, into one byte buffer on the target device,
and the tensors are views of it: ``load_state_dict(..., assign=True)`` takes them as they are,
tied weights are tied again, and a dtype conversion, where the file's dtype is not the one
asked for, happens once, on the device.

Reading uses several threads of `os.preadv`: the kernel's copy out of tmpfs or the page cache
runs outside the GIL, on several cores at once. To a GPU the bytes go through two pinned
bounce buffers: while one is copied to the device on a stream of its own, the readers fill
the other. (Pageable memory reaches a GPU only through the driver's own small staging buffers,
one synchronous copy at a time.)

Whatever the fast path does not handle (no safetensors, quantised or remote-code models,
modules kept in fp32, checkpoint names that need mapping) goes to `from_pretrained`, and the
reason is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from pervade.engines.host_form import form_dir, has_form, write_form
from pervade.engines.safetensors_files import (
    FallbackNeeded,
    TensorEntry,
    converts,
    data_size,
    map_file,
    read_converting,
    read_header,
    tensor_view,
)

try:
    from transformers.initialization import no_init_weights
except ImportError:  # transformers 4
    from transformers.modeling_utils import no_init_weights  # type: ignore[attr-defined,no-redef]

logger = logging.getLogger(__name__)

MiB = 1 << 20
BOUNCE_BYTES = 256 * MiB  # each of the two pinned buffers
# Reader threads at most: on a 16-core H200 host, 16 moved 8B weights from tmpfs to the GPU
# at 27 GB/s against 24 with 8 (BENCHMARKS.md).
READERS = 16
_PIECE = 16 * MiB  # the least one reader thread is given: smaller reads cost more than they gain


@dataclass(frozen=True, slots=True)
class LoadReport:
    method: str  # "fast" or "from_pretrained"
    seconds: float  # folder to a model on its device, in eval mode
    bytes: int  # weight bytes the fast path read (0 under from_pretrained)
    reason: str | None = None  # why from_pretrained was used


def load_causal_lm(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    readers: int | None = None,
    host_root: Path | None = None,
) -> tuple[Any, LoadReport]:
    """The model of `folder` on `device` in `dtype`, in eval mode, and how it was loaded.

    On the CPU, a `folder` in the HOST cache (at `host_root`, by default the configured
    one) is mapped rather than read, and its device form is used, or written after the
    first build that had to convert (see `host_form`)."""
    started = time.perf_counter()
    form = form_dir(folder, dtype, host_root) if device.type == "cpu" else None
    if form is not None and has_form(form):
        try:
            model, moved = fast_build(form, device, dtype, readers=readers, mapped=True)
            return model, LoadReport("host form", time.perf_counter() - started, moved)
        except Exception as exc:  # a form is a shortcut: the entry itself still builds
            logger.warning(
                "pervade: the device form %s failed (%s); building from %s", form, exc, folder
            )
    try:
        model, moved = fast_build(folder, device, dtype, readers=readers, mapped=form is not None)
        if form is not None and _dtypes_differ(folder, dtype):
            write_form(model, folder, form)
        return model, LoadReport("fast", time.perf_counter() - started, moved)
    except FallbackNeeded as why:
        reason = str(why)
    # Out of the handler: its traceback, and with it whatever the fast path had already put
    # on the device, is gone before from_pretrained needs the room.
    logger.warning("pervade: loading %s with from_pretrained: %s", folder, reason)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, device_map=str(device) if device.type != "cpu" else None
    )
    model.eval()
    return model, LoadReport("from_pretrained", time.perf_counter() - started, 0, reason)


def fast_build(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    readers: int | None = None,
    bounce: bool | None = None,
    bounce_bytes: int = BOUNCE_BYTES,
    mapped: bool = False,
) -> tuple[Any, int]:
    """The model and the weight bytes read; `FallbackNeeded` where the fast path cannot.

    `bounce` (default: on any device but the CPU) sends the bytes through two bounce
    buffers; on the CPU that is only for testing the bounce logic without a GPU.
    `mapped` (CPU only): tensors already in `dtype` are copy-on-write views of the file,
    not copies; for files in memory (tmpfs) that nothing rewrites in place.
    """
    files = weight_files(folder)
    model = skeleton(folder, dtype)
    threads = readers or min(READERS, os.cpu_count() or 1)
    use_bounce = device.type != "cpu" if bounce is None else bounce
    headers = [(file, *read_header(file)) for file in files]
    check_names(model, [e for _, _, entries in headers for e in entries])
    tensors: dict[str, torch.Tensor] = {}
    moved = 0
    with ThreadPoolExecutor(threads, thread_name_prefix="pervade-read") as pool:
        reader = Readers(pool, threads)
        buffers = Bounce(device, bounce_bytes) if use_bounce else None
        for file, offset, entries in headers:
            if buffers is None and device.type == "cpu" and converts(entries, dtype):
                found, size = read_converting(file, offset, entries, dtype)
            elif buffers is None and device.type == "cpu" and mapped:
                found, size = map_file(file, offset, entries)
            else:
                found, size = read_file(file, offset, entries, device, reader, buffers)
            tensors.update(found)
            moved += size
    assemble(model, tensors, device, dtype)
    # As from_pretrained does: the folder's generation settings (eos ids, sampling
    # defaults), where it has them, override those derived from the model's config.
    with contextlib.suppress(OSError):
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.eval()
    return model, moved


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder, one or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no weight_map")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are not there: {missing}")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FallbackNeeded("no model.safetensors or model.safetensors.index.json in the folder")


def skeleton(folder: Path, dtype: torch.dtype) -> Any:
    """The model with parameters on the meta device and real, initialised buffers."""
    config = AutoConfig.from_pretrained(folder)
    if getattr(config, "quantization_config", None):
        raise FallbackNeeded("the model is quantised")
    if getattr(config, "auto_map", None):
        raise FallbackNeeded("the model comes with its own code (auto_map)")
    # include_buffers=False: buffers such as rotary inv_freq are computed by the module
    # constructors as usual (they are in no file); only parameters go to the meta device.
    # no_init_weights: the random initialisation of meta parameters does nothing but
    # still costs a dispatch per call (0.3 s for a 135M model).
    try:
        with init_empty_weights(include_buffers=False), no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except ValueError as exc:  # an architecture AutoModelForCausalLM does not know
        raise FallbackNeeded(f"no causal LM class for this config: {exc}") from None
    if dtype != torch.float32 and (
        getattr(model, "_keep_in_fp32_modules", None)
        or getattr(model, "_keep_in_fp32_modules_strict", None)
    ):
        raise FallbackNeeded("the model keeps some modules in float32")
    return model


class Readers:
    """Fills a buffer from a file with parallel preads: the kernel copies outside the GIL."""

    def __init__(self, pool: ThreadPoolExecutor, threads: int) -> None:
        self.pool = pool
        self.threads = threads

    def fill(self, fd: int, into: memoryview, offset: int) -> None:
        size = len(into)
        step = max(_PIECE, -(-size // self.threads))
        step = -(-step // MiB) * MiB  # whole MiB: page-aligned reads
        if size <= step:
            _pread_all(fd, into, offset)
            return
        parts = [
            self.pool.submit(_pread_all, fd, into[start : start + step], offset + start)
            for start in range(0, size, step)
        ]
        for part in parts:
            part.result()


def _pread_all(fd: int, into: memoryview, offset: int) -> None:
    done = 0
    while done < len(into):  # a read may be short (Linux moves at most ~2 GiB per call)
        got = os.preadv(fd, [into[done:]], offset + done)
        if got == 0:
            raise EOFError(f"file ended {len(into) - done} bytes before the tensors it lists")
        done += got


class Bounce:
    """Two host buffers that bytes pass through on their way to a device: while one is copied
    to the device asynchronously on a stream of its own, the readers fill the other.

    On CUDA the buffers are pinned (torch caches pinned blocks, so the next load reuses
    them); on the CPU they are plain and the copies synchronous, which tests the same logic.
    """

    def __init__(self, device: torch.device, size: int = BOUNCE_BYTES) -> None:
        if size < 1:
            raise ValueError(f"bounce buffers need a positive size, got {size}")
        cuda = device.type == "cuda"
        self.buffers = [torch.empty(size, dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
        self.views = [b.numpy().data for b in self.buffers]
        self.stream = torch.cuda.Stream(device) if cuda else None

    def copy(self, fd: int, offset: int, dest: torch.Tensor, readers: Readers) -> None:
        """Copy ``dest.numel()`` bytes of the file at `offset` into the uint8 tensor `dest`."""
        size = self.buffers[0].numel()
        total = dest.numel()
        stream = self.stream
        done: list[Any] = [None, None]  # per buffer: the event of its last copy out
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(dest.device))
        for i, start in enumerate(range(0, total, size)):
            slot = i % 2
            count = min(size, total - start)
            if done[slot] is not None:
                done[slot].synchronize()  # its previous chunk has left for the device
            readers.fill(fd, self.views[slot][:count], offset + start)
            source = self.buffers[slot][:count]
            if stream is None:
                dest[start : start + count].copy_(source)
                continue
            with torch.cuda.stream(stream):
                dest[start : start + count].copy_(source, non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
            done[slot] = event
        if stream is not None:
            # Everything has landed before anyone uses `dest` (or frees it) on another stream.
            stream.synchronize()


def read_file(
    path: Path,
    offset: int,
    entries: list[TensorEntry],
    device: torch.device,
    readers: Readers,
    bounce: Bounce | None,
) -> tuple[dict[str, torch.Tensor], int]:
    """The tensors of one safetensors file on `device` (views of one buffer), and its bytes."""
    size = data_size(path, offset, entries)
    data = torch.empty(size, dtype=torch.uint8, device=device)
    fd = os.open(path, os.O_RDONLY)
    try:
        if bounce is not None:
            bounce.copy(fd, offset, data, readers)
        elif device.type == "cpu":
            readers.fill(fd, data.numpy().data, offset)
        else:
            raise ValueError(f"reading to {device} needs bounce buffers")
    finally:
        os.close(fd)
    return {e.name: tensor_view(data, e) for e in entries}, size


def _dtypes_differ(folder: Path, dtype: torch.dtype) -> bool:
    """Whether building `folder` in `dtype` converted floats (a device form then pays)."""
    return any(converts(read_header(f)[1], dtype) for f in weight_files(folder))


def assemble(
    model: Any, tensors: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> None:
    """Put the file tensors into the skeleton, tie the tied weights, move the buffers."""
    expected = model.state_dict()
    state = {k: _converted(v, expected[k].dtype) for k, v in tensors.items() if k in expected}
    model.load_state_dict(state, strict=False, assign=True)
    # The skeleton's tied head still points at the meta embedding it was built with.
    model.tie_weights()
    empty = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if empty:
        raise FallbackNeeded(f"weights missing from the files: {empty[:5]}")
    model.to(device)  # the buffers, built on the CPU; parameters are already there


def check_names(model: Any, entries: list[TensorEntry]) -> None:
    """`FallbackNeeded` unless every file tensor has a place of its shape in the model: names
    that need mapping (older layouts, fused experts) are from_pretrained's business. Checked
    from the headers, before any byte is read."""
    expected = model.state_dict()  # meta tensors: names and shapes only
    # Non-persistent buffers some old checkpoints still hold (rotary inv_freq): the model's
    # own values are the ones used, as in from_pretrained.
    unknown = sorted(e.name for e in entries if e.name not in expected)
    unknown = [name for name in unknown if not _is_buffer(model, name)]
    if unknown:
        raise FallbackNeeded(f"checkpoint names the model does not have: {unknown[:5]}")
    wrong = [e.name for e in entries if e.name in expected and e.shape != expected[e.name].shape]
    if wrong:
        raise FallbackNeeded(f"tensors of another shape than the model's: {wrong[:5]}")


def _converted(tensor: torch.Tensor, want: torch.dtype) -> torch.Tensor:
    """The dtype the model's parameter has (the requested one for floats), converted once."""
    if tensor.dtype == want or not (tensor.is_floating_point() and want.is_floating_point):
        return tensor
    return tensor.to(want)


def _is_buffer(model: Any, name: str) -> bool:
    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return False
    return attr in getattr(module, "_buffers", {})
