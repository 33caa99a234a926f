"""Lay a source's embedding table out on the base vocabulary, token by token.

Per base row, the first step that applies wins:

1. past the base tokenizer -> `beyond_vocab`; reserved row (`[unused3]`) -> `placeholder`;
2. special token -> the source's special token with the same string, else with the same role
   (cls/bos, sep/eos, mask, unk, pad) -> `special`; none -> `unmatched_special`. Never decomposed;
3. the same token string at the same word position -> `exact`;
4. the same canonical `(text, word_start)` (see `canonical.py`) -> `canonical`;
5. the same, case-folded -> `casefold`;
6. the source tokenizer's pieces for the text, at the token's word position, rows combined
   (`decomposed`), for model sources only;
7. otherwise `uncovered` (zero row, coverage False).

Word position is part of every match: BERT's `##ing` meets BPE's `ing`, never `Ġing`/`▁ing`. The
one exception is what BERT-style tokenizers always split off as a word of its own (punctuation,
CJK ideographs): BERT's `"!"` has no position, so it also meets BPE's `"!"`.

Steps 3-5 are dictionary look-ups; step 6 batch-encodes only what is left through the fast backend;
the table is then one `embedding_bag` over all rows.

Static word vectors are whole words, so only word-start base tokens (and position-free ones) can
match them; continuation pieces (`##ing`, BPE `ing`) stay uncovered, since without a tokenizer
there is no sound way to split a continuation into words.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..sources.table import SourceTable
from .decompose import decompose_rows
from .matching import SourceIndex, dictionary_passes, match_specials
from .report import ANCHOR_OUTCOMES, COVERED_OUTCOMES, OUTCOMES, AlignmentReport
from .vocabulary import Vocabulary

logger = logging.getLogger(__name__)

# "first" / "last" keep one piece: tokensurgeon's rules for output and input rows of a new vocabulary.
COMBINE_MODES = ("mean", "sum", "max", "first", "last")
_CODE = {name: np.int8(i) for i, name in enumerate(OUTCOMES)}
_SAMPLE_SIZE = 20


class AlignmentError(ValueError):
    """A source cannot be aligned usefully to the base vocabulary."""


@dataclass
class AlignedSource:
    """A source's table laid out on the base vocabulary.

    Attributes:
        table: `(num_rows, d)` float32, uncovered rows zero; `None` when aligned with `build_table=False`
            (the rows are then `bags` read from the source's table, chunk by chunk).
        coverage: `(num_rows,)` bool, True where the source has a row for the base token.
        report: counts and coverage, JSON-safe through `report.to_dict()`.
        outcomes: `(num_rows,)` int8, the index into `OUTCOMES` of how each row was filled.
        source_index: `(num_rows,)` int64, the source row copied into each row matched one to one
            (special, exact, canonical, casefold), -1 elsewhere.
        bags: each row as a bag of source rows (what `table` was built from).
    """

    table: torch.Tensor | None
    coverage: torch.Tensor
    report: AlignmentReport
    outcomes: torch.Tensor
    source_index: torch.Tensor
    bags: RowBags | None = None

    @property
    def name(self) -> str:
        return self.report.source

    def outcome_mask(self, *names: str) -> torch.Tensor:
        """Rows whose outcome is one of `names` (see `OUTCOMES`)."""
        unknown = set(names) - set(OUTCOMES)
        if unknown:
            raise ValueError(f"Unknown outcome(s) {sorted(unknown)}; choose from {list(OUTCOMES)}.")
        codes = torch.tensor([OUTCOMES.index(n) for n in names], dtype=self.outcomes.dtype)
        return torch.isin(self.outcomes, codes)

    @property
    def anchor_mask(self) -> torch.Tensor:
        """Content rows matched to a single source row by their text (exact, canonical, casefold)."""
        return self.outcome_mask(*sorted(ANCHOR_OUTCOMES))


@dataclass
class RowBags:
    """Each row as a bag of source rows, combined by `mode` (the alignment as a plan; CSR layout).

    Attributes:
        flat: `(n,)` source row ids, bag after bag in row order.
        offsets: `(num_rows,)` where each row's bag starts in `flat` (an empty bag is a zero row).
        mode: `"mean"`, `"sum"` or `"max"`.
    """

    flat: torch.Tensor
    offsets: torch.Tensor
    mode: str

    @property
    def num_rows(self) -> int:
        return int(self.offsets.numel())

    def rows_between(self, start: int, end: int, table: torch.Tensor) -> torch.Tensor:
        """`(end - start, d)` float32: rows `start..end` built from `table`'s rows."""
        lo = int(self.offsets[start]) if start < self.num_rows else int(self.flat.numel())
        hi = int(self.offsets[end]) if end < self.num_rows else int(self.flat.numel())
        flat = self.flat[lo:hi].to(table.device)
        offsets = (self.offsets[start:end] - lo).to(table.device)
        if table.dtype == torch.float32:
            return F.embedding_bag(flat, table, offsets, mode=self.mode)
        # Convert only the rows used, not a whole (possibly 262k-row) half-precision table.
        used, local = torch.unique(flat, return_inverse=True)
        return F.embedding_bag(local, table[used].to(torch.float32), offsets, mode=self.mode)


def _bags(
    num_rows: int,
    source_index: np.ndarray,
    dec_rows: np.ndarray,
    dec_flat: np.ndarray,
    dec_lengths: np.ndarray,
    mode: str,
) -> RowBags:
    """Every row as a bag: one source row for one-to-one matches, the pieces for decomposed rows, nothing
    for uncovered ones (an empty bag comes out as zeros in every mode)."""
    if mode in ("first", "last") and dec_rows.size:
        starts = np.cumsum(dec_lengths) - dec_lengths
        dec_flat = dec_flat[starts if mode == "first" else starts + dec_lengths - 1]
        dec_lengths = np.ones_like(dec_lengths)
    if mode in ("first", "last"):
        mode = "sum"
    direct = np.flatnonzero(source_index >= 0)
    lengths = np.zeros(num_rows, dtype=np.int64)
    lengths[direct] = 1
    lengths[dec_rows] = dec_lengths
    offsets = np.cumsum(lengths) - lengths
    flat = np.empty(int(lengths.sum()), dtype=np.int64)
    flat[offsets[direct]] = source_index[direct]
    if dec_rows.size:
        dec_starts = np.cumsum(dec_lengths) - dec_lengths
        within = np.arange(dec_flat.size) - np.repeat(dec_starts, dec_lengths)
        flat[np.repeat(offsets[dec_rows], dec_lengths) + within] = dec_flat
    return RowBags(torch.from_numpy(flat), torch.from_numpy(offsets), mode)


def _report(
    source: SourceTable,
    base: Vocabulary,
    src: Vocabulary,
    outcomes: np.ndarray,
    tokenizer_size: int,
    decompose: bool,
    combine: str,
) -> AlignmentReport:
    num_rows = len(outcomes)
    n_tok = min(len(base), num_rows)
    counts = np.bincount(outcomes, minlength=len(OUTCOMES))
    covered = np.isin(outcomes, [_CODE[n] for n in COVERED_OUTCOMES])
    content = np.zeros(num_rows, dtype=bool)
    content[:n_tok] = base.content[:n_tok]
    starts = np.zeros(num_rows, dtype=bool)
    starts[:n_tok] = base.word_start[:n_tok]

    def share(mask: np.ndarray) -> float:
        return float(covered[mask].mean()) if mask.any() else 0.0

    missing = np.flatnonzero(content & ~covered)
    if missing.size > _SAMPLE_SIZE:
        missing = missing[np.unique(np.linspace(0, missing.size - 1, _SAMPLE_SIZE).astype(np.int64))]
    return AlignmentReport(
        source=source.name,
        num_rows=num_rows,
        tokenizer_size=tokenizer_size,
        source_rows=int(source.weight.shape[0]),
        counts={name: int(counts[i]) for i, name in enumerate(OUTCOMES)},
        coverage=float(covered.mean()) if num_rows else 0.0,
        num_content=int(content.sum()),
        content_coverage=share(content),
        word_start_coverage=share(content & starts),
        continuation_coverage=share(content & ~starts),
        uncovered_sample=[str(base.tokens[i]) for i in missing.tolist()],
        base_family=base.family.name,
        source_family=src.family.name,
        decompose=decompose,
        combine=combine,
    )


def align_source(
    base_tokenizer: Any,
    source: SourceTable,
    *,
    num_rows: int | None = None,
    decompose: bool = True,
    combine: str = "mean",
    min_coverage: float = 0.01,
    allow_low_coverage: bool = False,
    show_progress: bool = False,
    base_vocabulary: Vocabulary | None = None,
    build_table: bool = True,
) -> AlignedSource:
    """Map a source's embedding table onto the base tokenizer's vocabulary.

    Args:
        base_tokenizer: the base model's tokenizer (a fast one for speed; slow ones work too).
        source: the source table, with its tokenizer (model sources) or word list (static vectors).
        num_rows: the base model's embedding rows; may exceed `len(base_tokenizer)` (those rows come
            out uncovered as `beyond_vocab`). Defaults to `len(base_tokenizer)`.
        decompose: re-tokenise base tokens the source has no single row for, and combine the rows.
        combine: how piece rows are combined: `"mean"`, `"sum"`, `"max"`, or one piece: `"first"`, `"last"`.
        min_coverage: least share of the base's content tokens the source must cover.
        allow_low_coverage: align anyway when coverage is below `min_coverage`.
        show_progress: show a progress bar while decomposing.
        base_vocabulary: `Vocabulary.from_tokenizer(base_tokenizer)`, when aligning several sources to
            one base (reading a 262k vocabulary takes ~0.25 s); computed here if not given.

    Returns:
        The aligned table with its coverage mask, per-row outcomes and report.

    Raises:
        AlignmentError: the source covers less than `min_coverage` of the base content tokens.
    """
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine={combine!r} is not supported; choose one of {list(COMBINE_MODES)}.")
    if not isinstance(source, SourceTable):
        raise TypeError(f"`source` must be a hf_embfuse SourceTable, got {type(source).__name__}.")
    tokenizer_size = len(base_tokenizer)
    num_rows = tokenizer_size if num_rows is None else int(num_rows)
    if num_rows <= 0:
        raise ValueError(f"num_rows must be positive, got {num_rows}.")

    base = Vocabulary.from_tokenizer(base_tokenizer) if base_vocabulary is None else base_vocabulary
    if len(base) < tokenizer_size:
        raise ValueError(
            f"base_vocabulary has {len(base)} tokens but the base tokenizer {tokenizer_size}; it was read from "
            "another tokenizer. Pass Vocabulary.from_tokenizer(base_tokenizer), or leave it out."
        )
    src = (
        Vocabulary.from_tokenizer(source.tokenizer)
        if source.tokenizer is not None
        else Vocabulary.from_words(source.vocab)
    )
    src_rows = int(source.weight.shape[0])
    if len(base) > num_rows:
        logger.warning(
            "Base tokenizer has %d tokens but only %d embedding rows; ids from %d on are ignored.",
            len(base),
            num_rows,
            num_rows,
        )
    if source.tokenizer is not None and len(src) > src_rows:
        logger.warning(
            "Source %r: tokenizer has %d tokens but the table %d rows; tokens past the table are unusable.",
            source.name,
            len(src),
            src_rows,
        )
    usable = np.zeros(len(src), dtype=bool)
    usable[: min(len(src), src_rows)] = True

    n_tok = min(len(base), num_rows)
    outcomes = np.full(num_rows, _CODE["beyond_vocab"], dtype=np.int8)
    outcomes[:n_tok] = _CODE["uncovered"]
    outcomes[:n_tok][base.placeholder[:n_tok]] = _CODE["placeholder"]
    source_index = np.full(num_rows, -1, dtype=np.int64)

    special_rows = np.flatnonzero(base.special[:n_tok])
    outcomes[special_rows] = _CODE["unmatched_special"]
    for i, j in match_specials(base, src, special_rows, usable).items():
        outcomes[i], source_index[i] = _CODE["special"], j

    index = SourceIndex(src, usable)
    content_rows = np.flatnonzero(outcomes == _CODE["uncovered"])
    for outcome, (rows, hits) in dictionary_passes(base, index, content_rows).items():
        outcomes[rows], source_index[rows] = _CODE[outcome], hits

    empty = np.zeros(0, dtype=np.int64)
    dec_rows, dec_flat, dec_lengths = empty, empty, empty
    if decompose and source.tokenizer is not None:
        left = np.flatnonzero(outcomes == _CODE["uncovered"])
        dec_rows, dec_flat, dec_lengths = decompose_rows(
            base, src, source.tokenizer, left, usable, show_progress, source.name
        )
        outcomes[dec_rows] = _CODE["decomposed"]

    bags = _bags(num_rows, source_index, dec_rows, dec_flat, dec_lengths, combine)
    table = bags.rows_between(0, num_rows, source.weight) if build_table else None
    covered = np.isin(outcomes, [_CODE[n] for n in COVERED_OUTCOMES])
    report = _report(source, base, src, outcomes, tokenizer_size, decompose, combine)
    logger.info(
        "Aligned %r: %.2f%% of %d content tokens covered.",
        source.name,
        100 * report.content_coverage,
        report.num_content,
    )
    if report.content_coverage < min_coverage and not allow_low_coverage:
        raise AlignmentError(
            f"Source {source.name!r} covers {report.content_coverage:.2%} of the base vocabulary's "
            f"{report.num_content:,} content tokens, below min_coverage={min_coverage:.2%}; it is probably the wrong "
            "source for this base model (or its tokenizer/vocabulary is missing). Pass allow_low_coverage=True "
            "to align it anyway, or lower min_coverage."
        )
    return AlignedSource(
        table=table,
        coverage=torch.from_numpy(covered),
        report=report,
        outcomes=torch.from_numpy(outcomes),
        source_index=torch.from_numpy(source_index),
        bags=bags,
    )
