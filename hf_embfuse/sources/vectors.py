"""Read static word vectors (GloVe, word2vec, fastText, `.npy` + vocabulary) as a source table."""

from __future__ import annotations

import gzip
import logging
import os
import tokenize
from pathlib import Path

import numpy as np
import torch

from ._vector_parsers import decode_words, parse_header, parse_text_vectors, parse_word2vec_binary
from .errors import SourceError
from .table import SourceTable

logger = logging.getLogger(__name__)

VECTOR_FORMATS = ("glove", "word2vec", "fasttext", "word2vec-binary", "npy")
TEXT_SUFFIXES = (".txt", ".vec", ".w2v")
# Vocabulary files looked for next to a `.npy` when `vocab_path` is not given.
_VOCAB_NAMES = ("{stem}.vocab", "{stem}.vocab.txt", "{stem}.txt", "vocab.txt", "words.txt")
_VOCAB_COLUMNS = ("word", "words", "token", "tokens", "vocab", "index")


def read_vectors_source(
    path: str | os.PathLike,
    *,
    vocab_path: str | os.PathLike | None = None,
    fmt: str | None = None,
    max_words: int | None = None,
) -> SourceTable:
    """Read a static word-vector file as a `SourceTable` with one row per word.

    Args:
        path: a GloVe text file (no header), word2vec text or binary file, fastText `.vec`, a `.npy`
            matrix, or a folder holding one `.npy` and its vocabulary. Text files may be gzipped.
        vocab_path: the words of a `.npy`'s rows: a text file with one word per line, or a parquet
            file with one string column (needs `pyarrow`). Found next to the `.npy` when omitted.
        fmt: one of `VECTOR_FORMATS`; detected from the extension and content when `None`.
        max_words: read only the first this many vectors (files are usually sorted by frequency).

    Returns:
        A `SourceTable` of kind `"vectors"`. Repeated words keep their first vector;
        `metadata["duplicates"]` counts the rows dropped.

    Raises:
        FileNotFoundError: `path` or `vocab_path` does not exist.
        SourceError: a malformed file (wrong row width, non-UTF-8 word, header count that does not
            match, vocabulary length that does not match the matrix), each naming the line.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No such vectors file: {os.fspath(path)!r}")
    if max_words is not None and max_words < 1:
        raise ValueError(f"max_words must be positive, got {max_words}.")
    if path.is_dir():
        path = _single_npy(path)
    fmt = fmt or detect_vectors_format(path)
    if fmt not in VECTOR_FORMATS:
        raise SourceError(f"Unknown vectors format {fmt!r} for {path}; use one of {VECTOR_FORMATS}.")
    name = os.fspath(path)
    extra: dict[str, object] = {}
    if fmt == "npy":
        words, values, vocab_file = _read_npy(path, vocab_path, max_words)
        extra["vocab_file"] = os.fspath(vocab_file)
    elif fmt == "word2vec-binary":
        if path.suffix == ".gz":
            raise SourceError(f"{path}: decompress word2vec binary files before reading them (gunzip).")
        words, values = parse_word2vec_binary(path, max_words=max_words)
    else:
        words, values = parse_text_vectors(path, has_header=fmt != "glove", max_words=max_words)
    words, values, duplicates = _drop_duplicates(words, values)
    if duplicates:
        logger.warning("%s: %d repeated words; kept the first vector of each.", name, duplicates)
    weight = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    metadata = {"format": fmt, "file": path.name, "duplicates": duplicates, **extra}
    return SourceTable(name=name, kind="vectors", weight=weight, vocab=words, metadata=metadata)


def detect_vectors_format(path: Path) -> str:
    """Guess the format: `.npy` by extension, otherwise from the first line and the bytes after it."""
    if path.suffix == ".npy":
        return "npy"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            sample = f.read(1 << 16)
    except (OSError, EOFError) as e:
        raise SourceError(f"Cannot read {path} ({e}).") from None
    first, _, after = sample.removeprefix(b"\xef\xbb\xbf").partition(b"\n")
    if parse_header(first) is None:
        if path.suffix == ".bin":
            raise SourceError(
                f"{path} is not a word2vec binary file (no 'count dim' first line). If it is a PyTorch checkpoint, "
                "read its folder (with its config.json) through read_hf_source(..., allow_pickle=True)."
            )
        return "glove"
    # After a header, text and binary differ plainly: float32 bytes hold NULs and invalid UTF-8.
    body = after[: len(after) - 8]
    try:
        body.decode("utf-8")
        binary = b"\x00" in body
    except UnicodeDecodeError:
        binary = True
    if binary:
        return "word2vec-binary"
    return "fasttext" if path.name.endswith((".vec", ".vec.gz")) else "word2vec"


def _single_npy(folder: Path) -> Path:
    found = sorted(folder.glob("*.npy"))
    if len(found) != 1:
        raise SourceError(
            f"{folder} holds {len(found)} .npy files; point at the vectors file itself (with vocab_path= if needed)."
        )
    return found[0]


def _read_npy(
    path: Path, vocab_path: str | os.PathLike | None, max_words: int | None
) -> tuple[list[str], np.ndarray, Path]:
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as e:
        # numpy parses the header with Python's tokenizer: a corrupt one raises any of these.
        raise SourceError(f"{path} is not a plain numeric .npy array ({type(e).__name__}: {e}).") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise SourceError(
            f"{path} holds a {matrix.ndim}-D {matrix.dtype} array; a 2-D float matrix is expected."
        )
    vocab_file = Path(vocab_path).expanduser() if vocab_path is not None else _find_vocab(path)
    if not vocab_file.is_file():
        raise FileNotFoundError(f"No such vocabulary file: {os.fspath(vocab_file)!r}")
    words = (
        _read_parquet_words(vocab_file) if vocab_file.suffix == ".parquet" else _read_word_list(vocab_file)
    )
    if len(words) != matrix.shape[0]:
        raise SourceError(
            f"{vocab_file} lists {len(words)} words but {path} has {matrix.shape[0]} rows; they must match one to one."
        )
    n = matrix.shape[0] if max_words is None else min(max_words, matrix.shape[0])
    # Copy out of the mmap, converting to float32 in the same pass.
    return words[:n], np.array(matrix[:n], dtype=np.float32), vocab_file


def _find_vocab(npy: Path) -> Path:
    folder = npy.parent
    for pattern in _VOCAB_NAMES:
        candidate = folder / pattern.format(stem=npy.stem)
        if candidate.is_file():
            return candidate
    parquets = sorted(folder.glob("*.parquet"))
    if len(parquets) == 1:
        return parquets[0]
    raise SourceError(
        f"No vocabulary found for {npy} (looked for {npy.stem}.vocab, {npy.stem}.txt, vocab.txt or one .parquet "
        "next to it); pass vocab_path= naming the file with one word per row."
    )


def _read_word_list(path: Path) -> list[str]:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # Split on "\n" only: str.splitlines would also split on characters such as U+2028 inside words.
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return decode_words([line.removesuffix(b"\r") for line in lines], os.fspath(path))


def _read_parquet_words(path: Path) -> list[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            f"Reading the vocabulary {path} needs pyarrow: pip install 'hf-embfuse[vectors]'"
        ) from None
    schema = pq.read_schema(path)
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    preferred = [c for c in _VOCAB_COLUMNS if c in strings]
    if len(strings) == 1 or preferred:
        column = (preferred or strings)[0]
    else:
        raise SourceError(
            f"{path} has string columns {strings}; expected exactly one, or one named {list(_VOCAB_COLUMNS)}. "
            "Pass a vocabulary file with one word per line instead."
        )
    words = pq.read_table(path, columns=[column]).column(column).to_pylist()
    if any(w is None for w in words):
        raise SourceError(f"{path}: column {column!r} has missing words (nulls); every row needs a word.")
    return words


def _drop_duplicates(words: list[str], values: np.ndarray) -> tuple[list[str], np.ndarray, int]:
    # dict() keeps the last index of a repeated key, so build it from the end to keep the first.
    first = dict(zip(reversed(words), range(len(words) - 1, -1, -1), strict=True))
    duplicates = len(words) - len(first)
    if not duplicates:
        return words, values, 0
    keep = np.sort(np.fromiter(first.values(), dtype=np.int64, count=len(first)))
    return [words[i] for i in keep], values[keep], duplicates
