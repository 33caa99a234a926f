"""`fuse` and `build_to_folder`: one straight line over tables.

1. **Resolve the target vocabulary.** It is always explicit: plain fusion is the case where the target is
   the base's own tokenizer and every base row matches itself.
2. **Lay the base's tables on it** (`layout.py`): the input table, the head (tied, untied or rebuilt) and an
   MLM bias, as row plans over the base checkpoint's own tensors, which are the only ones read.
3. **For each source:** read it, align it onto the target rows, project it through `projection.project`
   (identity, linear, transport, omp); a plan applies to the input and head tables alike.
4. **Install and write** (`assembly.py`): every changed table is made chunk by chunk in the base's dtype;
   `fuse` puts them into the model in memory, `build_to_folder` streams them and the body's untouched
   tensors into the output checkpoint, one tensor at a time.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .alignment import AlignmentReport, align_source
from .assembly import Assembly, DonorTables
from .atomic import atomic_output_dir
from .base_checkpoint import open_base
from .layout import lay_base
from .model_names import base_model_name, local_name
from .modeling_embfuse import EmbFusePreTrainedModel
from .projection import project
from .recipe import Recipe, SourceRecipe, validate_recipe
from .sentence_transformers import SentenceTransformerFiles, read_sentence_transformers_files
from .sources import read_source, read_source_tokenizer
from .sources._checkpoint import require_path_or_repo_id
from .transfer.errors import TargetError
from .transfer.target import resolve_target
from .wrap import task_named

logger = logging.getLogger(__name__)

REPORT_FILE = "embfuse_report.json"


@dataclass
class SourceReport:
    """How one source was read, aligned and mapped into the base space."""

    name: str
    kind: str
    width: int
    alignment: AlignmentReport
    projection: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "width": self.width,
            "alignment": self.alignment.to_dict(),
            "projection": self.projection,
        }


@dataclass
class FuseResult:
    """What `fuse` and `build_to_folder` return: the model, its tokenizer, and a report per source.

    `fuse` holds the model in memory. `build_to_folder` never holds it (the body was streamed); `model` then
    loads the written folder on first use, memory-mapped.
    """

    built: EmbFusePreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    reports: list[SourceReport]
    # The base's sentence-transformers modules (pooling, normalize, ...), when it is such a model.
    sentence_transformers: SentenceTransformerFiles | None = None
    # The target vocabulary, when the model got another tokenizer: what was matched, decomposed,
    # transported and left out, per source.
    transfer: dict[str, Any] | None = None
    # The folder `build_to_folder` wrote.
    folder: Path | None = None

    @property
    def model(self) -> EmbFusePreTrainedModel:
        if self.built is None and self.folder is not None:
            from .checkpoint_folder import load_embfuse_folder

            self.built = load_embfuse_folder(self.folder)
        return self.built

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write model, tokenizer, `embfuse_report.json` and the model card (`README.md`) into `folder`;
        for a sentence-transformers base also its modules, so `SentenceTransformer(folder)` pools as it did."""
        if self.model is None:
            raise ValueError(
                "This result was written by build_to_folder and holds no model; load the folder."
            )
        self.model.save_pretrained(folder)
        self.write_companions(
            folder, self.model.config.to_dict(), self.model.get_input_embeddings().mean_mixing_weights()
        )

    def write_companions(
        self, folder: str | os.PathLike, config: dict[str, Any], weights: torch.Tensor
    ) -> None:
        """Everything beside the weights: tokenizer, sentence-transformers modules, report and card."""
        from .model_card import build_model_card

        self.tokenizer.save_pretrained(folder)
        if self.sentence_transformers is not None:
            self.sentence_transformers.write(folder)
        report = {"sources": [r.to_dict() for r in self.reports]}
        if self.transfer is not None:
            report["target"] = self.transfer
        (Path(folder) / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        config = {**config, "mixing_weights": [round(float(w), 4) for w in weights]}
        # The folder tells the card what else it holds (sentence-transformers modules, a plot, eval results).
        build_model_card(config, folder=folder).save(Path(folder) / "README.md")


def fuse(
    base: str | os.PathLike | PreTrainedModel,
    sources: list[str | dict[str, Any] | SourceRecipe],
    *,
    task: str = "base",
    mixing: str = "learned",
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
    base_tokenizer: PreTrainedTokenizerBase | None = None,
    num_labels: int | None = None,
    base_weight: float = 0.5,
    show_progress: bool = False,
    **options: Any,
) -> FuseResult:
    """Build an EmbFuse model in memory from a base model and any number of sources (for bases that fit in
    memory; `build_to_folder` streams a base of any size into a checkpoint folder instead).

    Args:
        base: the base model's folder or Hub id, or a loaded model of the task's class.
        sources: each a path / Hub id, or a mapping with the fields of a recipe source (`path`,
            `projection` = `"transport"` | `"omp"` | `"linear"` | `"identity"`, `weight`, `kind`, `revision`, ...).
        task: `"base"`, `"sequence-classification"`, `"token-classification"`, `"masked-lm"`, `"causal-lm"`.
        mixing: `"fixed"`, `"learned"` or `"gated"`.
        tokenizer: the target vocabulary, when the model is to get another tokenizer: a tokenizer, its folder,
            a Hub id, a `.gguf` file, or `"source:N"` (the tokenizer of source N, 1 = the first). With
            `added_tokens=[...]` (or `added_tokens_file=`) tokens are added to it (to the base's when `None`).
        base_tokenizer: the base model's tokenizer; loaded from `base` when it is a path.
        num_labels: for classification tasks.
        base_weight: initial mixing weight of the base's own table; the sources share the rest.
        show_progress: progress bars while reading and aligning.
        **options: the other recipe fields (`base_hub_id`, `mixing_temperature`, `regularizer`, `reg_lambda`,
            `train_sources`, `train_projections`, `source_dtype`, `seed`; for a target vocabulary
            `added_tokens`, `added_tokens_file`, `min_overlap`, `allow_low_overlap`, `output_head`,
            `input_pieces`, `output_pieces`, `donor_rows`).

    Returns:
        A `FuseResult` with the model, the tokenizer and one `SourceReport` per source.
    """
    if isinstance(base, PreTrainedModel):
        base_model, base_path = base, base.name_or_path or "base"
    elif isinstance(base, (str, os.PathLike)):
        require_path_or_repo_id(base)  # here, while a `Path` is still known not to be a Hub id
        base_model, base_path = None, os.fspath(base)
    else:
        raise ValueError(
            f"`base` must be a folder, a Hub id or a transformers model; got {type(base).__name__}."
        )
    target_object = None
    if isinstance(tokenizer, (str, os.PathLike)):
        options["tokenizer"] = os.fspath(tokenizer)
    else:
        target_object = tokenizer
    arguments = {
        "base": base_path,
        "task": task,
        "num_labels": num_labels,
        "sources": [_as_source_recipe(s) for s in sources],
        "mixing": mixing,
        "base_weight": base_weight,
        **options,
    }
    recipe = validate_recipe(arguments, what="fuse() arguments")
    return fuse_recipe(
        recipe,
        base_model=base_model,
        base_tokenizer=base_tokenizer,
        target_tokenizer=target_object,
        show_progress=show_progress,
    )


def _as_source_recipe(
    source: str | os.PathLike | dict[str, Any] | SourceRecipe,
) -> dict[str, Any] | SourceRecipe:
    """A source as `Recipe` validates it (a bare path is `{"path": ...}`), so errors name `sources.N.key`."""
    if isinstance(source, (str, os.PathLike)):
        return {"path": os.fspath(source)}
    return source


def fuse_recipe(
    recipe: Recipe,
    *,
    base_model: PreTrainedModel | None = None,
    base_tokenizer: PreTrainedTokenizerBase | None = None,
    target_tokenizer: PreTrainedTokenizerBase | None = None,
    show_progress: bool = False,
) -> FuseResult:
    """`fuse` for a validated `Recipe`: the model in memory. `target_tokenizer` overrides `recipe.tokenizer`."""
    assembly, result = _build(recipe, base_model, base_tokenizer, target_tokenizer, show_progress)
    result.built = assembly.model()
    return result


def build_to_folder(
    recipe: Recipe, out_dir: str | os.PathLike, *, overwrite: bool = False, show_progress: bool = False
) -> FuseResult:
    """Build from `recipe` and write the checkpoint into `out_dir`, all or nothing, streaming the base's body
    (any size: memory grows with the vocabulary tables, never with the body). The result holds no model."""
    with atomic_output_dir(out_dir, overwrite=overwrite) as staging:
        assembly, result = _build(recipe, None, None, None, show_progress)
        config, weights = assembly.write(staging)
        result.write_companions(staging, config, weights)
    result.folder = Path(out_dir)
    return result


def _build(
    recipe: Recipe,
    base_model: PreTrainedModel | None,
    base_tokenizer: PreTrainedTokenizerBase | None,
    target_tokenizer: PreTrainedTokenizerBase | None,
    show_progress: bool,
) -> tuple[Assembly, FuseResult]:
    task = task_named(recipe.task)
    base_name = base_model_name(recipe.base, recipe.base_hub_id)  # a Hub id or a folder name, never a path
    base = open_base(
        base_model if base_model is not None else recipe.base,
        task,
        tokenizer=base_tokenizer,
        num_labels=recipe.num_labels,
    )
    modules = read_sentence_transformers_files(base.location) if base.location else None

    # 1. The target vocabulary (a tokenizer, `source:N`'s, or the base's own; tokens added).
    source_tokenizers, source_names = {}, {}
    if target_tokenizer is None and recipe.target_source is not None:
        chosen = recipe.sources[recipe.target_source - 1]
        source_tokenizers[recipe.target_source] = _read_tokenizer(chosen)
        source_names[recipe.target_source] = chosen.name or local_name(chosen.path)
    target = resolve_target(
        target_tokenizer if target_tokenizer is not None else recipe.tokenizer,
        base.tokenizer,
        recipe.added_tokens,
        recipe.added_tokens_file,
        source_tokenizers=source_tokenizers,
        source_names=source_names,
    )

    # 2. The base's tables on the target rows.
    layout = lay_base(base, target, recipe, name=base_name, show_progress=show_progress)

    # 3. Each source: aligned onto the target rows, carried into the base space.
    assembly = Assembly(base, target, layout, recipe, base_name)
    reports = []
    weights = recipe.initial_weights()
    for index, source in enumerate(_progress(recipe.sources, "sources", show_progress)):
        table = _read(source)
        # Names travel with the checkpoint (config, report, card): never this machine's path.
        table.name = source.name or local_name(table.name)
        aligned = align_source(
            target.tokenizer,
            table,
            num_rows=layout.num_rows,
            decompose=source.decompose,
            min_coverage=source.min_coverage,
            allow_low_coverage=source.allow_low_coverage,
            show_progress=show_progress,
            base_vocabulary=layout.vocabulary,
        )
        logger.info("%s", aligned.report)
        provenance = {
            "name": table.name,
            "kind": table.kind,
            "revision": table.revision,
            **({"hub_id": source.hub_id} if source.hub_id else {}),
            "source_width": table.width,
            "alignment": aligned.report.to_dict(),
        }
        name, kind, width = table.name, table.kind, table.width
        del table  # the raw table is not needed past alignment: drop it before the projection's peak
        coverage = layout.donor_coverage(aligned.coverage)
        projection = project(
            source.projection,
            aligned.table,
            coverage,
            layout.anchors & aligned.anchor_mask,
            layout.base_input_rows,
            k=source.transport_k,
            temperature=source.transport_temperature,
            head=layout.rebuilds_head,
            seed=recipe.seed,
        )
        assembly.add(DonorTables(aligned, coverage, projection, weights[index + 1], provenance))
        reports.append(SourceReport(name, kind, width, aligned.report, projection.report))
    result = FuseResult(None, target.saved_tokenizer, reports, modules, assembly.transfer_report())
    return assembly, result


def _read_tokenizer(source: SourceRecipe) -> Any:
    tokenizer = read_source_tokenizer(
        source.path, kind=source.kind, revision=source.revision, trust_remote_code=source.trust_remote_code
    )
    if tokenizer is None:
        raise TargetError(f"Target tokenizer of source {source.path!r}: it has none (static word vectors?).")
    return tokenizer


def _read(source: SourceRecipe) -> Any:
    return read_source(
        source.path,
        kind=source.kind,
        revision=source.revision,
        allow_pickle=source.allow_pickle,
        trust_remote_code=source.trust_remote_code,
        vocab_path=source.vocab_path,
    )


def _progress(items: list, description: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="source")
