"""Parsers for static word-vector files: GloVe/word2vec/fastText text, and word2vec binary.

Text files are parsed in bulk, a block of lines at a time: the lines are split once, the words cut
off with one C-level `partition` per line, and a block's numbers parsed by numpy's C reader in a
single call. Only when that call fails does a per-line pass run, to say which line is wrong and why.
"""

from __future__ import annotations

import contextlib
import gzip
import mmap
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import SourceError

_INT = re.compile(rb"^\d+$")
# word2vec binary records are gathered in slices of about this many bytes.
_GATHER_BYTES = 8 << 20
# Text files are parsed in blocks of about this many bytes.
_TEXT_BLOCK = 16 << 20


def parse_header(line: bytes) -> tuple[int, int] | None:
    """`(count, dim)` when `line` is a word2vec/fastText header, else `None`."""
    fields = line.split()
    if len(fields) == 2 and all(_INT.match(f) for f in fields):
        return int(fields[0]), int(fields[1])
    return None


def parse_text_vectors(
    path: Path, *, has_header: bool, max_words: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Parse whitespace-separated `word v1 ... vd` lines (GloVe; word2vec/fastText text after a header).

    The file is streamed in blocks of lines, so memory stays at the result plus one block.

    Args:
        path: the text file (`.gz` is decompressed on the fly).
        has_header: the first line is `count dim` (word2vec/fastText text).
        max_words: parse only the first this many vectors (the header's count is then not checked).

    Returns:
        The words, and a float32 `(n, d)` array.
    """
    name = str(path)
    words: list[str] = []
    blocks: list[np.ndarray] = []
    count = dim = None
    n_rows = 0
    with _open_binary(path) as f, _read_errors(name):
        for first_line, lines in _line_blocks(f):
            if has_header and first_line == 1:
                header = parse_header(lines[0]) if lines else None
                if header is None:
                    raise SourceError(
                        f"{name}: line 1 should be a 'count dim' header; pass fmt='glove' if it has none."
                    )
                count, dim = header
                lines, first_line = lines[1:], 2
            if max_words is not None:
                lines = lines[: max_words - n_rows]
            if not lines:
                continue
            if dim is None:
                dim = len(lines[0].partition(b" ")[2].split())
                if dim == 0:
                    raise SourceError(
                        f"{name}, line {first_line}: a word without values ({lines[0][:40]!r}); each line "
                        "should be `word v1 v2 ...`."
                    )
            block_words, values = _parse_block(lines, dim, name, first_line)
            words += block_words
            blocks.append(values)
            n_rows += len(block_words)
            if max_words is not None and n_rows >= max_words:
                break
    if count is not None and max_words is None and count != n_rows:
        raise SourceError(
            f"{name}: the header says {count} vectors but the file has {n_rows}; fix the header's count "
            "(or the file is truncated)."
        )
    if not words:
        raise SourceError(f"{name} holds no vectors.")
    return words, blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


@contextlib.contextmanager
def _read_errors(name: str) -> Iterator[None]:
    """A damaged file (truncated or corrupt gzip stream, I/O error) is a SourceError naming it."""
    try:
        yield
    except (EOFError, OSError, zlib.error) as e:
        raise SourceError(f"Cannot read {name} ({e}); the file is truncated or corrupt.") from None


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _line_blocks(f: BinaryIO) -> Iterator[tuple[int, list[bytes]]]:
    """Yield `(number of the block's first line, its non-empty lines)` for blocks of about `_TEXT_BLOCK` bytes."""
    pending = b""
    line_no = 1
    first = True
    while True:
        chunk = f.read(_TEXT_BLOCK)
        if first and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]
        first = False
        if chunk:
            data = pending + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                pending = data
                continue
            pending, data = data[cut + 1 :], data[:cut]
        else:
            data, pending = pending, b""
            if not data:
                return
        lines = data.split(b"\n")
        if b"\r" in data:
            lines = [line.rstrip(b"\r") for line in lines]
        start, line_no = line_no, line_no + len(lines)
        if all(lines):
            yield start, lines
        else:
            # Blank lines are skipped; the block restarts after each so line numbers stay exact.
            run: list[bytes] = []
            for i, line in enumerate(lines):
                if line:
                    run.append(line)
                    continue
                if run:
                    yield start + i - len(run), run
                run = []
            if run:
                yield start + len(lines) - len(run), run
        if not chunk:
            return


def _parse_block(lines: list[bytes], dim: int, name: str, first_line: int) -> tuple[list[str], np.ndarray]:
    parts = [line.partition(b" ") for line in lines]
    raw_words = [p[0] for p in parts]
    rests = [p[2] for p in parts]
    del parts
    try:
        values = np.loadtxt(rests, dtype=np.float32, comments=None, ndmin=2, quotechar=None)
        ok = values.shape == (len(rests), dim)
    except ValueError:
        ok = False
    if not ok:
        raw_words, rests = _fix_or_explain(raw_words, rests, dim, name, first_line)
        try:
            values = np.loadtxt(rests, dtype=np.float32, comments=None, ndmin=2, quotechar=None)
        except ValueError as e:  # what the per-line check cannot see, e.g. a stray carriage return
            raise SourceError(
                f"{name}, lines {first_line}-{first_line + len(rests) - 1}: {e} Fix the file's line endings."
            ) from None
    return decode_words(raw_words, name, first_line), values


def _fix_or_explain(
    raw_words: list[bytes], rests: list[bytes], dim: int, name: str, first_line: int
) -> tuple[list[bytes], list[bytes]]:
    """Per-line check after bulk parsing failed: repair words that contain spaces, else name the bad line.

    Some published files (GloVe 840B) have words with spaces: such a line has more than `dim`
    fields, and its last `dim` are the vector.
    """
    raw_words, rests = list(raw_words), list(rests)
    for i, rest in enumerate(rests):
        fields = rest.split()
        if (
            len(fields) > dim
            and _all_numbers(fields[-dim:])
            and not _all_numbers(fields[: len(fields) - dim])
        ):
            raw_words[i] = b" ".join([raw_words[i], *fields[: len(fields) - dim]])
            rests[i] = b" ".join(fields[-dim:])
            continue
        if len(fields) != dim:
            raise SourceError(
                f"{name}, line {first_line + i}: {len(fields)} values where {dim} are expected "
                f"(word {raw_words[i][:40]!r}). Fix or remove that line."
            )
        if not _all_numbers(fields):
            bad = next(f for f in fields if not _all_numbers([f]))
            raise SourceError(
                f"{name}, line {first_line + i}: {bad[:40]!r} is not a number. Fix or remove that line."
            )
    return raw_words, rests


def _all_numbers(fields: list[bytes]) -> bool:
    try:
        for f in fields:
            float(f)
    except ValueError:
        return False
    return True


def decode_words(raw_words: list[bytes], name: str, first_line: int = 1, unit: str = "line") -> list[str]:
    """Decode UTF-8 words, naming the first line (or entry) that is not valid UTF-8."""
    try:
        return [w.decode("utf-8") for w in raw_words]
    except UnicodeDecodeError:
        for i, w in enumerate(raw_words):
            try:
                w.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SourceError(
                    f"{name}, {unit} {first_line + i}: the word {w[:40]!r} is not valid UTF-8 ({e.reason}). "
                    "Re-encode the file as UTF-8."
                ) from None
        raise


def parse_word2vec_binary(path: Path, *, max_words: int | None = None) -> tuple[list[str], np.ndarray]:
    """Parse the word2vec binary format: a `count dim` line, then per word `word<space>` + dim float32 (LE).

    Args:
        path: the file.
        max_words: parse only the first this many vectors (the header's count is then not checked).
    """
    name = str(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        newline = buf.find(b"\n", 0, 256)
        header = parse_header(buf[:newline]) if newline > 0 else None
        if header is None:
            raise SourceError(
                f"{name}: a word2vec binary file starts with a 'count dim' line; this one does not."
            )
        count, dim = header
        n = count if max_words is None else min(count, max_words)
        record = 4 * dim
        size = len(buf)
        # Each entry takes at least `record + 1` bytes: a header claiming more than fit (say 10^12
        # vectors) must fail on the data, not on allocating room for them.
        offsets = np.empty(min(n, (size - newline) // (record + 1) + 1), dtype=np.int64)
        raw_words: list[bytes] = []
        pos = newline + 1
        for i in range(n):
            # Writers put a newline after each vector (word2vec.c, gensim); skip it before the next word.
            while pos < size and buf[pos] in (10, 13):
                pos += 1
            space = buf.find(b" ", pos, pos + 4096)
            if space < 0 or space + 1 + record > size or i >= len(offsets):
                raise SourceError(
                    f"{name}: the header says {count} vectors but the file ends after {i}; fix the header's count "
                    "(or the file is truncated)."
                )
            raw_words.append(buf[pos:space])
            offsets[i] = space + 1
            pos = space + 1 + record
        if max_words is None and buf[pos:].strip():
            raise SourceError(
                f"{name}: the header says {count} vectors but the file holds more data after them; fix the header's count."
            )
        values = _gather_records(np.frombuffer(buf, dtype=np.uint8), offsets, record)
    return decode_words(raw_words, name, first_line=1, unit="entry"), values.view("<f4").reshape(
        n, dim
    ).astype(np.float32, copy=False)


def _gather_records(raw: np.ndarray, offsets: np.ndarray, record: int) -> np.ndarray:
    """Copy `record` bytes at each offset into one `(n, record)` array, in bounded slices."""
    out = np.empty((len(offsets), record), dtype=np.uint8)
    step = max(1, _GATHER_BYTES // max(record, 1))
    columns = np.arange(record, dtype=np.int64)
    for start in range(0, len(offsets), step):
        chunk = offsets[start : start + step]
        out[start : start + len(chunk)] = raw[chunk[:, None] + columns]
    return out
