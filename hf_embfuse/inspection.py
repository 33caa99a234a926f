"""Describe a saved EmbFuse checkpoint: sources, coverage, match outcomes, mixing weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint_folder import read_checkpoint_config
from .configuration_embfuse import EmbFuseConfig


def describe_checkpoint(folder: Path) -> dict[str, Any]:
    """Read the config and the few small tensors needed to report on a checkpoint (never the whole model)."""
    read_checkpoint_config(folder)
    config = EmbFuseConfig.from_pretrained(folder)
    weights = mixing_weights_from_checkpoint(folder, config)
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
                "projection": (source.get("projection_fit") or {}).get("method", source["projection"]),
                "coverage": alignment.get("coverage", 1.0 if index == 0 else None),
                "outcomes": alignment.get("counts", {}),
                "mean_weight": None if weights is None else round(float(weights[index]), 4),
            }
        )
    return {
        "folder": str(folder),
        "architectures": config.architectures,
        "base": config.base_model_name_or_path,
        "base_model_type": config.base_config.model_type,
        "mixing": config.mixing,
        "format_version": config.format_version,
        "sources": sources,
    }


def mixing_weights_from_checkpoint(folder: Path, config: EmbFuseConfig) -> torch.Tensor | None:
    """Mean mixing weight per source, computed from the saved embedding module alone."""
    from safetensors import safe_open

    from .modeling_embfuse import MultiSourceEmbedding

    files = sorted(folder.glob("*.safetensors"))
    keys = {}
    for path in files:
        with safe_open(path, "pt") as handle:
            keys.update(dict.fromkeys(handle.keys(), path))
    coverage_keys = [key for key in keys if key.endswith(".coverage")]
    if len(coverage_keys) != 1:
        return None
    prefix = coverage_keys[0][: -len("coverage")]
    state = {}
    for key, path in keys.items():
        if key.startswith(prefix):
            with safe_open(path, "pt") as handle:
                state[key[len(prefix) :]] = handle.get_tensor(key)
    num_rows, width = state["weight"].shape
    embedding = MultiSourceEmbedding(config, num_rows, width)
    embedding.load_state_dict(state, strict=False)
    return embedding.mean_mixing_weights()


def format_description(description: dict[str, Any]) -> str:
    """Plain-text tables for `hf-embfuse inspect`."""
    lines = [
        f"{description['folder']}: {', '.join(description['architectures'] or ['?'])} over "
        f"{description['base']} ({description['base_model_type']}), mixing={description['mixing']}, "
        f"format v{description['format_version']}",
        "",
    ]
    header = ("#", "source", "kind", "width", "projection", "coverage", "mean weight")
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
                s["projection"],
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
