"""The base's own table as source 0 of a new vocabulary: aligned onto the target like any other source.

One-to-one matches are copied, other rows decomposed by the base tokenizer (the FVT idea), special
tokens matched by role; placeholders and whatever is left are masked. The rows matched one to one
are the anchors that carry donors into the base space. The output side (an untied LM head, an MLM
decoder bias) is aligned the same way, with its own piece rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..alignment import AlignedSource, Vocabulary, align_source
from ..sources.table import SourceTable
from .errors import TargetError

logger = logging.getLogger(__name__)


@dataclass
class BaseOnTarget:
    """The base model's tables laid out on the target vocabulary.

    Attributes:
        vocabulary: the target vocabulary (read once, used for every source).
        aligned: the base input table on the target rows (masked rows zero, `aligned.coverage` False).
        anchors: `(V_t,)` content rows matched one to one (exact, canonical, casefold).
        special: `(V_t,)` the target's special tokens.
        overlap: anchors / the target's content tokens.
        tied: whether the base model's LM head is its input table.
    """

    vocabulary: Vocabulary
    aligned: AlignedSource
    anchors: torch.Tensor
    special: torch.Tensor
    overlap: float
    tied: bool

    @property
    def own_rows(self) -> torch.Tensor:
        """`(V_t,)` rows the base has as one row of its own: the anchors and the specials matched by role."""
        return self.anchors | self.aligned.outcome_mask("special")

    @property
    def num_rows(self) -> int:
        return int(self.aligned.table.shape[0])

    @property
    def table(self) -> torch.Tensor:
        return self.aligned.table


def base_source_table(name: str, weight: torch.Tensor, tokenizer: Any) -> SourceTable:
    """A base table (input, output, or a bias as one column) as a `SourceTable` the cascade can align."""
    return SourceTable(name=name, kind="base", weight=weight.detach().float(), tokenizer=tokenizer)


def align_onto_target(
    table: SourceTable,
    target_tokenizer: Any,
    vocabulary: Vocabulary,
    pieces: str,
    show_progress: bool = False,
) -> AlignedSource:
    """`align_source` onto the target rows, whatever the coverage (the caller judges the overlap).

    `pieces` is the piece rule (`mean`, `first`, `last`), or `none`: rows the base has no token for stay uncovered.
    """
    return align_source(
        target_tokenizer,
        table,
        num_rows=len(target_tokenizer),
        decompose=pieces != "none",
        combine="mean" if pieces == "none" else pieces,
        min_coverage=0.0,
        allow_low_coverage=True,
        show_progress=show_progress,
        base_vocabulary=vocabulary,
    )


def align_base(
    base_model: Any,
    base_tokenizer: Any,
    target_tokenizer: Any,
    *,
    pieces: str = "mean",
    min_overlap: float = 0.01,
    allow_low_overlap: bool = False,
    show_progress: bool = False,
    name: str = "base",
) -> BaseOnTarget:
    """Align the base's input table onto the target vocabulary and check that they share enough tokens.

    Raises:
        TargetError: fewer than `min_overlap` of the target's content tokens are base tokens too
            (unless `allow_low_overlap`): transport has almost no anchors, and the model would be guessing.
    """
    embedding = base_model.get_input_embeddings()
    output = base_model.get_output_embeddings()
    tied = output is not None and output.weight is embedding.weight
    vocabulary = Vocabulary.from_tokenizer(target_tokenizer)
    aligned = align_onto_target(
        base_source_table(name, embedding.weight, base_tokenizer),
        target_tokenizer,
        vocabulary,
        pieces,
        show_progress,
    )
    special = torch.zeros(aligned.table.shape[0], dtype=torch.bool)
    n = min(len(vocabulary), special.shape[0])
    special[:n] = torch.from_numpy(vocabulary.special[:n])
    anchors = aligned.anchor_mask & ~special
    content = int(vocabulary.content[:n].sum())
    overlap = float(anchors.sum()) / max(content, 1)
    logger.info("The base has %.2f%% of the target's %d content tokens one to one.", 100 * overlap, content)
    if overlap < min_overlap and not allow_low_overlap:
        raise TargetError(
            f"The target tokenizer shares {overlap:.2%} of its {content:,} content tokens with the base "
            f"({int(anchors.sum()):,} tokens), below min_overlap={min_overlap:.2%}: it is probably not a "
            "tokenizer for this language or script, and donors would have almost no anchors. Pass "
            "allow_low_overlap=True (recipe: `allow_low_overlap: true`) to build anyway."
        )
    return BaseOnTarget(vocabulary, aligned, anchors, special, overlap, tied)
