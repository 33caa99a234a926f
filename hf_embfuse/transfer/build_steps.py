"""The steps `fuse` takes when the model gets a target vocabulary (see `hf_embfuse.build.fuse_recipe`).

1. `TargetBuild.start`: resolve the target tokenizer (reading the source it belongs to, for `source:N`),
   align the base's input table onto it (source 0) and check the overlap; align the base's output
   table too when the head is to be rebuilt.
2. For each source, `fuse_recipe` aligns it onto the target rows and carries it into the base space
   through `anchors`; `add_donor` keeps what the fill and the head need.
3. `install`: write the target-vocabulary tables into the base model (input table, head, bias, ids).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..alignment import AlignedSource
from ..model_names import local_name
from ..recipe import Recipe
from ..sources.table import SourceTable
from .base_side import BaseOnTarget, align_base, align_onto_target, base_source_table
from .install import Donor, install_target_vocabulary
from .report import format_rows, row_counts
from .target import Target, resolve_target

logger = logging.getLogger(__name__)

# Whether a tied base head stays tied on a new vocabulary when the recipe says `output_head: auto`. Tied,
# the head is source 0 alone (the base's copied and piece-averaged rows); untied, it is rebuilt as the
# build-time mixture, which for a tied base is the fused input table. Measured zero-shot on SmolLM2-135M
# with Gemma-3's tokenizer (60 held-out OANC lines, bits per byte / SmolLM2's own 1.553): tied 1.235x,
# untied (mixture, mean of pieces) 1.141x, untied (first piece) 1.211x, untied (Gemma rows alone) 1.176x.
TIE_BY_DEFAULT = False


@dataclass
class TargetBuild:
    """The state of one build onto a target vocabulary."""

    target: Target
    base: BaseOnTarget
    untie: bool
    output_aligned: AlignedSource | None = None
    bias_aligned: AlignedSource | None = None
    pre_read: dict[int, SourceTable] = field(default_factory=dict)
    donors: list[Donor] = field(default_factory=list)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    head: str | None = None  # "tied" / "untied" once installed; None for a model without an LM head

    @classmethod
    def start(
        cls,
        recipe: Recipe,
        base_model: Any,
        base_tokenizer: Any,
        target_tokenizer: Any,
        read: Callable[[int], SourceTable],
        show_progress: bool = False,
        base_name: str = "base",
    ) -> TargetBuild:
        """Resolve the target and lay the base's own tables on it.

        Args:
            recipe: the build recipe (`tokenizer`, `added_tokens`, piece rules, overlap, head).
            base_model: the loaded base model.
            base_tokenizer: its tokenizer.
            target_tokenizer: a tokenizer object given to `fuse(tokenizer=...)`, else `None`.
            read: reads source `i` (0-based) of the recipe; used for `tokenizer: source:N`.
            show_progress: progress bars while decomposing.
            base_name: how reports name the base (a Hub id or folder name, never a local path).
        """
        pre_read = {}
        if target_tokenizer is None and recipe.target_source is not None:
            index = recipe.target_source - 1
            pre_read[index] = read(index)  # kept for its turn in the source loop: read once
        source_tokenizers = {i + 1: table.tokenizer for i, table in pre_read.items()}
        target = resolve_target(
            target_tokenizer if target_tokenizer is not None else recipe.tokenizer,
            base_tokenizer,
            recipe.added_tokens,
            recipe.added_tokens_file,
            source_tokenizers=source_tokenizers,
            source_names={
                i + 1: recipe.sources[i].name or local_name(table.name) for i, table in pre_read.items()
            },
        )
        base = align_base(
            base_model,
            base_tokenizer,
            target.tokenizer,
            pieces=recipe.input_pieces,
            min_overlap=recipe.min_overlap,
            allow_low_overlap=recipe.allow_low_overlap,
            show_progress=show_progress,
            name=base_name,
        )
        head = base_model.get_output_embeddings()
        untie = head is not None and base.tied and _untie(recipe.output_head)
        build = cls(target, base, untie, pre_read=pre_read)
        name = base.aligned.name
        if head is not None and (untie or not base.tied):
            build.output_aligned = align_onto_target(
                base_source_table(name, head.weight, base_tokenizer),
                target.tokenizer,
                base.vocabulary,
                recipe.output_pieces,
            )
        bias = getattr(head, "bias", None) if head is not None else None
        if bias is not None:
            build.bias_aligned = align_onto_target(
                base_source_table(name, bias.detach().float().unsqueeze(1), base_tokenizer),
                target.tokenizer,
                base.vocabulary,
                recipe.output_pieces,
            )
        build.rows["base"] = row_counts(base.aligned)
        return build

    @property
    def output_table(self) -> torch.Tensor | None:
        """The base's output table on the target rows, when the head is rebuilt (its anchor rows are exact)."""
        return None if self.output_aligned is None else self.output_aligned.table

    def anchors_for(self, aligned: AlignedSource) -> torch.Tensor:
        """Rows both the base and this source match one to one: where a donor's rows meet base vectors."""
        return self.base.anchors & aligned.anchor_mask

    def donor_coverage(self, coverage: torch.Tensor, donor_rows: str) -> torch.Tensor:
        """The rows a donor covers on the target: with `donor_rows="new"`, none that the base has one to one.

        A donor reaches the base space through the anchors, so on an anchor its row is at best the base's own
        vector blurred by its neighbours'; mixing it in there only moves rows the body already reads well.
        """
        return coverage if donor_rows == "all" else coverage & ~self.base.own_rows

    def add_donor(
        self,
        name: str,
        spec: Any,
        aligned: AlignedSource,
        weight: float,
        output_rows: torch.Tensor | None,
        transported: int | None,
    ) -> None:
        """Keep a source's rows in the base space (projection applied) for the fill and the head."""
        table = spec.table.float()
        if spec.projection_weight is not None:
            bias = spec.projection_bias if spec.projection_bias is not None else 0.0
            table = table @ spec.projection_weight.T.float() + bias
        coverage = (
            spec.coverage if spec.coverage is not None else torch.ones(table.shape[0], dtype=torch.bool)
        )
        self.donors.append(Donor(table, coverage, weight, output_rows))
        self.rows[name] = row_counts(aligned, transported)

    @torch.no_grad()
    def install(self, base_model: Any, base_weight: float) -> torch.Tensor:
        """Put the target-vocabulary tables into `base_model`; return source 0's coverage for `from_base`."""
        done = install_target_vocabulary(
            base_model,
            self.target.tokenizer,
            self.base.aligned,
            base_weight,
            self.donors,
            untie=self.untie,
            output_aligned=self.output_aligned,
            bias_aligned=self.bias_aligned,
        )
        self.rows["base"].update(
            filled_from_donors=done["filled_from_donors"], mean_initialised=done["mean_initialised"]
        )
        self.head = done["head"]
        self.donors = []  # their tables are in the specs and the model now
        for name, rows in self.rows.items():
            logger.info("%s", format_rows(name, rows))
        return done["coverage"]

    def report(self) -> dict[str, Any]:
        """JSON-safe: the target, the overlap, the head, and per source what was matched, decomposed, transported, left out."""
        return {
            **self.target.to_dict(),
            "overlap": round(self.base.overlap, 6),
            "anchors": int(self.base.anchors.sum()),
            "head": self.head,
            "base_alignment": self.base.aligned.report.to_dict(),
            "rows": self.rows,
        }


def _untie(output_head: str) -> bool:
    if output_head == "auto":
        return not TIE_BY_DEFAULT
    return output_head == "untied"
