"""Fuzzed and hostile source files: each is a `SourceError` whose message names the file, fast, in bounded memory.

Extends tests/test_sources_*.py (which cover the common malformed inputs: GGUF without magic or
truncated mid-tensor, vector lines of the wrong width, non-UTF-8 words, headers one off in their
count) with deliberately hostile files: lengths and shapes that claim terabytes, entries of the wrong
JSON type, offsets pointing backwards, index files pointing outside the folder, deep nesting. Then
seeded random mutations of small valid files of every format, where the only acceptable outcomes are
a correct table or a `SourceError`.
"""

from __future__ import annotations

import gzip
import json
import random
import resource
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_embfuse.sources import SourceError, read_source
from hf_embfuse.sources._gguf_file import read_gguf_header
from tests.fixtures_sources import (
    random_table,
    save_tiny_checkpoint,
    vector_lines,
    write_tiny_gguf,
    write_word2vec_binary,
)

pytestmark = pytest.mark.timeout(120)

EMBEDDING = "embeddings.word_embeddings.weight"
MAX_GROWTH_MB = 64


# --------------------------------------------------------------------------- file builders


def safetensors_bytes(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _checkpoint_with(tmp: Path, weights: bytes) -> tuple[Path, Path]:
    """A tiny BERT checkpoint whose model.safetensors is replaced by `weights`; (source, offending file)."""
    save_tiny_checkpoint(tmp, "bert")
    (tmp / "model.safetensors").write_bytes(weights)
    return tmp, tmp / "model.safetensors"


def _sharded(tmp: Path, edit: Callable[[Path, dict], str | None]) -> tuple[Path, Path]:
    """A sharded tiny checkpoint; `edit` changes the index data in place, or returns the index's new text."""
    save_tiny_checkpoint(tmp, "bert", max_shard_size="20KB")
    index = tmp / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    text = edit(tmp, data)
    index.write_text(json.dumps(data) if text is None else text)
    return tmp, index


def _without_embedding_shard(tmp: Path) -> tuple[Path, Path]:
    folder, _ = _sharded(tmp, lambda f, d: (f / d["weight_map"][EMBEDDING]).unlink())
    return folder, folder  # the message names the folder and the missing shard


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(
    kv: list[bytes] = (),
    tensors: list[tuple[str, tuple[int, ...], int, int]] = (("token_embd.weight", (32, 4), 0, 0),),
    data: bytes = b"\0" * 512,
    n_tensors: int | None = None,
    version: int = 3,
) -> bytes:
    """A GGUF file from raw parts: `kv` items already encoded, tensor infos `(name, ggml dims, type, offset)`."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kv))
    out += b"".join(kv)
    for name, dims, ggml_type, offset in tensors:
        out += (
            _gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        )
        out += struct.pack("<IQ", ggml_type, offset)
    return out + b"\0" * (-len(out) % 32) + data


def _kv_uint32(key: str, value: int) -> bytes:
    return _gguf_string(key) + struct.pack("<II", 4, value)


def _kv_nested_arrays(depth: int) -> bytes:
    # key, type ARRAY, then `depth` times (item type ARRAY, count 1), innermost an empty uint8 array
    return (
        _gguf_string("nested")
        + struct.pack("<I", 9)
        + struct.pack("<IQ", 9, 1) * depth
        + struct.pack("<IQ", 0, 0)
    )


def _npy_with_header(folder: Path, header: str, body: bytes = b"") -> Path:
    raw = header.encode("latin1")
    raw += b" " * (-(10 + len(raw) + 1) % 64) + b"\n"
    (folder / "e.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + body)
    (folder / "e.vocab").write_text("a\nb\n")
    return folder / "e.npy"


def _write(path: Path, data: bytes) -> tuple[Path, Path]:
    path.write_bytes(data)
    return path, path


# --------------------------------------------------------------------------- the table
# name -> (make(tmp) -> (what to read, the file the message must name), message pattern)

F32_SHAPE = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
HOSTILE: dict[str, tuple[Callable[[Path], tuple[Path, Path]], str]] = {
    # safetensors headers
    "safetensors: empty file": (lambda t: _checkpoint_with(t, b""), "bad header length"),
    "safetensors: header length 2^63": (
        lambda t: _checkpoint_with(t, safetensors_bytes({}, length=2**63)),
        "bad header length",
    ),
    "safetensors: header is not JSON": (
        lambda t: _checkpoint_with(t, struct.pack("<Q", 12) + b"\xff\xfe{{{{garbage"),
        "not a valid safetensors file",
    ),
    "safetensors: header is a list": (
        lambda t: _checkpoint_with(t, safetensors_bytes([1, 2])),
        "header is not a mapping",
    ),
    "safetensors: entry without dtype": (
        lambda t: _checkpoint_with(
            t, safetensors_bytes({EMBEDDING: {"shape": [2, 2], "data_offsets": [0, 16]}})
        ),
        "is malformed",
    ),
    "safetensors: shape is not a list": (
        lambda t: _checkpoint_with(t, safetensors_bytes({EMBEDDING: {**F32_SHAPE, "shape": 4}}, b"\0" * 16)),
        "is malformed",
    ),
    "safetensors: entry is a number": (
        lambda t: _checkpoint_with(t, safetensors_bytes({EMBEDDING: 5})),
        "is malformed",
    ),
    "safetensors: offsets point backwards into the header": (
        lambda t: _checkpoint_with(
            t,
            safetensors_bytes(
                {EMBEDDING: {**F32_SHAPE, "shape": [1, 2], "data_offsets": [-8, 0]}}, b"\0" * 8
            ),
        ),
        "is malformed",
    ),
    "safetensors: 10^12-element table": (
        lambda t: _checkpoint_with(
            t,
            safetensors_bytes(
                {EMBEDDING: {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}},
                b"\0" * 64,
            ),
        ),
        "do not match its shape",
    ),
    "safetensors: tensor data cut short": (
        lambda t: _checkpoint_with(
            t,
            safetensors_bytes(
                {EMBEDDING: {**F32_SHAPE, "shape": [65, 16], "data_offsets": [0, 4160]}}, b"\0" * 4000
            ),
        ),
        "truncated",
    ),
    "safetensors: integer (quantised) table": (
        lambda t: _checkpoint_with(
            t, safetensors_bytes({EMBEDDING: {**F32_SHAPE, "dtype": "I8", "data_offsets": [0, 4]}}, b"\0" * 4)
        ),
        "not a float type",
    ),
    # sharded checkpoints
    "index: the embedding's shard is missing": (
        _without_embedding_shard,
        "which is missing",
    ),
    "index: not JSON": (
        lambda t: _sharded(t, lambda f, d: "{nope"),
        "unreadable",
    ),
    "index: weight_map is a list": (
        lambda t: _sharded(t, lambda f, d: d.update(weight_map=["model.safetensors"])),
        "must map tensor names to file names",
    ),
    "index: shard outside the folder": (
        lambda t: _sharded(t, lambda f, d: d["weight_map"].update({EMBEDDING: "../../etc/passwd"})),
        "must map tensor names to file names",
    ),
    # tokenizer files
    "tokenizer.json: binary garbage": (
        lambda t: (
            save_tiny_checkpoint(t, "gpt2"),
            (t / "tokenizer.json").write_bytes(b"\xff\xfe\0\x01"),
            (t, t),
        )[-1],
        "Could not load the tokenizer",
    ),
    "tokenizer_config.json: not JSON": (
        lambda t: (
            save_tiny_checkpoint(t, "gpt2"),
            (t / "tokenizer_config.json").write_text("{nope"),
            (t, t),
        )[-1],
        "Could not load the tokenizer",
    ),
    # GGUF
    "gguf: wrong magic on a real file": (
        lambda t: (
            write_tiny_gguf(t / "m.gguf"),
            _write(t / "m.gguf", b"GGML" + (t / "m.gguf").read_bytes()[4:]),
        )[-1],
        "bad magic",
    ),
    "gguf: version 99": (lambda t: _write(t / "m.gguf", gguf_bytes(version=99)), "version 99"),
    "gguf: 2^60 tensors claimed": (lambda t: _write(t / "m.gguf", gguf_bytes(n_tensors=2**60)), "truncated"),
    "gguf: string length 2^63": (
        lambda t: _write(t / "m.gguf", gguf_bytes(kv=[struct.pack("<Q", 2**63) + b"key"])),
        "truncated",
    ),
    "gguf: alignment 0": (
        lambda t: _write(t / "m.gguf", gguf_bytes(kv=[_kv_uint32("general.alignment", 0)])),
        "alignment",
    ),
    "gguf: arrays nested 100,000 deep": (
        lambda t: _write(t / "m.gguf", gguf_bytes(kv=[_kv_nested_arrays(100_000)])),
        "nested too deeply",
    ),
    "gguf: unknown value type": (
        lambda t: _write(t / "m.gguf", gguf_bytes(kv=[_gguf_string("k") + struct.pack("<I", 77)])),
        "unknown GGUF value type",
    ),
    "gguf: 10^12-element token_embd": (
        lambda t: _write(t / "m.gguf", gguf_bytes(tensors=[("token_embd.weight", (10**6, 10**6), 0, 0)])),
        "truncated",
    ),
    "gguf: unknown tensor type": (
        lambda t: _write(t / "m.gguf", gguf_bytes(tensors=[("token_embd.weight", (32, 4), 999, 0)])),
        "unknown GGML tensor type",
    ),
    # static vectors
    "vectors: mixed widths inside a gzip": (
        lambda t: _write(t / "v.txt.gz", gzip.compress(b"the 1 2 3\ncat 1 2\n")),
        "line 2: 2 values where 3",
    ),
    "vectors: gzip cut mid-stream": (
        lambda t: _write(
            t / "v.txt.gz",
            gzip.compress(
                ("\n".join(vector_lines([f"w{i}" for i in range(4000)], random_table(4000, 8)))).encode()
            )[:40000],
        ),
        "truncated or corrupt",
    ),
    "vectors: word without values": (
        lambda t: _write(t / "v.txt", b"the\ncat 1 2\n"),
        "a word without values",
    ),
    "vectors: stray carriage return": (lambda t: _write(t / "v.txt", b"the 1 2\ncat 3\r4\n"), "line endings"),
    "vectors: NaN and Inf values": (
        lambda t: _write(t / "v.txt", b"the 1 nan\ncat 3 inf\n"),
        "NaN or infinite",
    ),
    "word2vec binary: header claims 10^12 vectors": (
        lambda t: _write(t / "v.bin", b"1000000000000 4\nthe " + np.ones(4, np.float32).tobytes() + b"\n"),
        "header says 1000000000000 vectors",
    ),
    "word2vec binary: header claims 10^9 dimensions": (
        lambda t: _write(t / "v.bin", b"1 1000000000\nthe " + np.ones(4, np.float32).tobytes() + b"\n"),
        "header says 1 vectors",
    ),
    "word2vec binary: non-UTF-8 word": (
        lambda t: (
            write_word2vec_binary(t / "v.bin", ["ok", "b\xe9"], random_table(2, 3)),
            _write(t / "v.bin", (t / "v.bin").read_bytes().replace("bé".encode(), b"b\xe9\xff")),
        )[-1],
        "entry 2.*not valid UTF-8",
    ),
    "npy: object array (pickle)": (
        lambda t: (
            (_npy_with_header(t, "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", b"\x80\x04N."),)
            * 2
        ),
        "not a plain numeric",
    ),
    "npy: corrupt header": (
        lambda t: (_npy_with_header(t, "{'descr': '<f4', 'fortran_order': (((, "),) * 2,
        "not a plain numeric",
    ),
    "npy: header claims 10^12 rows": (
        lambda t: (
            (
                _npy_with_header(
                    t, "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 4), }", b"\0" * 32
                ),
            )
            * 2
        ),
        "not a plain numeric",
    ),
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_is_a_clear_error(tmp_path, monkeypatch, case):
    monkeypatch.setenv("HF_EMBFUSE_CACHE", str(tmp_path / "cache"))
    make, message = HOSTILE[case]
    folder = tmp_path / "src"
    folder.mkdir()
    source, named = make(folder)
    rss_before = _peak_rss_mb()
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match=message) as caught:
            read_source(str(source))
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert named.name in str(caught.value), f"the message should name {named.name}: {caught.value}"
    assert "Traceback" not in str(caught.value)
    assert traced_peak < MAX_GROWTH_MB << 20, f"allocated {traced_peak >> 20} MB"
    assert _peak_rss_mb() - rss_before < MAX_GROWTH_MB


# --------------------------------------------------------------------------- fuzzing


def _valid_safetensors(folder: Path) -> tuple[bytes, int, Callable[[bytes], Path]]:
    save_tiny_checkpoint(folder / "valid", "bert")
    raw = (folder / "valid" / "model.safetensors").read_bytes()

    def place(data: bytes) -> Path:
        target = folder / f"m{len(list(folder.iterdir()))}"
        shutil.copytree(folder / "valid", target)
        (target / "model.safetensors").write_bytes(data)
        return target

    return raw, 8 + struct.unpack("<Q", raw[:8])[0], place


def _valid_gguf(folder: Path) -> tuple[bytes, int, Callable[[bytes], Path]]:
    write_tiny_gguf(folder / "valid.gguf", "Q8_0")
    header_end = read_gguf_header(folder / "valid.gguf").tensors["token_embd.weight"].offset
    return (folder / "valid.gguf").read_bytes(), header_end, lambda data: _numbered(folder, ".gguf", data)


def _valid_glove(folder: Path) -> tuple[bytes, int, Callable[[bytes], Path]]:
    words = ["the", "cat", "naïve", "日本", "##ing", "x"]
    raw = ("\n".join(vector_lines(words, random_table(len(words), 4))) + "\n").encode()
    return raw, len(raw), lambda data: _numbered(folder, ".txt", data)


def _valid_word2vec_binary(folder: Path) -> tuple[bytes, int, Callable[[bytes], Path]]:
    write_word2vec_binary(folder / "valid.bin", ["the", "cat", "naïve", "日本"], random_table(4, 4))
    raw = (folder / "valid.bin").read_bytes()
    return raw, len(raw), lambda data: _numbered(folder, ".bin", data)


def _valid_npy(folder: Path) -> tuple[bytes, int, Callable[[bytes], Path]]:
    np.save(folder / "valid.npy", random_table(5, 4))

    def place(data: bytes) -> Path:
        target = folder / f"n{len(list(folder.iterdir()))}"
        target.mkdir()
        (target / "e.npy").write_bytes(data)
        (target / "e.vocab").write_text("a\nb\nc\nd\ne\n")
        return target / "e.npy"

    return (folder / "valid.npy").read_bytes(), 128, place


def _numbered(folder: Path, suffix: str, data: bytes) -> Path:
    path = folder / f"m{len(list(folder.iterdir()))}{suffix}"
    path.write_bytes(data)
    return path


def mutate(data: bytes, rng: random.Random, header_end: int) -> bytes:
    """One random corruption, mostly in the header/structure (where parsers can go wrong)."""
    out = bytearray(data)
    end = header_end if rng.random() < 0.7 else len(out)
    kind = rng.choice(["set bytes", "set bytes", "truncate", "insert", "0xff run"])
    if kind == "set bytes":
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(end)] = rng.randrange(256)
    elif kind == "truncate":
        del out[rng.randrange(len(out)) :]
    elif kind == "insert":
        at = rng.randrange(end)
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        at = rng.randrange(end)
        out[at : at + 8] = b"\xff" * 8
    return bytes(out)


FUZZ_FORMATS = {
    "safetensors checkpoint": _valid_safetensors,
    "gguf": _valid_gguf,
    "glove text": _valid_glove,
    "word2vec binary": _valid_word2vec_binary,
    "npy + vocabulary": _valid_npy,
}
MUTATIONS = 40


@pytest.mark.parametrize("fmt", list(FUZZ_FORMATS))
def test_random_corruptions_give_a_table_or_a_source_error(tmp_path, monkeypatch, fmt):
    monkeypatch.setenv("HF_EMBFUSE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "files"
    folder.mkdir()
    raw, header_end, place = FUZZ_FORMATS[fmt](folder)
    rng = random.Random(f"fuzz {fmt}")
    outcomes = {"table": 0, "SourceError": 0}
    for _ in range(MUTATIONS):
        path = place(mutate(raw, rng, header_end))
        try:
            table = read_source(str(path))
        except SourceError:
            outcomes["SourceError"] += 1
            continue
        # Any other exception type fails the test with its traceback.
        assert table.weight.ndim == 2 and table.weight.dtype == torch.float32
        assert torch.isfinite(table.weight).all()
        outcomes["table"] += 1
    assert outcomes["SourceError"] > 0, outcomes  # the corruptions were noticed, not all silently absorbed
