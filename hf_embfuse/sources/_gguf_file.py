"""A minimal GGUF reader: the header, and one tensor dequantised to float32.

`gguf.GGUFReader` builds Python objects for every metadata item, which is most of its time on a
large vocabulary (11 s for Gemma's 262,144 tokens). Here long arrays are skipped, not
materialised, so the header of any model parses in well under a second. The format is at
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._tensor_io import read_into_float32, readinto_exact
from .errors import SourceError

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (token lists, scores, merges) are summarised by their length only.
_KEEP_ARRAY_ITEMS = 64

# ggml type id -> (name, values per block, bytes per block) for the types read without `gguf`.
F32, F16, Q8_0, BF16 = 0, 1, 8, 30
_FAST_TYPES = {F32: ("F32", 1, 4), F16: ("F16", 1, 2), Q8_0: ("Q8_0", 32, 34), BF16: ("BF16", 1, 2)}
_CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too long to keep: its length and item type."""

    count: int
    item_type: int


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file. `shape` is in numpy (row-major) order, i.e. GGUF's dims reversed."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass
class GGUFHeader:
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]

    def array_length(self, key: str) -> int | None:
        value = self.metadata.get(key)
        if isinstance(value, ArrayInfo):
            return value.count
        return len(value) if isinstance(value, list) else None


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except (struct.error, OverflowError):  # past the end (by far, for lengths a corrupt file states)
            raise self.truncated() from None
        self.pos += struct.calcsize(fmt)
        return value

    def truncated(self) -> SourceError:
        return SourceError(f"{self.path} ends inside its GGUF header; the file is truncated.")

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise self.truncated()
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, pos, unpack = self.buf, self.pos, struct.unpack_from
        try:
            for _ in range(count):
                pos += 8 + unpack("<Q", buf, pos)[0]
        except (struct.error, OverflowError):
            raise self.truncated() from None
        self.pos = pos

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            if count <= _KEEP_ARRAY_ITEMS:
                return [self.value(item_type) for _ in range(count)]
            if item_type in _SCALARS:
                self.pos += count * struct.calcsize(_SCALARS[item_type])
                if self.pos > len(self.buf):
                    raise self.truncated()
            elif item_type == _STRING:
                self.skip_strings(count)
            elif item_type == _ARRAY:  # arrays of arrays: walk them
                for _ in range(count):
                    self.value(item_type)
            else:
                raise SourceError(
                    f"{self.path}: unknown GGUF array item type {item_type}; the file is corrupt or from a newer format."
                )
            return ArrayInfo(count, item_type)
        raise SourceError(
            f"{self.path}: unknown GGUF value type {vtype}; the file is corrupt or from a newer format."
        )


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """Parse a GGUF file's metadata and tensor table (long arrays are only counted).

    Raises:
        SourceError: not a GGUF file, an unsupported version, or a truncated header.
    """
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise SourceError(f"{path} is not a GGUF file (bad magic bytes).")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, path)
            cur.pos = 4
            version = cur.unpack("<I")
            if version not in (2, 3):
                raise SourceError(
                    f"{path} is GGUF version {version}; only versions 2 and 3 are read. Re-convert it."
                )
            n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
            metadata: dict[str, Any] = {}
            try:
                for _ in range(n_kv):
                    key = cur.string()
                    metadata[key] = cur.value(cur.unpack("<I"))
            except RecursionError:  # arrays of arrays of arrays...: only a corrupt file nests that deep
                raise SourceError(
                    f"{path}: GGUF metadata arrays nested too deeply; the file is corrupt."
                ) from None
            infos = []
            for _ in range(n_tensors):
                name = cur.string()
                dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
                infos.append((name, tuple(reversed(dims)), cur.unpack("<I"), cur.unpack("<Q")))
            alignment = metadata.get("general.alignment", 32)
            if type(alignment) is not int or alignment < 1:
                raise SourceError(
                    f"{path}: general.alignment is {alignment!r}, not a positive integer; the file is corrupt."
                )
            data_start = -(-cur.pos // alignment) * alignment
            size = len(buf)
    tensors = {name: TensorInfo(name, shape, t, data_start + off) for name, shape, t, off in infos}
    for info in tensors.values():
        if info.offset > size:
            raise SourceError(
                f"{path}: tensor {info.name!r} lies past the end of the file; the file is truncated."
            )
    return GGUFHeader(metadata=metadata, tensors=tensors)


def ggml_type_name(ggml_type: int) -> str:
    if ggml_type in _FAST_TYPES:
        return _FAST_TYPES[ggml_type][0]
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(ggml_type).name
    except (ImportError, ValueError):
        return f"type{ggml_type}"


def read_tensor_float32(path: str | os.PathLike, info: TensorInfo) -> torch.Tensor:
    """Read a 2-D tensor of a GGUF file and dequantise it into a new float32 tensor.

    F32/F16/BF16 are converted directly and Q8_0 by a vectorised multiply; other types go
    through `gguf.quants.dequantize`, a bounded number of rows at a time.
    """
    if len(info.shape) != 2:
        raise SourceError(f"{path}: tensor {info.name!r} has shape {info.shape}; a 2-D table is expected.")
    rows, cols = info.shape
    block, block_bytes = _block_layout(info.ggml_type, path)
    if cols % block:
        raise SourceError(
            f"{path}: tensor {info.name!r} has rows of {cols} values, not whole blocks of {block}."
        )
    row_bytes = cols // block * block_bytes
    if info.offset + rows * row_bytes > os.path.getsize(path):
        raise SourceError(
            f"{path}: tensor {info.name!r} runs past the end of the file; the file is truncated."
        )
    out = torch.empty((rows, cols), dtype=torch.float32)
    with open(path, "rb", buffering=0) as f:
        f.seek(info.offset)
        if info.ggml_type in (F32, F16, BF16):
            dtype = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}[info.ggml_type]
            read_into_float32(f, out.view(-1), dtype, path)
            return out
        _dequantize_rows(f, out.numpy(), info.ggml_type, row_bytes, path)
    return out


