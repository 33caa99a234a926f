"""Wrap a base model and already-aligned source tables into an EmbFuse model (build time, never shipped)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from .configuration_embfuse import EmbFuseConfig
from .modeling_embfuse import (
    TASKS,
    EmbFusePreTrainedModel,
    EmbFuseTask,
    Mixer,
    MultiSourceEmbedding,
    SourceProjection,
)


@dataclass
class SourceSpec:
    """One source table, already aligned to the base vocabulary, for `from_base`.

    Args:
        table: `(V_base, d_i)` rows indexed by *base* token id.
        coverage: `(V_base,)` bool, which rows this source has; all rows when `None`.
        projection: the map applied at run time: `"identity"` (needs `d_i` equal to the base width),
            `"linear"`, or `"auto"` (identity at equal width unless an initial map is given, else linear).
        projection_weight: initial `(d_base, d_i)` map into the base space (identity-like when `None`).
        projection_bias: initial `(d_base,)` bias (zero when `None`).
        initialization: how the table and map were made (`"identity"`, `"linear"`, `"transport"`); by default
            `"linear"` when a fitted map is given, else `"identity"`.
        info: provenance kept in the config (`name`, `kind`, `revision`, `alignment`, ...).
    """

    table: torch.Tensor
    coverage: torch.Tensor | None = None
    projection: str = "auto"
    projection_weight: torch.Tensor | None = None
    projection_bias: torch.Tensor | None = None
    initialization: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def task_for_model(model: PreTrainedModel) -> EmbFuseTask:
    """The task whose Auto class builds `model`'s class (`BertForSequenceClassification` -> sequence-classification)."""
    for task in TASKS:
        try:
            mapped = task.auto_class._model_mapping[type(model.config)]
        except KeyError:
            continue
        classes = mapped if isinstance(mapped, (list, tuple)) else (mapped,)
        if type(model) in classes:
            return task
    raise ValueError(
        f"{type(model).__name__} is not the class any EmbFuse task wraps ("
        + ", ".join(f"{task.name}: {task.auto_class.__name__}" for task in TASKS)
        + "). Load the base with one of those Auto classes."
    )


def task_named(name: str) -> EmbFuseTask:
    """The task called `name` in recipes and `fuse(task=...)`."""
    for task in TASKS:
        if task.name == name:
            return task
    raise ValueError(f"Unknown task {name!r}; expected one of {', '.join(task.name for task in TASKS)}.")


def wrapper_class(task: EmbFuseTask) -> type[EmbFusePreTrainedModel]:
    """This package's wrapper class of a task."""
    from . import modeling_embfuse

    return getattr(modeling_embfuse, task.wrapper)


def from_base(
    base_model_or_path: PreTrainedModel | str | os.PathLike,
    sources: list[SourceSpec] | tuple[SourceSpec, ...] = (),
    *,
    task: str | None = None,
    mixing: str = "learned",
    base_model_kwargs: dict[str, Any] | None = None,
    base_coverage: torch.Tensor | None = None,
    base_info: dict[str, Any] | None = None,
    **config_kwargs: Any,
) -> EmbFusePreTrainedModel:
    """Wrap a base model (or load it from `base_model_or_path`) and mix in already-aligned `sources`.

    The base model's own table becomes source 0 (identity map); `sources` follow in order. A model passed in
    is wrapped in place (its modules are reused, not copied).

    Args:
        base_model_or_path: a loaded model of the task's class, or its folder / Hub id.
        sources: the aligned tables.
        task: `"base"`, `"sequence-classification"`, ... ; by default the task of the given model's class
            (`"base"` for a path).
        mixing: `"fixed"`, `"learned"` or `"gated"`.
        base_model_kwargs: passed to the Auto class's `from_pretrained` when loading from a path.
        base_coverage: `(V,)` bool, the rows the base's own table has (all when `None`); a vocabulary transfer
            masks the rows the base lacks, so the mixture takes them from the sources.
        base_info: provenance kept in the config's entry for the base (e.g. its alignment onto a target).
        **config_kwargs: go to `EmbFuseConfig` (`fixed_weights`, `mixing_temperature`, `regularizer`,
            `reg_lambda`, ...).
    """
    base = base_model_or_path
    if isinstance(base, (str, os.PathLike)):
        from .sources._checkpoint import require_path_or_repo_id  # here: `import hf_embfuse` stays light

        require_path_or_repo_id(base)
        chosen = task_named(task or "base")
        base = chosen.auto_class.from_pretrained(os.fspath(base), **(base_model_kwargs or {}))
    if not isinstance(base, PreTrainedModel):
        raise ValueError(
            f"`base_model_or_path` must be a transformers model, a folder or a Hub id; got {type(base).__name__}."
        )
    chosen = task_named(task) if task is not None else task_for_model(base)
    old = base.get_input_embeddings()
    num_rows, width = old.weight.shape
    sources = list(sources)
    entries = [
        {
            "name": base.name_or_path or type(base).__name__,
            "kind": "base",
            "width": int(width),
            "projection": "identity",
            "initialization": "identity",
            **(base_info or {}),
        }
    ]
    if base_coverage is not None and tuple(base_coverage.shape) != (num_rows,):
        raise ValueError(f"`base_coverage` must have shape ({num_rows},), got {tuple(base_coverage.shape)}.")
    for index, spec in enumerate(sources, start=1):
        _validate_source(index, spec, num_rows, width)
        projection = spec.projection
        if projection == "auto":
            same_width = spec.table.shape[1] == width
            projection = "identity" if same_width and spec.projection_weight is None else "linear"
        initialization = spec.initialization or (
            "linear" if spec.projection_weight is not None else "identity"
        )
        entries.append(
            {
                **spec.info,
                "width": int(spec.table.shape[1]),
                "projection": projection,
                "initialization": initialization,
            }
        )
    config_kwargs.setdefault("embed_scale", float(getattr(old, "embed_scale", 1.0)))
    config_kwargs.setdefault("base_model_name_or_path", base.name_or_path or None)
    config = EmbFuseConfig(base_config=base.config, sources=entries, mixing=mixing, **config_kwargs)
    config.architectures = [chosen.wrapper]
    # Everything is given (pretrained base, aligned sources): initialisation must not touch it.
    for module in base.modules():
        module._is_hf_initialized = True
    # A skeleton on the meta device (a streamed build) gets a wrapper there too: no table is allocated.
    with torch.device("meta") if old.weight.is_meta else contextlib.nullcontext():
        model = wrapper_class(chosen)(config, base_model=base)
    _load_sources(model.get_input_embeddings(), config, sources, base_coverage)
    return model.to(old.weight.device)


