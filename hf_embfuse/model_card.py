"""The model card (README.md) of a fused checkpoint: Hub metadata plus sources, mixing and evaluation tables."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .model_names import first_hub_id, local_name
from .modeling_embfuse import EmbFuseTask, task_of
from .sentence_transformers import MODULES_FILE

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
# `hf-embfuse eval DIR --out DIR/embfuse_eval.json` leaves its results here for the card.
EVAL_FILE = "embfuse_eval.json"


def build_model_card(
    config_dict: dict[str, Any],
    *,
    folder: str | os.PathLike | None = None,
    repo_id: str | None = None,
    eval_results: dict[str, Any] | None = None,
    weights_plot: str | None = None,
    base_model_id: str | None = None,
    sentence_transformers: bool | None = None,
) -> ModelCard:
    """Build the model card of a fused checkpoint from its config.

    Args:
        config_dict (`dict`):
            The EmbFuse config as a dict (`config.to_dict()`); missing optional fields are left out of the card.
        folder (`str` or `os.PathLike`, *optional*):
            The checkpoint folder the card describes: its `embfuse_eval.json` (from `hf-embfuse eval --out`),
            `mixing_weights.png` (from training) and `modules.json` (a sentence-transformers model) are used when
            the arguments below do not say otherwise.
        repo_id (`str`, *optional*):
            Where the model is published; used in the title and the loading snippet.
        eval_results (`dict`, *optional*):
            Results to show as a table: the JSON `hf-embfuse eval --out` writes (`ComparisonTable.to_dict()`; the
            fused table's row also goes into the `model-index` metadata), or `{row: {column: value}}`, or
            `{metric: value}`.
        weights_plot (`str`, *optional*):
            Path (relative to the checkpoint) or URL of an image of the mixing weights.
        base_model_id (`str`, *optional*):
            Hub id of the base model, when the config does not name one.
        sentence_transformers (`bool`, *optional*):
            Whether the checkpoint is also a sentence-transformers model (its modules beside it): the card then
            says `library_name: sentence-transformers`, `pipeline_tag: sentence-similarity` and shows how to load
            it with `SentenceTransformer`. By default: whether `folder` holds `modules.json`.

    The base and the sources are named by their Hub id when one is known (a source's `hub_id` or `repo_id`, the
    base's `base_model_name_or_path`, else its config's `_name_or_path`), else by their folder or file name: a card
    never shows a local path, nor the id a local base folder's config carried from another model.

    Returns:
        `huggingface_hub.ModelCard`: save it with `card.save(folder / "README.md")`.
    """
    if not isinstance(config_dict, Mapping):
        raise TypeError(
            f"`config_dict` must be a dict (pass `config.to_dict()`), got {type(config_dict).__name__}."
        )
    if folder is not None:
        from .training.callback import PLOT_FILE  # what training writes beside the checkpoint

        if eval_results is None and (Path(folder) / EVAL_FILE).is_file():
            eval_results = read_eval_results(Path(folder) / EVAL_FILE)
        weights_plot = weights_plot or (PLOT_FILE if (Path(folder) / PLOT_FILE).is_file() else None)
        if sentence_transformers is None:
            sentence_transformers = (Path(folder) / MODULES_FILE).is_file()
    sources = [dict(source) for source in config_dict.get("sources") or []]
    base_config = config_dict.get("base_config") or {}
    # The build's name for the base (the model the user gave) wins over the nested config's `_name_or_path`,
    # which may be a stale id a local folder carried.
    base_refs = (
        base_model_id,
        config_dict.get("base_model_name_or_path") or base_config.get("_name_or_path"),
    )
    base_hub_id = first_hub_id(*base_refs)
    base_name = base_hub_id or next(
        (local_name(ref) for ref in base_refs if isinstance(ref, str) and ref), None
    )
    names = [_Name(base_name, base_hub_id), *(_source_name(s, i) for i, s in enumerate(sources[1:], 1))]

    hub_ids = list(dict.fromkeys(name.hub_id for name in names if name.hub_id))
    task = _task(config_dict.get("architectures") or [])
    title = repo_id.split("/")[-1] if repo_id else "EmbFuse model"
    model_index = _model_index(eval_results) if eval_results else []
    card_data = ModelCardData(
        base_model=hub_ids or None,
        # The Hub knows four relations; several parents make a merge, a single parent with extra tables is
        # closest to a fine-tune of it.
        base_model_relation=("merge" if len(hub_ids) > 1 else "finetune") if hub_ids else None,
        library_name="sentence-transformers" if sentence_transformers else "transformers",
        pipeline_tag="sentence-similarity" if sentence_transformers else task.pipeline_tag if task else None,
        license=_license(sources),
        tags=[
            "embfuse",
            "fused-embeddings",
            *(["sentence-transformers", "feature-extraction"] if sentence_transformers else []),
            *([base_config["model_type"]] if base_config.get("model_type") else []),
        ],
        model_name=title if model_index else None,
        eval_results=model_index or None,
    )
    model_ref = repo_id or "path/to/checkpoint"
    auto_class = task.auto_class.__name__ if task else None
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_title=title,
        base_description=_base_description(names[0], base_config),
        num_sources=len(sources),
        sources_table=_sources_table(sources, names),
        mixing_description=_mixing_description(config_dict),
        weights_table=_weights_table(config_dict, sources, names),
        weights_plot=weights_plot,
        eval_markdown=eval_markdown(eval_results) if eval_results else None,
        model_ref=model_ref,
        sentence_transformers=bool(sentence_transformers),
        auto_imports=", ".join(
            dict.fromkeys(["AutoModel", *([auto_class] if auto_class else []), "AutoTokenizer"])
        ),
        task_auto_class=auto_class if auto_class not in (None, "AutoModel") else None,
        base_type=base_config.get("model_type") or "base-architecture",
        bake_dir=repo_id.split("/")[-1] if repo_id else "path/to/checkpoint",
        format_version=config_dict.get("format_version", "unknown"),
    )


def eval_markdown(eval_results: Mapping[str, Any], digits: int = 3) -> str:
    """Render evaluation results as a Markdown table (see `build_model_card` for the accepted shapes)."""
    if isinstance(eval_results.get("tables"), Mapping):  # ComparisonTable.to_dict()
        rows = {
            name: {
                **{d: r.get("spearman") for d, r in (entry.get("datasets") or {}).items()},
                "mean": entry.get("mean"),
            }
            for name, entry in eval_results["tables"].items()
        }
        title = (
            f"Metric: {eval_results.get('metric', 'score')}. Word similarity of the fused input table, of each "
            "source's table alone and of simple baselines (`hf-embfuse eval`); the fused row is also in the "
            "`model-index` metadata.\n\n"
        )
        return title + _table(["table", *_columns(rows)], rows, digits)
    rows = {
        name: value if isinstance(value, Mapping) else {"value": value}
        for name, value in eval_results.items()
    }
    return _table(["", *_columns(rows)], rows, digits)


# -- metadata helpers ----------------------------------------------------------------------------------------


def read_eval_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read the JSON `hf-embfuse eval --out` wrote; the error names the file and the fix."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({error}); write it again with `hf-embfuse eval --out` or delete it."
        ) from None
    if not isinstance(results, dict):
        raise ValueError(
            f"{str(path)!r} holds a {type(results).__name__}, not the results `hf-embfuse eval --out` writes."
        )
    return results


def _model_index(eval_results: Mapping[str, Any]) -> list[EvalResult]:
    """The fused table's scores from `hf-embfuse eval` results (one table: that one), as `model-index` entries.

    Only the model's own row goes into the metadata; the sources and baselines stay in the card's table.
    """
    tables = eval_results.get("tables")
    if not isinstance(tables, Mapping) or not tables:
        return []
    own = [name for name in tables if str(name).startswith("fused")] or (
        list(tables) if len(tables) == 1 else []
    )
    if not own or not isinstance(tables[own[0]], Mapping):
        return []
    metric = str(eval_results.get("metric") or "spearman")
    results = []
    for dataset, result in (tables[own[0]].get("datasets") or {}).items():
        value = result.get(metric) if isinstance(result, Mapping) else result
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            results.append(
                EvalResult(
                    task_type="feature-extraction",
                    task_name="Word similarity of the input embedding",
                    dataset_type=str(dataset),
                    dataset_name=str(dataset),
                    metric_type=metric,
                    metric_name="Spearman's ρ" if metric == "spearman" else metric,
                    metric_value=round(float(value), 4),
                )
            )
    return results


def _task(architectures: list[str]) -> EmbFuseTask | None:
    for name in architectures:
        with contextlib.suppress(ValueError):
            return task_of(name)
    return None


class _Name(NamedTuple):
    """How the card names a model: a display name (never a local path) and its Hub id when known."""

    text: str | None
    hub_id: str | None

    def label(self, fallback: str) -> str:
        text = _escape(self.text or fallback)
        return f"[{text}](https://huggingface.co/{self.hub_id})" if self.hub_id else f"`{text}`"


def _source_name(source: Mapping[str, Any], index: int) -> _Name:
    name = source.get("name") if isinstance(source.get("name"), str) else None
    # Files (GGUF, vectors) can name the Hub repo they came from; a checkpoint's own name may be its Hub id.
    by_name = name if source.get("kind", "hf") in ("hf", "base") else None
    found = first_hub_id(source.get("hub_id"), source.get("repo_id"), by_name)
    return _Name(local_name(name) if name else found, found)


def _license(sources: list[dict[str, Any]]) -> str | None:
    """The fused model's license: known only when every source states the same one."""
    licenses = [s.get("license") if isinstance(s.get("license"), str) else None for s in sources]
    if sources and None not in licenses and len(set(licenses)) == 1:
        return licenses[0]
    if any(licenses):
        logger.info(
            "Sources differ in license or do not all state one (%s); the card lists them per source.",
            licenses,
        )
    return None


# -- body helpers --------------------------------------------------------------------------------------------


def _base_description(base: _Name, base_config: Mapping[str, Any]) -> str:
    model_type = base_config.get("model_type")
    kind = f"a {model_type} model" if model_type else "a transformers model"
    if base.hub_id:
        return f"{kind} based on [{base.hub_id}](https://huggingface.co/{base.hub_id})"
    return f"{kind} based on `{_escape(base.text)}`" if base.text else kind


def _sources_table(sources: list[dict[str, Any]], names: list[_Name]) -> str:
    if not sources:
        return "_The config lists no sources._"
    show_license = any(s.get("license") for s in sources)
    header = [
        "#",
        "source",
        "kind",
        "revision",
        "width",
        "projection",
        "coverage",
        "content coverage",
        "outcomes",
    ]
    rows = {}
    for index, (source, name) in enumerate(zip(sources, names, strict=True)):
        alignment = source.get("alignment") or {}
        coverage = alignment.get("coverage", 1.0 if index == 0 else None)
        counts = alignment.get("counts") or {}
        row = {
            "source": name.label(f"source {index}"),
            "kind": source.get("kind") or ("base" if index == 0 else "—"),
            "revision": f"`{source['revision'][:12]}`" if source.get("revision") else "—",
            "width": source.get("source_width", source.get("width")),
            "projection": _initialization(source),
            "coverage": _percent(coverage),
            "content coverage": _percent(alignment.get("content_coverage", 1.0 if index == 0 else None)),
            "outcomes": ", ".join(f"{name} {count:,}" for name, count in counts.items() if count) or "—",
        }
        if show_license:
            row["license"] = source.get("license") or "—"
        rows[str(index)] = row
    return _table([*header, *(["license"] if show_license else [])], rows, digits=3)


def _initialization(source: Mapping[str, Any]) -> str:
    """How the source's table was mapped into the base space (format 2 stores it; format 1 only the map)."""
    return source.get("initialization") or source.get("projection") or "—"


def _mixing_weights(config_dict: Mapping[str, Any], num_sources: int) -> tuple[list[float] | None, str]:
    weights = config_dict.get("mixing_weights")
    if weights is not None and len(weights) == num_sources:
        return [float(w) for w in weights], "mean mixing weight over the vocabulary"
    if config_dict.get("fixed_weights") is not None and len(config_dict["fixed_weights"]) == num_sources:
        if config_dict.get("mixing") == "fixed":
            return [float(w) for w in config_dict["fixed_weights"]], "fixed weight"
        return [float(w) for w in config_dict["fixed_weights"]], "initial weight (before training)"
    return None, ""


def _mixing_description(config_dict: Mapping[str, Any]) -> str:
    mode = config_dict.get("mixing", "learned")
    what = {
        "fixed": "fixed weights, one per source",
        "learned": "one learned weight per source",
        "gated": "a learned per-token gate computed from each projected vector",
    }.get(mode, str(mode))
    parts = [f"Mode: `{mode}` ({what}), softmax over the sources that cover each token"]
    temperature = config_dict.get("mixing_temperature")
    if temperature not in (None, 1, 1.0):
        parts.append(f"temperature {temperature:g}")
    regularizer = config_dict.get("regularizer")
    if regularizer and regularizer != "none":
        parts.append(f"regulariser `{regularizer}` with λ = {config_dict.get('reg_lambda', 0):g}")
    return ", ".join(parts) + "."


def _weights_table(config_dict: Mapping[str, Any], sources: list[dict[str, Any]], names: list[_Name]) -> str:
    weights, meaning = _mixing_weights(config_dict, len(sources))
    if weights is None:
        return "Mixing weights were not recorded in the config; `hf-embfuse inspect` computes them from the saved tensors."
    rows = {
        str(i): {"source": name.text or f"source {i}", meaning: w}
        for i, (name, w) in enumerate(zip(names, weights, strict=False))
    }
    return _table(["#", "source", meaning], rows, digits=3)


def _columns(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(column for row in rows.values() for column in row))


def _table(header: list[str], rows: Mapping[str, Mapping[str, Any]], digits: int) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [_escape(name), *(_cell(row.get(column), digits) for column in header[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, Mapping):  # e.g. a WordSimResult dict
        value = value.get("spearman", value.get("value"))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _escape(str(value))
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _percent(value: Any) -> str:
    return (
        f"{100 * float(value):.1f} %"
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else "—"
    )


def _escape(text: str) -> str:
    """Make `text` safe in a table cell; idempotent, so labels escaped once can pass through again."""
    return re.sub(r"(?<!\\)\|", r"\\|", text.replace("\n", " "))


__all__ = ["EVAL_FILE", "TEMPLATE_PATH", "build_model_card", "eval_markdown", "read_eval_results"]
