"""Read and write safetensors checkpoints tensor by tensor, never holding the model.

A checkpoint of a 70B model is 140 GB; the tensors a build or a bake changes (the vocabulary tables) are a
few GB. `stored_tensors` lists a checkpoint from its headers alone, `load_stored` reads the one tensor a
caller changes (`load_stored_rows` a block of its rows), and `write_checkpoint` writes the output as `save_pretrained` lays it out, copying every
unchanged tensor's bytes from the input file in bounded chunks. Files are read with plain positioned reads,
not through an mmap: mapped pages count in the process's RSS for as long as the mapping lives.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from .sources._tensor_io import SAFETENSORS_DTYPES, _valid_entry, read_safetensors_header, readinto_exact

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# `PreTrainedModel.save_pretrained`'s default in transformers 5: in practice one file per model.
DEFAULT_MAX_SHARD_SIZE = "50GB"
# safetensors dtype names <-> torch dtypes. A stored dtype missing here is still copied (its bytes are
# opaque to the writer); only `load_stored` and new tensors need the torch dtype.
DTYPES: dict[str, torch.dtype] = {
    **SAFETENSORS_DTYPES,  # the float ones, which the sources' reader knows
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_CHUNK_BYTES = 16 << 20
_SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_FIX = "Re-save or re-download the checkpoint."


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes lie in a safetensors file.

    Attributes:
        file: the `.safetensors` file.
        key: the tensor's key in that file.
        dtype: its safetensors dtype name (`"BF16"`, `"F32"`, ...).
        shape: its shape.
        start: absolute byte offset of its data in the file.
        end: absolute byte offset just past its data.
    """

    file: Path
    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(file: str | os.PathLike) -> dict[str, StoredTensor]:
    """Every tensor of one safetensors file, from its header, checked against the file's size.

    The header is parsed and each entry checked by the readers the sources use (`sources/_tensor_io.py`).

    Raises:
        ValueError: the header is unreadable, malformed, or describes bytes the file does not hold (one line
            naming the file).
    """
    file = Path(file)
    size = file.stat().st_size
    header, data_start = read_safetensors_header(file)  # a SourceError (a ValueError) naming the file
    tensors = {}
    for key, entry in header.items():
        tensor = _stored_tensor(file, key, entry, data_start)
        if tensor.end > size:
            raise ValueError(
                f"{str(file)!r} is truncated: tensor {key!r} ends at byte {tensor.end}, the file has {size}. {_FIX}"
            )
        tensors[key] = tensor
    return tensors


def _stored_tensor(file: Path, key: str, entry: dict, data_start: int) -> StoredTensor:
    if not _valid_entry(entry):
        raise ValueError(f"{str(file)!r}: the header entry of tensor {key!r} is malformed. {_FIX}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    dtype = DTYPES.get(entry["dtype"])
    numel = 1
    for dim in shape:
        numel *= dim
    if dtype is not None and offsets[1] - offsets[0] != numel * dtype.itemsize:
        raise ValueError(
            f"{str(file)!r}: tensor {key!r} has {offsets[1] - offsets[0]} bytes for shape {shape} "
            f"{entry['dtype']}; the file is corrupt. {_FIX}"
        )
    return StoredTensor(
        file, key, entry["dtype"], tuple(shape), data_start + offsets[0], data_start + offsets[1]
    )


def stored_tensors(folder: str | os.PathLike) -> dict[str, StoredTensor]:
    """Every tensor of a checkpoint folder (model.safetensors, or model.safetensors.index.json and its shards),
    read from the headers only. Errors name the file (missing shard, bad header) in one line.

    Raises:
        FileNotFoundError: the folder has no safetensors weights, or its index names a missing shard.
        ValueError: a damaged index or header, a truncated file, or a tensor the index misplaces.
    """
    folder = Path(folder)
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if not index.is_file():
        single = folder / SAFE_WEIGHTS_NAME
        if not single.is_file():
            raise FileNotFoundError(
                f"{str(folder)!r} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}; expected a checkpoint "
                "folder saved with `save_pretrained(..., safe_serialization=True)`."
            )
        return read_header(single)
    weight_map = _read_weight_map(index)
    tensors: dict[str, StoredTensor] = {}
    for shard in sorted(set(weight_map.values())):
        file = folder / shard
        if not file.is_file():
            raise FileNotFoundError(
                f"{str(file)!r} is missing: {SAFE_WEIGHTS_INDEX_NAME} puts tensors in it. Copy every shard. {_FIX}"
            )
        for key, tensor in read_header(file).items():
            if key in tensors:
                raise ValueError(
                    f"{str(file)!r} holds tensor {key!r}, which {tensors[key].file.name} holds too. {_FIX}"
                )
            tensors[key] = tensor
    for key, shard in weight_map.items():
        if key not in tensors or tensors[key].file.name != shard:
            raise ValueError(
                f"{str(folder / shard)!r} has no tensor {key!r}, which {str(index)!r} puts there. {_FIX}"
            )
    return tensors


def _read_weight_map(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(index)!r} is not valid JSON ({error}). {_FIX}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(shard, str) and Path(shard).name == shard and shard not in ("", ".", "..")
        for shard in weight_map.values()
    ):
        raise ValueError(f"{str(index)!r} has no `weight_map` from tensor names to shard files. {_FIX}")
    return weight_map


