"""Step 2 of the build: the base's tables laid on the target rows, as plans over the base checkpoint's tensors.

Source 0 of every build is the base's own table on the target vocabulary: one-to-one matches copied, other
rows decomposed by the base tokenizer (the FVT idea), special tokens matched by role. For plain fusion the
target is the base's tokenizer and every row matches itself. The rows matched one to one are the anchors
that carry donors into the base space. The head (rebuilt for a new vocabulary) and an MLM bias are laid out
the same way, with their own piece rule. Nothing here holds a vocabulary-sized float table: the layout is
row plans, applied chunk by chunk in `assembly.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from .alignment import AlignedSource, Vocabulary, align_source
from .alignment.cascade import RowBags
from .base_checkpoint import BaseCheckpoint
from .recipe import VocabularyConfig
from .sources.table import SourceTable
from .transfer.errors import TargetError
from .transfer.target import Target

logger = logging.getLogger(__name__)

# Whether a tied base head stays tied on a new vocabulary when the config says `vocabulary.head: auto`. Untied,
# it is rebuilt as the build-time mixture (measured better: docs/vocabulary-transfer.md, "The LM head").
TIE_BY_DEFAULT = False


@dataclass
class BaseLayout:
    """The base's tables on the target rows.

    Attributes:
        base: where the base's tensors come from.
        vocabulary: the target vocabulary (read once, used for every source).
        num_rows: rows of every table on the target.
        input_bags: each target row as a bag of base input rows.
        coverage: `(V_t,)` rows the base has (matched, decomposed, or special by role).
        base_row: `(V_t,)` the base row of each row matched one to one, -1 elsewhere.
        anchors: `(V_t,)` content rows matched one to one (exact, canonical, casefold).
        own_rows: `(V_t,)` anchors and specials matched by role: rows the base has as one row of its own.
        head_mode: `None` (no LM head), `"kept"` (plain fusion: the base's head as it is), `"tied"` or `"untied"`
            (rebuilt on the target rows).
        head_bags: each target row as a bag of base head rows, when rebuilt.
        head_coverage: rows the head's bags cover.
        bias_bags / bias_coverage: the same for an output bias (MLM decoders).
        donor_rows: `"all"` or `"new"` (only rows the base lacks).
        aligned: the base's alignment onto the target, for reports (`None` for plain fusion).
        overlap: anchors / the target's content tokens.
    """

    base: BaseCheckpoint
    vocabulary: Vocabulary
    num_rows: int
    input_bags: RowBags
    coverage: torch.Tensor
    base_row: torch.Tensor
    anchors: torch.Tensor
    own_rows: torch.Tensor
    head_mode: str | None
    donor_rows: str
    head_bags: RowBags | None = None
    head_coverage: torch.Tensor | None = None
    bias_bags: RowBags | None = None
    bias_coverage: torch.Tensor | None = None
    aligned: AlignedSource | None = None
    overlap: float = 1.0

    @property
    def rebuilds_head(self) -> bool:
        return self.head_mode == "untied"

    @property
    def plain(self) -> bool:
        """The target is the base's own vocabulary, every row matching itself."""
        return self.aligned is None

    @cached_property
    def input_table(self) -> torch.Tensor:
        """The base's input table, in its own dtype (read once)."""
        return self.base.input_table()

    @cached_property
    def head_table(self) -> torch.Tensor:
        """The base's head table (its input table when tied)."""
        head = self.base.head_table()
        return self.input_table if head is None or self.base.tied else head

    def base_input_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The base input rows of target rows matched one to one."""
        return self.input_table[self.base_row[ids]]

    def donor_coverage(self, coverage: torch.Tensor) -> torch.Tensor:
        """The rows a donor fills: with `donor_rows="new"`, none that the base has one to one.

        A donor reaches the base space through the anchors, so on an anchor its row is at best the base's own
        vector blurred by its neighbours'; mixing it in there only moves rows the body already reads well.
        """
        return coverage if self.donor_rows == "all" else coverage & ~self.own_rows

    def report(self) -> dict[str, Any]:
        return {
            "overlap": round(self.overlap, 6),
            "anchors": int(self.anchors.sum()),
            "head": self.head_mode,
            "base_alignment": None if self.aligned is None else self.aligned.report.to_dict(),
        }


def lay_base(
    base: BaseCheckpoint,
    target: Target,
    config: VocabularyConfig | None,
    *,
    name: str = "base",
    show_progress: bool = False,
) -> BaseLayout:
    """Lay the base's tables on the target's rows (see the module docstring)."""
    if config is None:
        return _identity_layout(base)
    vocabulary = Vocabulary.from_tokenizer(target.tokenizer)
    num_rows = len(target.tokenizer)
    input_weight = base.skeleton.get_input_embeddings().weight
    aligned = _align(base, name, input_weight, target, vocabulary, config.input_pieces, show_progress)
    special = torch.zeros(num_rows, dtype=torch.bool)
    special[: min(len(vocabulary), num_rows)] = torch.from_numpy(vocabulary.special[:num_rows])
    anchors = aligned.anchor_mask & ~special
    content = int(vocabulary.content[:num_rows].sum())
    overlap = float(anchors.sum()) / max(content, 1)
    logger.info("The base has %.2f%% of the target's %d content tokens one to one.", 100 * overlap, content)
    if overlap < config.min_overlap and not config.allow_low_overlap:
        raise TargetError(
            f"The target tokenizer shares {overlap:.2%} of its {content:,} content tokens with the base "
            f"({int(anchors.sum()):,} tokens), below min_overlap={config.min_overlap:.2%}: it is probably not a "
            "tokenizer for this language or script, and donors would have almost no anchors. Pass "
            "`config.allow_low_overlap=True` to build anyway."
        )
    head = base.skeleton.get_output_embeddings()
    head_mode = None
    if head is not None:
        untie = config.head == "untied" or (config.head == "auto" and not TIE_BY_DEFAULT)
        head_mode = "tied" if base.tied and not untie else "untied"
    layout = BaseLayout(
        base=base,
        vocabulary=vocabulary,
        num_rows=num_rows,
        input_bags=aligned.bags,
        coverage=aligned.coverage,
        base_row=aligned.source_index,
        anchors=anchors,
        own_rows=anchors | aligned.outcome_mask("special"),
        head_mode=head_mode,
        donor_rows=config.donor_rows,
        aligned=aligned,
        overlap=overlap,
    )
    if head_mode == "untied":
        head_aligned = _align(base, name, head.weight, target, vocabulary, config.output_pieces)
        layout.head_bags, layout.head_coverage = head_aligned.bags, head_aligned.coverage
    bias = getattr(head, "bias", None) if head is not None else None
    if bias is not None:
        bias_aligned = _align(base, name, bias.unsqueeze(1), target, vocabulary, config.output_pieces)
        layout.bias_bags, layout.bias_coverage = bias_aligned.bags, bias_aligned.coverage
    return layout


def _identity_layout(base: BaseCheckpoint) -> BaseLayout:
    """Plain fusion: the target is the base's own vocabulary, and every base row is its own source-0 row."""
    num_rows = base.num_rows
    rows = torch.arange(num_rows)
    special = torch.zeros(num_rows, dtype=torch.bool)
    special[[i for i in base.tokenizer.all_special_ids if i < num_rows]] = True
    everything = torch.ones(num_rows, dtype=torch.bool)
    return BaseLayout(
        base=base,
        vocabulary=Vocabulary.from_tokenizer(base.tokenizer),
        num_rows=num_rows,
        input_bags=RowBags(rows, rows.clone(), "sum"),
        coverage=everything,
        base_row=rows,
        anchors=~special,
        own_rows=everything,
        head_mode="kept" if base.has_head else None,
        donor_rows="all",
    )


def _align(
    base: BaseCheckpoint,
    name: str,
    weight: torch.Tensor,
    target: Target,
    vocabulary: Vocabulary,
    pieces: str,
    show_progress: bool = False,
) -> AlignedSource:
    """A base table (meta-device shape: only its rows' ids are planned) aligned onto the target rows.

    `pieces` is the piece rule (`mean`, `first`, `last`), or `none`: rows the base has no token for stay uncovered.
    """
    table = SourceTable(name=name, kind="base", weight=weight, tokenizer=base.tokenizer)
    return align_source(
        target.tokenizer,
        table,
        num_rows=len(target.tokenizer),
        decompose=pieces != "none",
        combine="mean" if pieces == "none" else pieces,
        min_coverage=0.0,
        allow_low_coverage=True,
        show_progress=show_progress,
        base_vocabulary=vocabulary,
        build_table=False,
    )
