"""Read one tensor of a checkpoint file as float32, touching nothing else in the file.

safetensors files are read with plain positioned reads rather than through an mmap: a mapped
tensor's pages stay resident (and count in the process's RSS) for as long as the mapping lives, so
mmap + `.float()` holds the source bytes *and* the float32 copy at peak. Reading the bytes in
bounded chunks straight into the preallocated float32 result keeps the peak at the result plus
one chunk.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import SourceError

logger = logging.getLogger(__name__)

# Float dtypes an input-embedding table can be stored in; integer dtypes mean a quantised layout.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_CHUNK_BYTES = 32 << 20
# The JSON header of a real checkpoint is a few MB at most; anything larger is a corrupt length.
_MAX_HEADER_BYTES = 100 << 20


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], int]:
    """Parse a safetensors file's JSON header.

    Args:
        path: the `.safetensors` file.

    Returns:
        The per-tensor entries (`dtype`, `shape`, `data_offsets`) and the byte offset where the data starts.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        header_len = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if header_len < 2 or header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise SourceError(
                f"{path} is not a valid safetensors file (bad header length); re-download or re-save it."
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SourceError(
                f"{path} is not a valid safetensors file ({e}); re-download or re-save it."
            ) from None
    if not isinstance(header, dict):
        raise SourceError(f"{path} is not a valid safetensors file (header is not a mapping).")
    header.pop("__metadata__", None)
    return header, 8 + header_len


def read_safetensors_tensor(path: str | os.PathLike, key: str) -> tuple[torch.Tensor, str]:
    """Read the tensor `key` of a safetensors file as a new float32 tensor.

    Args:
        path: the `.safetensors` file.
        key: the tensor's name in that file.

    Returns:
        The float32 tensor (owning its memory) and the dtype name it was stored in.
    """
    header, data_start = read_safetensors_header(path)
    if key not in header:
        raise SourceError(
            f"{path} has no tensor {key!r}; its index file may be stale. Re-download the checkpoint."
        )
    info = header[key]
    if not _valid_entry(info):
        raise SourceError(
            f"{path}: the header entry of tensor {key!r} is malformed ({str(info)[:200]}); the file is corrupt. "
            "Re-download or re-save it."
        )
    dtype = SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise SourceError(
            f"Tensor {key!r} in {path} has dtype {info['dtype']}, not a float type (a quantised checkpoint?). "
            "Point at an unquantised checkpoint of the model."
        )
    shape = tuple(info["shape"])
    begin, end = info["data_offsets"]
    numel = 1
    for s in shape:
        numel *= s
    if end - begin != numel * dtype.itemsize or data_start + end > os.path.getsize(path):
        raise SourceError(
            f"{path}: the bytes of tensor {key!r} do not match its shape; the file is truncated or corrupt."
        )
    out = torch.empty(shape, dtype=torch.float32)
    with open(path, "rb", buffering=0) as f:
        f.seek(data_start + begin)
        read_into_float32(f, out.view(-1), dtype, path)
    return out, info["dtype"]


def _valid_entry(info: Any) -> bool:
    """A tensor entry as the format defines it: dtype name, non-negative dims, 0 <= begin <= end."""
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        return False
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return False
    return (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    )


def read_into_float32(f: BinaryIO, out: torch.Tensor, dtype: torch.dtype, path: str | os.PathLike) -> None:
    """Fill the flat float32 tensor `out` from `out.numel()` values of `dtype` at `f`'s position."""
    n = out.numel()
    if n == 0:
        return
    if dtype == torch.float32:
        # No conversion needed: read the bytes straight into the result.
        readinto_exact(f, memoryview(out.numpy()).cast("B"), path)
        return
    per_chunk = max(1, _CHUNK_BYTES // dtype.itemsize)
    buf = bytearray(min(per_chunk, n) * dtype.itemsize)
    staged = torch.frombuffer(buf, dtype=dtype)
    view = memoryview(buf)
    for start in range(0, n, per_chunk):
        count = min(per_chunk, n - start)
        readinto_exact(f, view[: count * dtype.itemsize], path)
        out[start : start + count].copy_(staged[:count])


def readinto_exact(f: BinaryIO, target: memoryview, path: str | os.PathLike) -> None:
    filled = 0
    while filled < len(target):
        got = f.readinto(target[filled:])
        if not got:
            raise SourceError(
                f"{path} ended early while reading a tensor; the file is truncated. Re-download it."
            )
        filled += got


def load_pickle_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a `.bin`/`.pt` state dict lazily: `weights_only=True` (no arbitrary code), memory-mapped.

    Args:
        path: a file written by `torch.save`.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        # Files in the pre-1.6 (non-zip) format cannot be memory-mapped; they are small enough to read whole.
        if "mmap" not in str(e):
            raise SourceError(
                f"Could not read {path} with torch.load ({e}); the file may be corrupt."
            ) from None
        logger.info("%s is in torch's legacy format; loading it without mmap.", path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SourceError(
            f"{path} holds more than tensors, and only weights_only=True loading is allowed ({e}). "
            "Convert it to safetensors with a tool you trust."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SourceError(f"{path} does not hold a state dict (found {type(state).__name__}).")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def to_float32_copy(t: torch.Tensor) -> torch.Tensor:
    """A float32 copy that owns its memory (`.float()` would alias a float32 mmap-backed tensor)."""
    if not t.is_floating_point():
        raise SourceError(
            f"The embedding tensor has dtype {t.dtype}, not a float type (a quantised checkpoint?)."
        )
    out = torch.empty(t.shape, dtype=torch.float32)
    out.copy_(t)
    return out
