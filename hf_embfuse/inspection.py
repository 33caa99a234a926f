"""Describe a saved EmbFuse checkpoint: sources, coverage, match outcomes, mixing weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint_folder import content_hash, mean_mixing_weights, read_checkpoint_config
from .configuration_embfuse import EmbFuseConfig


def describe_checkpoint(folder: Path) -> dict[str, Any]:
    """Read the config and the few small tensors needed to report on a checkpoint (never the whole model).

    Each source is described by its stored `projection` (the map applied at run time) and `initialization`
    (how its table and map were made: `identity`, `linear` or `transport`), not re-derived from provenance.
    """
    read_checkpoint_config(folder)
    config = EmbFuseConfig.from_pretrained(folder)
    weights = mean_mixing_weights(folder, config)
    sources = []
    for index, source in enumerate(config.sources):
        alignment = source.get("alignment") or {}
        sources.append(
            {
                "index": index,
                "name": source.get("name"),
                "kind": source.get("kind"),
                "revision": source.get("revision"),
                "width": source.get("source_width", source["width"]),
                "projection": source["projection"],  # the map applied at run time
                "initialization": source.get("initialization", source["projection"]),  # how it was made
                "coverage": alignment.get("coverage", 1.0 if index == 0 else None),
                "outcomes": alignment.get("counts", {}),
                "mean_weight": None if weights is None else weights[index],
            }
        )
    return {
        "folder": str(folder),
        "architectures": config.architectures,
        "base": config.base_model_name_or_path,
        "base_model_type": config.base_config.model_type,
        "vocabulary": describe_vocabulary(config),
        "mixing": config.mixing,
        "format_version": config.format_version,
        "sources": sources,
        "content_hash": content_hash(folder),
    }


def describe_vocabulary(config: EmbFuseConfig) -> dict[str, Any]:
    """The model's vocabulary and where it came from, from the build's record in the base source's entry.

    `tokenizer` is what the build was given as the target (a folder, a Hub id, a GGUF file, `source:N (name)`),
    or `"base"` for the base model's own; `added_tokens` are the tokens the build added to it.
    """
    base_entry = config.sources[0] if config.sources else {}
    target = base_entry.get("target") or {}
    added = (target.get("added_tokens") or {}).get("added") or []
    size = target.get("size") or getattr(config.base_config.get_text_config(), "vocab_size", None)
    return {"tokenizer": target.get("tokenizer", "base"), "size": size, "added_tokens": list(added)}


def _vocabulary_line(vocabulary: dict[str, Any]) -> str:
    size = "?" if vocabulary["size"] is None else f"{vocabulary['size']:,}"
    added = f" + {len(vocabulary['added_tokens'])} added tokens" if vocabulary["added_tokens"] else ""
    if vocabulary["tokenizer"] == "base":
        return f"vocabulary: the base model's own{added} ({size} tokens)"
    return f"vocabulary: {vocabulary['tokenizer']}{added} ({size} tokens), transferred onto the base model"


def format_description(description: dict[str, Any]) -> str:
    """Plain-text tables for `hf-embfuse inspect`."""
    lines = [
        f"{description['folder']}: {', '.join(description['architectures'] or ['?'])} over "
        f"{description['base']} ({description['base_model_type']}), mixing={description['mixing']}, "
        f"format v{description['format_version']}",
    ]
    if "vocabulary" in description:
        lines.append(_vocabulary_line(description["vocabulary"]))
    lines.append("")
    header = ("#", "source", "kind", "width", "initialization", "coverage", "mean weight")
    rows = [header]
    for s in description["sources"]:
        coverage = "-" if s["coverage"] is None else f"{100 * s['coverage']:.1f}%"
        weight = "-" if s["mean_weight"] is None else f"{s['mean_weight']:.3f}"
        rows.append(
            (
                str(s["index"]),
                str(s["name"]),
                str(s["kind"]),
                str(s["width"]),
                s["initialization"],
                coverage,
                weight,
            )
        )
    lines += _table(rows)
    outcomes = sorted({name for s in description["sources"] for name in s["outcomes"]})
    if outcomes:
        lines += ["", "alignment outcomes (base-vocabulary rows)"]
        rows = [("source", *outcomes)]
        for s in description["sources"][1:]:
            rows.append((str(s["name"]), *(str(s["outcomes"].get(name, 0)) for name in outcomes)))
        lines += _table(rows)
    if "content_hash" in description:
        lines += ["", f"content hash (sha256 of weights): {description['content_hash']}"]
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    out.insert(1, "  ".join("-" * width for width in widths))
    return out
