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
from .recipe import FuseConfig, Recipe, SourceConfig, resolve_path, validate_recipe
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
    config: FuseConfig | dict[str, Any] | list[Any] | None = None,
    *,
    base_tokenizer: PreTrainedTokenizerBase | None = None,
    show_progress: bool = False,
    **older_options: Any,
) -> FuseResult:
    """Build an EmbFuse model in memory from a base model and a `FuseConfig` (for bases that fit in memory;
    `build_to_folder` streams a base of any size into a checkpoint folder instead).

    Args:
        base: the base model's folder, Hub id or `.gguf` file (`pkg:NAME/sub` works), or a loaded model.
        config: the sources, the mixture and an optional target vocabulary (`FuseConfig`, or a mapping of its
            fields). A list is read as the sources of the keyword form of earlier versions.
        base_tokenizer: the base model's tokenizer; loaded from `base` when it is a path.
        show_progress: progress bars while reading and aligning.
        **older_options: the keyword options of earlier versions (`task=`, `tokenizer=`, `transport_k` in a
            source, ...), translated with a `FutureWarning` naming each new field (docs/api.md, "Older recipes").

    Returns:
        A `FuseResult` with the model, the tokenizer and one `SourceReport` per source.

    Example:
        ```python
        from hf_embfuse import OMP, FuseConfig, SourceConfig, VocabularyConfig, fuse

        config = FuseConfig(
            task="causal-lm",
            sources=[SourceConfig(path="donor/", projection=OMP(atoms=10))],
            vocabulary=VocabularyConfig(tokenizer="source:1"),
        )
        result = fuse("base/", config)
        ```
    """
    if isinstance(base, PreTrainedModel):
        pass
    elif isinstance(base, (str, os.PathLike)):
        if isinstance(base, str):
            base = resolve_path(base)  # `pkg:`, `~` and `$VARS`, as in every path of a config
        require_path_or_repo_id(base)  # here, while a `Path` is still known not to be a Hub id
    else:
        raise ValueError(
            f"`base` must be a folder, a Hub id or a transformers model; got {type(base).__name__}."
        )
    if isinstance(config, list) or older_options:
        if isinstance(config, (FuseConfig, dict)):
            raise TypeError(
                f"fuse() got a config and the keyword options {sorted(older_options)}; put them in the config."
            )
        config = {"sources": config or [], **older_options}
    if not isinstance(config, FuseConfig):
        config = validate_recipe(config or {}, what="fuse() arguments", schema=FuseConfig)
    return _fuse_in_memory(base, config, base_tokenizer, show_progress)


def fuse_recipe(
    recipe: Recipe,
    *,
    base_model: PreTrainedModel | None = None,
    base_tokenizer: PreTrainedTokenizerBase | None = None,
    show_progress: bool = False,
) -> FuseResult:
    """`fuse` of a loaded recipe (whose `base` is the base unless `base_model` is given)."""
    return _fuse_in_memory(
        base_model if base_model is not None else recipe.base, recipe, base_tokenizer, show_progress
    )


def _fuse_in_memory(
    base: str | os.PathLike | PreTrainedModel, config: FuseConfig, base_tokenizer: Any, show_progress: bool
) -> FuseResult:
    assembly, result = _build(config, base, base_tokenizer, show_progress)
    result.built = assembly.model()
    return result


def build_to_folder(
    recipe: Recipe, out_dir: str | os.PathLike, *, overwrite: bool = False, show_progress: bool = False
) -> FuseResult:
    """Build from `recipe` (a `Recipe`: a `FuseConfig` with its `base`, or `load_recipe(path)`) and write the
    checkpoint into `out_dir`, all or nothing, streaming the base's body: for bases of any size, memory grows
    with the vocabulary tables, never with the body. The result loads its model from `out_dir` when asked."""
    if not isinstance(recipe, Recipe):
        recipe = validate_recipe(recipe.model_dump() if isinstance(recipe, FuseConfig) else recipe)
    with atomic_output_dir(out_dir, overwrite=overwrite) as staging:
        assembly, result = _build(recipe, recipe.base, None, show_progress)
        config, weights = assembly.write(staging)
        result.write_companions(staging, config, weights)
    result.folder = Path(out_dir)
    return result


def _build(
    config: FuseConfig,
    base_given: str | os.PathLike | PreTrainedModel,
    base_tokenizer: PreTrainedTokenizerBase | None,
    show_progress: bool,
) -> tuple[Assembly, FuseResult]:
    task = task_named(config.task)
    vocabulary = config.vocabulary
    location = base_given.name_or_path if isinstance(base_given, PreTrainedModel) else os.fspath(base_given)
    base_name = base_model_name(
        location or "base", config.base_hub_id
    )  # a Hub id or a folder name, never a path
    base = open_base(base_given, task, tokenizer=base_tokenizer, num_labels=config.num_labels)
    modules = read_sentence_transformers_files(base.location) if base.location else None

    # 1. The target vocabulary (a tokenizer, `source:N`'s, or the base's own with tokens added).
    source_tokenizers, source_names = {}, {}
    if config.target_source is not None:
        chosen = config.sources[config.target_source - 1]
        source_tokenizers[config.target_source] = _read_tokenizer(chosen)
        source_names[config.target_source] = chosen.name or local_name(chosen.path)
    target = resolve_target(
        None if vocabulary is None else vocabulary.tokenizer,
        base.tokenizer,
        [] if vocabulary is None else vocabulary.added_tokens,
        None if vocabulary is None else vocabulary.added_tokens_file,
        source_tokenizers=source_tokenizers,
        source_names=source_names,
    )

    # 2. The base's tables on the target rows.
    layout = lay_base(base, target, vocabulary, name=base_name, show_progress=show_progress)

    # 3. Each source: read, aligned onto the target rows, carried into the base space.
    assembly = Assembly(base, target, layout, config, base_name)
    reports = []
    weights = config.initial_weights()
    for index, source in enumerate(_progress(config.sources, "sources", show_progress)):
        table = _read(source, tokenizer=source_tokenizers.pop(index + 1, None))
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
            aligned.table,
            coverage,
            layout.anchors & aligned.anchor_mask,
            layout.base_input_rows,
            head=layout.rebuilds_head,
            seed=config.seed,
            **source.projection.model_dump(),
        )
        if projection.plan is not None:
            aligned.table = None  # a plan reads the base's rows: the source's own are not needed past here
        assembly.add(DonorTables(aligned, coverage, projection, weights[index + 1], provenance))
        reports.append(SourceReport(name, kind, width, aligned.report, projection.report))
    result = FuseResult(None, target.saved_tokenizer, reports, modules, assembly.transfer_report())
    return assembly, result


def _read_tokenizer(source: SourceConfig) -> Any:
    tokenizer = read_source_tokenizer(
        source.path, kind=source.kind, revision=source.revision, trust_remote_code=source.trust_remote_code
    )
    if tokenizer is None:
        raise TargetError(f"Target tokenizer of source {source.path!r}: it has none (static word vectors?).")
    return tokenizer


def _read(source: SourceConfig, tokenizer: Any = None) -> Any:
    return read_source(
        source.path,
        kind=source.kind,
        revision=source.revision,
        allow_pickle=source.allow_pickle,
        trust_remote_code=source.trust_remote_code,
        vocab_path=source.vocab_path,
        tokenizer=tokenizer,
    )


def _progress(items: list, description: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="source")