def load_stored(tensor: StoredTensor) -> torch.Tensor:
    """One tensor in its stored dtype, owning its memory (not an mmap of the file).

    Raises:
        ValueError: the dtype has no torch equivalent, or the file ends early.
    """
    return _read(tensor, tensor.start, tensor.nbytes, tensor.shape)


def load_stored_rows(tensor: StoredTensor, start: int, stop: int) -> torch.Tensor:
    """Rows `start:stop` (along the first dimension) of a stored tensor, reading those rows' bytes alone.

    Raises:
        ValueError: the tensor is 0-d, the rows are out of range, the dtype has no torch equivalent, or the
            file ends early.
    """
    if not tensor.shape or not 0 <= start <= stop <= tensor.shape[0]:
        raise ValueError(
            f"Rows {start}:{stop} are not rows of tensor {tensor.key!r} of shape {tensor.shape}."
        )
    row_bytes = tensor.nbytes // tensor.shape[0] if tensor.shape[0] else 0
    shape = (stop - start, *tensor.shape[1:])
    return _read(tensor, tensor.start + start * row_bytes, (stop - start) * row_bytes, shape)


def _read(tensor: StoredTensor, offset: int, nbytes: int, shape: tuple[int, ...]) -> torch.Tensor:
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ValueError(
            f"{str(tensor.file)!r}: tensor {tensor.key!r} has dtype {tensor.dtype}, which torch cannot hold "
            f"(supported: {', '.join(DTYPES)})."
        )
    out = torch.empty(nbytes, dtype=torch.uint8)
    with tensor.file.open("rb", buffering=0) as handle:
        handle.seek(offset)
        readinto_exact(handle, memoryview(out.numpy()), tensor.file)  # a SourceError (a ValueError) if short
    return out.view(dtype).reshape(shape)


