"""The per-source alignment report: what matched how, kept in the model config as provenance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Outcome codes, in cascade order; `AlignedSource.outcomes` stores the index into this tuple.
OUTCOMES = (
    "special",  # special token matched by role (bos/cls, eos/sep, pad, unk, mask) or identical string
    "exact",  # same token string, same word position
    "canonical",  # same text and word position once markers (##, Ġ, ▁, <0x..>) are normalised away
    "casefold",  # same, ignoring case
    "decomposed",  # re-tokenised by the source, piece rows combined
    "unmatched_special",  # special token the source has no counterpart for (uncovered)
    "placeholder",  # reserved row such as [unused3] or <extra_id_0> (uncovered)
    "uncovered",  # content token nothing matched
    "beyond_vocab",  # embedding row past the end of the base tokenizer (uncovered)
)
COVERED_OUTCOMES = frozenset({"special", "exact", "canonical", "casefold", "decomposed"})
# Matches of one source row to one base token: the rows a linear map between spaces can be fit on.
ANCHOR_OUTCOMES = frozenset({"exact", "canonical", "casefold"})

_SAMPLE_SIZE = 20


@dataclass
class AlignmentReport:
    """How one source was aligned to the base vocabulary.

    Attributes:
        source: the source's name (path or Hub id).
        num_rows: base embedding rows aligned (may exceed `tokenizer_size`).
        tokenizer_size: `len(base_tokenizer)`.
        source_rows: rows of the source table.
        counts: number of base rows per outcome (every name in `OUTCOMES`); sums to `num_rows`.
        coverage: covered rows / `num_rows`.
        num_content: base rows that are neither special, placeholder nor beyond the vocabulary.
        content_coverage: covered content rows / `num_content`.
        word_start_coverage: the same over content tokens that start a word.
        continuation_coverage: the same over content tokens that continue a word.
        uncovered_sample: up to 20 content tokens left uncovered, spread over the vocabulary.
        base_family: word-boundary convention of the base tokenizer.
        source_family: that of the source.
        decompose: whether decomposition was allowed.
        combine: how piece rows were combined.
    """

    source: str
    num_rows: int
    tokenizer_size: int
    source_rows: int
    counts: dict[str, int]
    coverage: float
    num_content: int
    content_coverage: float
    word_start_coverage: float
    continuation_coverage: float
    uncovered_sample: list[str] = field(default_factory=list)
    base_family: str = ""
    source_family: str = ""
    decompose: bool = True
    combine: str = "mean"

    @property
    def num_covered(self) -> int:
        return sum(n for name, n in self.counts.items() if name in COVERED_OUTCOMES)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (plain str/int/float/bool/list/dict)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignmentReport:
        """Inverse of `to_dict`; unknown keys (from a newer version) are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["counts"] = {name: int(values.get("counts", {}).get(name, 0)) for name in OUTCOMES}
        return cls(**values)

    def format_table(self) -> str:
        """A fixed-width summary: one line per outcome with its count and share of the rows."""
        width = max(len(name) for name in OUTCOMES)
        lines = [
            f"Alignment of {self.source!r} ({self.source_family}, {self.source_rows:,} rows) "
            f"to the base vocabulary ({self.base_family}, {self.tokenizer_size:,} tokens, {self.num_rows:,} rows)",
        ]
        for name in OUTCOMES:
            n = self.counts.get(name, 0)
            share = n / self.num_rows if self.num_rows else 0.0
            mark = "+" if name in COVERED_OUTCOMES else " "
            lines.append(f"  {mark} {name:<{width}} {n:>9,}  {share:7.2%}")
        lines.append(
            f"  coverage {self.coverage:.2%} of rows; {self.content_coverage:.2%} of {self.num_content:,} content "
            f"tokens (word-start {self.word_start_coverage:.2%}, continuation {self.continuation_coverage:.2%})"
        )
        if self.uncovered_sample:
            lines.append("  uncovered e.g. " + ", ".join(repr(t) for t in self.uncovered_sample[:10]))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()