def _block_layout(ggml_type: int, path: str | os.PathLike) -> tuple[int, int]:
    if ggml_type in _FAST_TYPES:
        return _FAST_TYPES[ggml_type][1:]
    gguf = _import_gguf()
    try:
        return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise SourceError(
            f"{path}: unknown GGML tensor type {ggml_type}; the file is corrupt, or newer than the gguf "
            "package (pip install -U gguf)."
        ) from None


def _dequantize_rows(
    f: Any, out: np.ndarray, ggml_type: int, row_bytes: int, path: str | os.PathLike
) -> None:
    rows = out.shape[0]
    step = max(1, _CHUNK_BYTES // row_bytes)
    buf = np.empty(min(step, rows) * row_bytes, dtype=np.uint8)
    for start in range(0, rows, step):
        n = min(step, rows - start)
        raw = buf[: n * row_bytes]
        readinto_exact(f, memoryview(raw), path)
        target = out[start : start + n]
        if ggml_type == Q8_0:
            # Each block: one fp16 scale, then 32 int8 values; value = int8 * scale, in float32 as ggml does.
            blocks = raw.reshape(-1, 34)
            scales = np.ascontiguousarray(blocks[:, :2]).view(np.float16).astype(np.float32)
            np.multiply(blocks[:, 2:].view(np.int8), scales, out=target.reshape(-1, 32))
        else:
            gguf = _import_gguf()
            target[:] = gguf.quants.dequantize(
                raw.reshape(n, row_bytes), gguf.GGMLQuantizationType(ggml_type)
            )


def _import_gguf() -> Any:
    try:
        import gguf
        import gguf.quants
    except ImportError:
        raise ImportError(
            "Reading this GGUF tensor type needs the gguf package: pip install 'hf-embfuse[gguf]'"
        ) from None
    return gguf