# --- writing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One output tensor: where its bytes come from (a file range) and what the header says of it."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def write_checkpoint(
    out_dir: str | os.PathLike,
    copies: Mapping[str, StoredTensor],
    tensors: Mapping[str, torch.Tensor | Callable[[], torch.Tensor]],
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Write `model.safetensors`, or `model-0000i-of-0000N.safetensors` shards plus `model.safetensors.index.json`
    ({"metadata": {"total_size": ...}, "weight_map": {...}}) exactly as `PreTrainedModel.save_pretrained` names them.
    Copied tensors are byte copies in bounded chunks (plain file reads, no mmap, no torch deserialisation): memory
    stays O(chunk + the largest new tensor), whatever the checkpoint's size.

    Keys are written in sorted order and split into shards as `save_pretrained` splits them (a shard closes
    when the next tensor would take it past `max_shard_size`; a larger tensor gets a shard of its own).
    Within a file, tensors are ordered by element size then key, as `safetensors` orders them, so each
    tensor's data is aligned to its element size. Stale weight files of another layout in `out_dir` are
    removed, as `save_pretrained` does. New tensors pass through a hidden spill file in `out_dir`
    (removed on return), so the disk needs their size twice for a moment.

    Args:
        out_dir: the folder to write (created if missing). It must not hold any copied tensor's file.
        copies: output key -> a stored tensor whose bytes are copied unchanged.
        tensors: output key -> a new tensor, or a callable returning it; a callable is called once, its
            result written and dropped before the next one is called.
        max_shard_size: the largest shard, in bytes or as `"5GB"`, `"500MB"`.
        metadata: the files' safetensors metadata; `{"format": "pt"}` is always included.

    Returns:
        The weights files written (shards, then the index if any).

    Raises:
        ValueError: a key given twice, a copied file inside `out_dir`, or a new tensor of a dtype safetensors
            cannot store.
    """
    out_dir = Path(out_dir)
    both = sorted(set(copies) & set(tensors))
    if both:
        raise ValueError(
            f"write_checkpoint() got {both[:5]} both as copies and as new tensors; give each key once."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    inside = sorted({str(t.file) for t in copies.values() if t.file.resolve().parent == out_dir.resolve()})
    if inside:
        raise ValueError(
            f"write_checkpoint() would overwrite the files it copies from ({inside[0]} is in {str(out_dir)!r}); "
            "write to another folder."
        )
    limit = _parse_size(max_shard_size)
    file_metadata = {"format": "pt", **(metadata or {})}
    with _spill_file(out_dir) as spill:
        # Pass 1: a callable's shape and dtype are only known once it is called, and the shard layout and
        # every header need them. Each new tensor is therefore made once, its bytes appended to a spill file
        # beside the output and the tensor dropped; pass 2 then lays out the shards knowing every size and
        # copies new tensors from the spill file exactly as it copies stored ones. Only the new tensors (the
        # vocabulary tables) are written twice; the body is copied once.
        entries = [_Entry(key, t.dtype, t.shape, t.file, t.start, t.end) for key, t in copies.items()]
        for key in sorted(tensors):
            entries.append(_spill(key, tensors[key], spill))
        spill.flush()
        return _write_shards(out_dir, sorted(entries, key=lambda entry: entry.key), limit, file_metadata)


@contextmanager
def _spill_file(out_dir: Path) -> Iterator[BinaryIO]:
    path = out_dir / f".new-tensors-{os.getpid()}.tmp"
    try:
        with path.open("w+b") as handle:
            yield handle
    finally:
        path.unlink(missing_ok=True)


def _spill(key: str, value: torch.Tensor | Callable[[], torch.Tensor], spill: BinaryIO) -> _Entry:
    tensor = value() if callable(value) and not isinstance(value, torch.Tensor) else value
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(
            f"write_checkpoint(): tensor {key!r} is a {type(tensor).__name__}, not a torch.Tensor."
        )
    name = _DTYPE_NAMES.get(tensor.dtype)
    if name is None:
        raise ValueError(
            f"write_checkpoint(): tensor {key!r} has dtype {tensor.dtype}, which safetensors cannot store; "
            f"convert it to one of {', '.join(str(d) for d in DTYPES.values())}."
        )
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    start = spill.seek(0, os.SEEK_END)
    spill.write(memoryview(data.numpy()))
    return _Entry(key, name, tuple(tensor.shape), Path(spill.name), start, start + data.numel())


def _write_shards(out_dir: Path, entries: list[_Entry], limit: int, metadata: dict[str, str]) -> list[Path]:
    shards = _split(entries, limit)
    names = (
        [SAFE_WEIGHTS_NAME]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    written = []
    for name, shard in zip(names, shards, strict=True):
        partial = out_dir / f"{name}.partial"
        try:
            _write_file(partial, shard, metadata)
            os.replace(partial, out_dir / name)
        finally:
            partial.unlink(missing_ok=True)
        written.append(out_dir / name)
    index = out_dir / SAFE_WEIGHTS_INDEX_NAME
    if len(shards) > 1:
        content = {
            "metadata": {"total_size": sum(entry.nbytes for entry in entries)},
            "weight_map": {
                entry.key: name for name, shard in zip(names, shards, strict=True) for entry in shard
            },
        }
        index.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(index)
    stale = [
        path
        for path in out_dir.iterdir()
        if path not in written
        and (path.name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME) or _SHARD_PATTERN.fullmatch(path.name))
    ]
    for path in stale:
        path.unlink()
    return written


def _split(entries: list[_Entry], limit: int) -> list[list[_Entry]]:
    """`huggingface_hub.split_state_dict_into_shards_factory`'s greedy split, over sizes alone."""
    shards: list[list[_Entry]] = []
    current: list[_Entry] = []
    size = 0
    for entry in entries:
        if entry.nbytes > limit:
            shards.append([entry])
            continue
        if current and size + entry.nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def _write_file(path: Path, entries: list[_Entry], metadata: dict[str, str]) -> None:
    # safetensors' own order: larger elements first, so that every tensor starts aligned to its element size.
    entries = sorted(entries, key=lambda entry: (-_itemsize(entry.dtype), entry.key))
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for entry in entries:
        header[entry.key] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format allows trailing spaces; they align the data to 8 bytes
    buffer = bytearray(_CHUNK_BYTES)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        sources: dict[Path, BinaryIO] = {}
        try:
            for entry in entries:
                if entry.file not in sources:
                    sources[entry.file] = entry.file.open("rb", buffering=0)
                _copy_range(sources[entry.file], entry, out, buffer)
        finally:
            for handle in sources.values():
                handle.close()


def _copy_range(source: BinaryIO, entry: _Entry, out: BinaryIO, buffer: bytearray) -> None:
    view = memoryview(buffer)
    source.seek(entry.start)
    remaining = entry.nbytes
    while remaining:
        got = source.readinto(view[: min(remaining, len(buffer))])
        if not got:
            raise ValueError(
                f"{str(entry.file)!r} ended early while copying tensor {entry.key!r}; the file is truncated. {_FIX}"
            )
        out.write(view[:got])
        remaining -= got


def _itemsize(dtype: str) -> int:
    torch_dtype = DTYPES.get(dtype)
    return torch_dtype.itemsize if torch_dtype is not None else 1


def _parse_size(size: int | str) -> int:
    """`"5GB"` -> 5 * 10**9: `huggingface_hub`'s parsing of `max_shard_size` (decimal KB, MB, GB, TB)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT])B\s*", size.upper())
    if not match:
        raise ValueError(
            f"max_shard_size {size!r} is not a size; give bytes as an int, or e.g. '5GB', '500MB'."
        )
    return int(float(match[1]) * 1000 ** " KMGT".index(match[2]))


__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "StoredTensor",
    "load_stored",
    "load_stored_rows",
    "stored_tensors",
    "write_checkpoint",
]
