"""The one value every reader returns: a raw embedding table with what is needed to align it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .errors import SourceError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class SourceTable:
    """A source's input-embedding table as read from disk, before alignment.

    Exactly one of `tokenizer` (model sources: row i is token id i) and `vocab` (static word
    vectors: row i is the word `vocab[i]`) is set.

    Attributes:
        name: what the user pointed at (a local path or a Hub id), kept as provenance.
        kind: the reader that produced it: `"hf"`, `"gguf"` or `"vectors"`.
        weight: `(V_source, d)` table, float32 unless the reader documents otherwise.
        tokenizer: the source's own tokenizer, for model sources.
        vocab: the word of each row, for static vectors.
        revision: the resolved revision (commit hash) for Hub sources, else `None`.
        metadata: anything else worth keeping as provenance (tensor key, file, dtype, quantisation...).
    """

    name: str
    kind: str
    weight: torch.Tensor
    tokenizer: PreTrainedTokenizerBase | None = None
    vocab: list[str] | None = None
    revision: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.tokenizer is None) == (self.vocab is None):
            raise ValueError(f"Source {self.name!r}: give exactly one of `tokenizer` and `vocab`.")
        if self.weight.ndim != 2:
            raise ValueError(
                f"Source {self.name!r}: the table must be 2-D, got shape {tuple(self.weight.shape)}."
            )
        if self.vocab is not None and len(self.vocab) != self.weight.shape[0]:
            raise ValueError(
                f"Source {self.name!r}: {len(self.vocab)} words for {self.weight.shape[0]} rows; they must match."
            )
        self._check_finite()

    def _check_finite(self) -> None:
        if self.weight.is_meta:
            return  # a shape only (the build plans a base table's rows before reading it)
        # A row's sum is NaN or infinite whenever one of its values is (or when finite values overflow),
        # so one cheap reduction finds the candidate rows; only those are checked value by value.
        candidates = (~torch.isfinite(self.weight.sum(dim=1))).nonzero().flatten()
        for row in candidates.tolist():
            if not torch.isfinite(self.weight[row]).all():
                what = repr(self.vocab[row]) if self.vocab is not None else f"token id {row}"
                raise SourceError(
                    f"Source {self.name!r}: row {row} ({what}) holds NaN or infinite values; the file is corrupt. "
                    "Fix or remove that row."
                )

    @property
    def width(self) -> int:
        return int(self.weight.shape[1])
