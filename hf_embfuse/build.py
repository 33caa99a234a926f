"""`fuse`: read sources, align them to the base vocabulary, map them into the base space, wrap the base."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .alignment import AlignedSource, AlignmentReport, Vocabulary, align_source
from .atomic import atomic_output_dir
from .model_names import base_model_name, local_name
from .modeling_embfuse import EmbFusePreTrainedModel
from .projection import anchor_mask, fit_linear_map, transport_plan
from .recipe import Recipe, SourceRecipe, validate_recipe
from .sentence_transformers import SentenceTransformerFiles, read_sentence_transformers_files
from .sources import read_source
from .sources._checkpoint import require_path_or_repo_id
from .sources.gguf_model import is_gguf_file, load_gguf_base
from .sources.table import SourceTable
from .transfer.build_steps import TargetBuild
from .transfer.sparse_coding import codes_over_all_anchors, sparse_coding_plan
from .wrap import SourceSpec, from_base, task_named

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
    """What `fuse` returns: the ready model, the base tokenizer (unchanged) and a report per source."""

    model: EmbFusePreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    reports: list[SourceReport]
    # The base's sentence-transformers modules (pooling, normalize, ...), when it is such a model.
    sentence_transformers: SentenceTransformerFiles | None = None
    # The target vocabulary, when the model got another tokenizer (`fuse(tokenizer=...)`): what was
    # matched, decomposed, transported and left out, per source.
    transfer: dict[str, Any] | None = None

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write model, tokenizer, `embfuse_report.json` and the model card (`README.md`) into `folder`;
        for a sentence-transformers base also its modules, so `SentenceTransformer(folder)` pools as it did."""
        from .model_card import build_model_card

        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        if self.sentence_transformers is not None:
            self.sentence_transformers.write(folder)
        report = {"sources": [r.to_dict() for r in self.reports]}
        if self.transfer is not None:
            report["target"] = self.transfer
        (Path(folder) / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        weights = self.model.get_input_embeddings().mean_mixing_weights()
        config = {**self.model.config.to_dict(), "mixing_weights": [round(float(w), 4) for w in weights]}
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
    """Build an EmbFuse model from a base model and any number of sources.

    Args:
        base: the base model's folder or Hub id, or a loaded model of the task's class.
        sources: each a path / Hub id, or a mapping with the fields of a recipe source (`path`,
            `projection` = `"transport"` | `"linear"` | `"identity"`, `weight`, `kind`, `revision`, ...).
        task: `"base"`, `"sequence-classification"`, `"token-classification"`, `"masked-lm"`, `"causal-lm"`.
        mixing: `"fixed"`, `"learned"` or `"gated"`.
        tokenizer: the target vocabulary, when the model is to get another tokenizer: a tokenizer, its folder,
            a Hub id, a `.gguf` file, or `"source:N"` (the tokenizer of source N, 1 = the first). With
            `added_tokens=[...]` (or `added_tokens_file=`) tokens are added to it (to the base's when `None`).
            The saved folder then carries it, and the model's vocabulary is its own.
        base_tokenizer: the base model's tokenizer; loaded from `base` when it is a path.
        num_labels: for classification tasks.
        base_weight: initial mixing weight of the base's own table; the sources share the rest.
        show_progress: progress bars while reading and aligning.
        **options: the other recipe fields (`mixing_temperature`, `regularizer`, `reg_lambda`,
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
    """`fuse` for a validated `Recipe` (what `hf-embfuse build` runs); `target_tokenizer` overrides `recipe.tokenizer`."""
    torch.manual_seed(recipe.seed)
    task = task_named(recipe.task)
    if base_model is None:
        require_path_or_repo_id(recipe.base)  # the sources' message, not a Hub id validation error
    # A model passed in is read for its modules from where it was loaded, if anywhere.
    base_location = recipe.base if base_model is None else base_model.name_or_path
    tokenizer = base_tokenizer
    kwargs = {"num_labels": recipe.num_labels} if recipe.num_labels else {}
    if base_model is None and is_gguf_file(recipe.base):
        # A GGUF base: dequantised once, then loaded from a plain cached folder.
        base_model, gguf_tokenizer = load_gguf_base(recipe.base, task.auto_class, **kwargs)
        tokenizer = tokenizer or gguf_tokenizer
    if tokenizer is None:
        tokenizer = _without_remote_code(AutoTokenizer.from_pretrained, recipe.base)
    if base_model is None:
        base_model = _without_remote_code(task.auto_class.from_pretrained, recipe.base, **kwargs)
    modules = read_sentence_transformers_files(base_location) if base_location else None
    transfer, rows_tokenizer = None, tokenizer
    if recipe.transfers_vocabulary or target_tokenizer is not None:
        # The rows are the target's: the base's own table is aligned onto them as source 0.
        transfer = TargetBuild.start(
            recipe,
            base_model,
            tokenizer,
            target_tokenizer,
            lambda i: _read(recipe.sources[i]),
            show_progress,
            base_model_name(recipe.base, recipe.base_hub_id),
        )
        rows_tokenizer, base_vocabulary = transfer.target.tokenizer, transfer.base.vocabulary
        base_table, special = transfer.base.table, transfer.base.special
        num_rows = transfer.base.num_rows
    else:
        base_table = base_model.get_input_embeddings().weight.detach().float()
        num_rows = base_table.shape[0]
        special = torch.zeros(num_rows, dtype=torch.bool)
        special[[i for i in tokenizer.all_special_ids if i < num_rows]] = True
        base_vocabulary = Vocabulary.from_tokenizer(tokenizer)  # read once, used for every source

    specs, reports = [], []
    weights = recipe.initial_weights()
    for index, source in enumerate(_progress(recipe.sources, "reading and aligning sources", show_progress)):
        table = transfer.pre_read.pop(index) if transfer and index in transfer.pre_read else _read(source)
        # Names travel with the checkpoint (config, report, card): never this machine's path.
        table.name = source.name or local_name(table.name)
        aligned = align_source(
            rows_tokenizer,
            table,
            num_rows=num_rows,
            decompose=source.decompose,
            min_coverage=source.min_coverage,
            allow_low_coverage=source.allow_low_coverage,
            show_progress=show_progress,
            base_vocabulary=base_vocabulary,
        )
        read = _Provenance(table.name, table.kind, table.revision, table.width)
        # The raw table and the source tokenizer are not needed past alignment, and for a large vocabulary
        # they are most of the memory (Gemma: 671 MB + ~320 MB): drop them before the projection's own peak.
        del table
        source_anchors = None if transfer is None else transfer.anchors_for(aligned)
        output_table = None if transfer is None else transfer.output_table
        coverage = (
            aligned.coverage
            if transfer is None
            else transfer.donor_coverage(aligned.coverage, recipe.donor_rows)
        )
        spec, projection_report, output_rows = _project(
            source, read, aligned, coverage, base_table, special, recipe.seed, source_anchors, output_table
        )
        if transfer is not None:
            transported = projection_report.get("rows") if source.projection in ("transport", "omp") else None
            transfer.add_donor(read.name, spec, aligned, weights[index + 1], output_rows, transported)
        specs.append(spec)
        reports.append(SourceReport(read.name, read.kind, read.width, aligned.report, projection_report))
        logger.info("%s", aligned.report)

    base_name = base_model_name(recipe.base, recipe.base_hub_id)  # a Hub id or a folder name, not a path
    base_model.name_or_path = base_model.config.name_or_path = base_name
    base_coverage, base_info = None, None
    if transfer is not None:
        base_coverage = transfer.install(base_model, weights[0])
        base_info = {"target": transfer.target.to_dict(), "alignment": transfer.base.aligned.report.to_dict()}
        tokenizer = transfer.target.tokenizer
    model = from_base(
        base_model,
        specs,
        task=task.name,
        mixing=recipe.mixing,
        fixed_weights=recipe.initial_weights(),
        mixing_temperature=recipe.mixing_temperature,
        regularizer=recipe.regularizer,
        reg_lambda=recipe.reg_lambda,
        train_sources=recipe.train_sources,
        train_projections=recipe.train_projections,
        source_dtype=recipe.source_dtype,
        base_model_name_or_path=base_name,
        base_coverage=base_coverage,
        base_info=base_info,
    )
    return FuseResult(model, tokenizer, reports, modules, None if transfer is None else transfer.report())


def _read(source: SourceRecipe) -> SourceTable:
    return read_source(
        source.path,
        kind=source.kind,
        revision=source.revision,
        allow_pickle=source.allow_pickle,
        trust_remote_code=source.trust_remote_code,
        vocab_path=source.vocab_path,
    )


def _without_remote_code(load: Any, base: str, **kwargs: Any) -> Any:
    """Load the base's tokenizer or model with an explicit `trust_remote_code=False`: never run its code, and
    never stop to ask (transformers prompts on a terminal when the argument is left unset)."""
    try:
        return load(base, trust_remote_code=False, **kwargs)
    except OSError as error:
        if Path(base).expanduser().exists():
            raise
        # Not a local path: transformers tried it as a Hub id (offline, not cached, or no such repo).
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"No such file or folder: {base!r}, and no Hub repo of that id could be loaded ({reason})"
        ) from None
    except ValueError as error:
        if "trust_remote_code" not in str(error) and "custom code" not in str(error):
            raise
        raise ValueError(
            f"The base model {base!r} needs its own Python code (auto_map in its config or tokenizer config), which "
            "hf-embfuse does not run: a fused checkpoint wraps a standard transformers architecture. Use a base "
            "model that transformers supports without trust_remote_code."
        ) from None


class _Provenance(NamedTuple):
    """What the projection and the report keep of a read source."""

    name: str
    kind: str
    revision: str | None
    width: int


def _project(
    source: SourceRecipe,
    table: _Provenance,
    aligned: AlignedSource,
    coverage: torch.Tensor,
    base_table: torch.Tensor,
    special: torch.Tensor,
    seed: int,
    anchors: torch.Tensor | None = None,
    output_table: torch.Tensor | None = None,
) -> tuple[SourceSpec, dict[str, Any], torch.Tensor | None]:
    """Map the aligned rows the source is to cover (`coverage`) into the base space as the recipe asks.

    Returns the spec, what was measured, and (when `output_table` is given: the base's LM head on the same
    rows) the rows carried into the base's output space by the same transport, else `None`.
    """
    # Anchors: rows matched to one source row by their text. Decomposed rows are averages of pieces
    # (poor anchors: measured 0.48 vs 0.56 held-out cosine for SmolLM2) and specials carry roles. On a
    # target vocabulary they must be base rows matched one to one as well (`anchors`).
    anchors = anchor_mask(aligned.anchor_mask if anchors is None else anchors, exclude=special)
    info = {
        "name": table.name,
        "kind": table.kind,
        "revision": table.revision,
        **({"hub_id": source.hub_id} if source.hub_id else {}),
        "source_width": table.width,
        "alignment": aligned.report.to_dict(),
    }
    if source.projection == "identity":
        spec = SourceSpec(
            aligned.table, coverage, projection="identity", initialization="identity", info=info
        )
        return spec, {"method": "identity"}, None
    if source.projection == "linear":
        linear = fit_linear_map(aligned.table, base_table, anchors, seed=seed)
        fit = {"method": linear.method, "anchors": linear.n_anchors, "heldout_cosine": linear.heldout_cosine}
        info["projection_fit"] = fit
        spec = SourceSpec(
            aligned.table,
            coverage,
            projection="linear",
            projection_weight=linear.weight,
            projection_bias=linear.bias,
            initialization="linear",
            info=info,
        )
        return spec, fit, None
    if source.projection == "omp":
        plan = sparse_coding_plan(aligned.table, coverage, anchors, k=source.transport_k, search="auto")
        report = {"method": "omp", "k": source.transport_k}
    else:
        plan = transport_plan(
            aligned.table,
            coverage,
            anchors,
            k=source.transport_k,
            temperature=source.transport_temperature,
            search="auto",
        )
        report = {"method": "transport", "k": source.transport_k, "temperature": source.transport_temperature}
    transported = plan.apply(base_table)
    output_plan = plan
    if (
        output_table is not None
        and source.projection == "omp"
        and codes_over_all_anchors(aligned.table.shape[0], coverage, anchors)
    ):
        # The head's rows coded over every anchor where that is affordable (see transfer/sparse_coding.py);
        # elsewhere the head reuses the input rows' plan.
        output_plan = sparse_coding_plan(
            aligned.table, coverage, anchors, k=source.transport_k, candidates="all"
        )
    output_rows = None if output_table is None else output_plan.apply(output_table)
    report.update(rows=plan.stats.n_rows, anchors=plan.stats.n_anchors, search=plan.stats.search)
    if plan.stats.recall is not None:
        report["search_recall"] = round(plan.stats.recall, 4)
    # For comparison only: how far a linear map gets, fitted on a sample of anchors to stay cheap.
    report["linear_heldout_cosine"] = _linear_comparison(aligned.table, base_table, anchors, seed)
    info["projection_fit"] = report
    spec = SourceSpec(transported, coverage, projection="identity", initialization="transport", info=info)
    return spec, report, output_rows


def _linear_comparison(
    table: torch.Tensor, base_table: torch.Tensor, anchors: torch.Tensor, seed: int, sample: int = 5000
) -> float | None:
    rows = anchors.nonzero().squeeze(1)
    if len(rows) < 20:
        return None  # too few anchors to hold any out; transport itself needs only one
    if len(rows) > sample:
        generator = torch.Generator().manual_seed(seed)
        rows = rows[torch.randperm(len(rows), generator=generator)[:sample]].sort().values
    return fit_linear_map(table, base_table, rows, seed=seed).heldout_cosine


def build_to_folder(
    recipe: Recipe, out_dir: str | os.PathLike, *, overwrite: bool = False, show_progress: bool = False
) -> FuseResult:
    """Build from `recipe` and write model, tokenizer and report into `out_dir`, all or nothing."""
    with atomic_output_dir(out_dir, overwrite=overwrite) as staging:
        result = fuse_recipe(recipe, show_progress=show_progress)
        result.save_pretrained(staging)
    return result


def _progress(items: list, description: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="source")
