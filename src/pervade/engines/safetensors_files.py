"""Reading safetensors files for the fast loader: headers, and the CPU's two ways of
reading without a second copy (converting straight out of a mapping, or mapping alone)."""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

MiB = 1 << 20
_MAX_HEADER = 100 * MiB  # safetensors' own limit on the JSON header

_DTYPES: dict[str, torch.dtype] = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)


class FallbackNeeded(Exception):
    """The fast path cannot build this model; the message says why."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets into the file's data region
    end: int


def read_header(path: Path) -> tuple[int, list[TensorEntry]]:
    """The offset of a safetensors file's data region and the tensors in it."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER:
            raise ValueError(f"{path}: not a safetensors file (header of {length} bytes)")
        header = json.loads(f.read(length))
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise FallbackNeeded(f"{path.name}: tensor dtype {info['dtype']} is not handled")
        begin, end = info["data_offsets"]
        entries.append(TensorEntry(name, dtype, tuple(info["shape"]), int(begin), int(end)))
    return 8 + length, entries


def read_converting(
    path: Path, offset: int, entries: list[TensorEntry], dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], int]:
    """The tensors of one file on the CPU, floats converted to `dtype` straight out of the
    page cache through a mapping: one pass over the bytes instead of a copy and a conversion.
    Nothing keeps the mapping: the model must not depend on the file staying put."""
    size = data_size(path, offset, entries)
    with open(path, "rb") as f:
        # ACCESS_COPY: a writable (private) mapping, which torch.frombuffer wants.
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    if mapped is None:
        return {e.name: tensor_view(torch.empty(0, dtype=torch.uint8), e) for e in entries}, 0
    data = torch.frombuffer(mapped, dtype=torch.uint8)[offset : offset + size]
    out = {}
    for entry in entries:
        view = tensor_view(data, entry)
        out[entry.name] = view.to(dtype) if _float(entry.dtype) else view.clone()
    return out, size


def map_file(
    path: Path, offset: int, entries: list[TensorEntry]
) -> tuple[dict[str, torch.Tensor], int]:
    """The tensors of one file as views of a private mapping of it: no byte is copied until
    written (weights never are), and processes mapping the same tmpfs file share its pages.
    The mapping lives as long as the tensors; removing the file does not end it."""
    size = data_size(path, offset, entries)
    if not size:
        return {e.name: tensor_view(torch.empty(0, dtype=torch.uint8), e) for e in entries}, 0
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    data = torch.frombuffer(mapped, dtype=torch.uint8)[offset : offset + size]
    return {e.name: tensor_view(data, e) for e in entries}, size


def converts(entries: list[TensorEntry], dtype: torch.dtype) -> bool:
    return any(_float(e.dtype) and e.dtype != dtype for e in entries)


def _float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def data_size(path: Path, offset: int, entries: list[TensorEntry]) -> int:
    size = max((e.end for e in entries), default=0)
    if offset + size > path.stat().st_size:
        raise ValueError(f"{path}: shorter than the tensors its header lists")
    return size


def tensor_view(data: torch.Tensor, entry: TensorEntry) -> torch.Tensor:
    raw = data[entry.begin : entry.end]
    itemsize = torch.empty((), dtype=entry.dtype).element_size()
    if entry.begin % itemsize:
        raw = raw.clone()  # a typed view needs its offset to be a whole number of elements
    return raw.view(entry.dtype).reshape(entry.shape)


_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write CPU `tensors` as a safetensors file, each straight from its own memory (no
    serialized copy of the whole file in RAM, which a 16 GB model cannot spare)."""
    header: dict[str, object] = {}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data region starts 8-byte aligned
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for tensor in tensors.values():
            if tensor.numel():
                flat = tensor.contiguous().reshape(-1).view(torch.uint8)
                out.write(flat.numpy().data)