def _validate_source(index: int, spec: SourceSpec, num_rows: int, width: int) -> None:
    name = spec.info.get("name", f"source {index}")
    table = spec.table
    if not isinstance(table, torch.Tensor) or table.ndim != 2:
        raise ValueError(f"Source {index} ({name!r}): `table` must be a 2-D tensor (V_base, d).")
    if table.shape[0] != num_rows:
        raise ValueError(
            f"Source {index} ({name!r}) has {table.shape[0]} rows but the base embedding has {num_rows}. Align it "
            "to the base vocabulary first (`hf_embfuse.align_source` or `hf_embfuse.fuse`)."
        )
    bad_rows = (
        torch.zeros(0, dtype=torch.bool) if table.is_meta else (~torch.isfinite(table.float())).any(dim=1)
    )
    if bad_rows.any():
        raise ValueError(
            f"Source {index} ({name!r}) has {int(bad_rows.sum())} rows with NaN/Inf (first: row "
            f"{int(bad_rows.nonzero()[0])}). Fix the table, or mark those rows uncovered and zero them."
        )
    if spec.coverage is not None and tuple(spec.coverage.shape) != (num_rows,):
        raise ValueError(f"Source {index} ({name!r}): `coverage` must have shape ({num_rows},).")
    if spec.projection not in ("auto", "identity", "linear"):
        raise ValueError(f"Source {index} ({name!r}): `projection` must be 'auto', 'identity' or 'linear'.")
    if spec.projection == "identity" and table.shape[1] != width:
        raise ValueError(
            f"Source {index} ({name!r}) has width {table.shape[1]} but the base has {width}, and its projection is "
            "'identity'. Use projection='linear' (or 'auto') to map it into the base space."
        )
    if spec.projection_weight is not None and tuple(spec.projection_weight.shape) != (width, table.shape[1]):
        raise ValueError(
            f"Source {index} ({name!r}): `projection_weight` must have shape ({width}, {table.shape[1]})."
        )


def embedding_state(
    config: EmbFuseConfig,
    sources: list[SourceSpec],
    base_coverage: torch.Tensor | None,
    num_rows: int,
    width: int,
    padding_idx: int | None,
) -> dict[str, torch.Tensor]:
    """The embedding's tensors other than the tables (coverage, mixer, projections), by their key in the module.

    One home for them, whether they are loaded into a model in memory or written straight into a checkpoint.
    """
    coverage = torch.ones(num_rows, 1 + len(sources), dtype=torch.bool)
    if base_coverage is not None:
        coverage[:, 0] = base_coverage.to(torch.bool)
    state: dict[str, torch.Tensor] = {}
    for index, spec in enumerate(sources, start=1):
        if spec.coverage is not None:
            coverage[:, index] = spec.coverage.to(torch.bool)
        if config.sources[index]["projection"] == "linear":
            projection = SourceProjection(spec.table.shape[1], width)
            projection.reset_to_identity()
            with torch.no_grad():
                if spec.projection_weight is not None:
                    projection.weight.copy_(spec.projection_weight)
                if spec.projection_bias is not None:
                    projection.bias.copy_(spec.projection_bias)
            state[f"projections.{index - 1}.weight"] = projection.weight.detach()
            state[f"projections.{index - 1}.bias"] = projection.bias.detach()
    if padding_idx is not None:
        # The padding row stays the base's (usually zero, gradient-free) row.
        coverage[padding_idx, 1:] = False
    state["coverage"] = coverage
    mixer = Mixer(config, width)
    state.update({f"mixer.{key}": value.detach() for key, value in mixer.state_dict().items()})
    return state


@torch.no_grad()
def _load_sources(
    embedding: MultiSourceEmbedding,
    config: EmbFuseConfig,
    sources: list[SourceSpec],
    base_coverage: torch.Tensor | None = None,
) -> None:
    device = embedding.weight.device
    if device.type == "meta":
        return  # a skeleton: its values are written into the checkpoint, not held
    for index, spec in enumerate(sources, start=1):
        table = embedding.source_tables[index - 1]
        table.data = spec.table.detach().to(device=device, dtype=table.dtype, copy=True)
    state = embedding_state(
        config,
        sources,
        base_coverage,
        embedding.num_embeddings,
        embedding.embedding_dim,
        embedding.padding_idx,
    )
    # The mixer is already what its config makes; the rest is loaded.
    embedding.load_state_dict({k: v for k, v in state.items() if not k.startswith("mixer.")}, strict=False)


__all__ = ["SourceSpec", "embedding_state", "from_base", "task_for_model", "task_named", "wrapper_class"]
