"""Word similarity of an EmbFuse model: its fused table next to each of its sources and simple baselines.

Every table is read in the base vocabulary and, for the sources, in the base space (after the
model's own projections), so the rows compare what the mixture adds against what it mixes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from .baselines import average_baseline, concat_baseline
from .compare import ComparisonTable, compare_tables
from .wordsim import Pairs


def _embedding(model: Any) -> Any:
    from ..modeling_embfuse import MultiSourceEmbedding

    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(embedding, MultiSourceEmbedding):
        raise ValueError(
            f"{type(model).__name__} has no MultiSourceEmbedding input embedding, so it is not an EmbFuse model; "
            "evaluate a plain table with `hf_embfuse.evaluation.compare_tables`."
        )
    return embedding


@torch.no_grad()
def projected_tables(embedding: Any, chunk_size: int = 16384) -> list[torch.Tensor]:
    """Every source's full table mapped into the base space: K float32 `(V, d)` tensors, base first.

    Args:
        embedding: a `MultiSourceEmbedding`.
        chunk_size: rows projected at a time (bounds the temporary memory).
    """
    rows, width, k = embedding.num_embeddings, embedding.embedding_dim, embedding.num_sources
    device = embedding.weight.device
    out = torch.empty(k, rows, width, dtype=torch.float32, device=device)
    for start in range(0, rows, chunk_size):
        ids = torch.arange(start, min(start + chunk_size, rows), device=device)
        out[:, start : start + len(ids)] = embedding._projected(ids).transpose(0, 1)
    return list(out.unbind(0))


def display_name(name: str | None, fallback: str) -> str:
    """A short label for a source: Hub ids and names as given, local paths cut to their last two parts."""
    if not name:
        return fallback
    if os.path.isabs(name) or os.path.exists(name):
        parts = [p for p in name.replace(os.sep, "/").split("/") if p]
        return "/".join(parts[-2:]) or fallback
    return name


def table_names(config: Any) -> list[str]:
    """Row labels of `evaluate_fused`, base first, made unique: `"<base> (base)"`, `"<source> (<initialization>)"`."""
    names = []
    for index, source in enumerate(config.sources):
        name = display_name(source.get("name"), f"source {index}")
        if index == 0:
            names.append(f"{name} (base)")
            continue
        method = source.get("initialization", source.get("projection"))  # how the table was made
        names.append(f"{name} ({method})" if method else name)
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique


def evaluate_fused(
    model: Any,
    tokenizer: Any,
    datasets: Mapping[str, Pairs],
    *,
    word_prefix: str = "",
    baselines: bool = True,
) -> ComparisonTable:
    """Spearman's ρ of an EmbFuse model's fused table, each of its tables alone, and simple baselines.

    Rows, in order:
    - `fused (<mixing>)`: `fused_weight()`, the matrix the model actually feeds its encoder.
    - `<base> (base)`: the base model's own table.
    - `<source> (<projection>)`: one source alone, in the base space; only the rows it covers count
      (uncovered pieces are left out of a word's mean, a word with none is unknown and its pairs are
      counted, not scored).
    - `average baseline`: unweighted masked average of the base and the projected sources.
    - `concat baseline`: concatenation of the row-normalised projected tables.

    Args:
        model: a loaded or freshly built EmbFuse model (any task class).
        tokenizer: the base tokenizer (the one saved with the model).
        datasets: name → a `WordSimDataset` or `(word1, word2, score)` tuples.
        word_prefix: see `word_vectors` (`" "` for byte-level BPE bases).
        baselines: include the two baseline rows.

    Raises:
        ValueError: when `model` is not an EmbFuse model.
    """
    embedding = _embedding(model)
    config = model.config
    names = table_names(config)
    coverage = embedding.coverage.bool()
    tables = projected_tables(embedding)
    entries: dict[str, tuple[Any, ...]] = {f"fused ({config.mixing})": (embedding.fused_weight(), tokenizer)}
    for index, (name, table) in enumerate(zip(names, tables, strict=True)):
        entries[name] = (table, tokenizer, coverage[:, index])
    if baselines and len(tables) > 1:
        columns = list(coverage.unbind(1))
        covered = coverage.any(1)
        entries["average baseline"] = (average_baseline(tables, columns), tokenizer, covered)
        entries["concat baseline"] = (concat_baseline(tables, columns), tokenizer, covered)
    return compare_tables(entries, datasets, word_prefix=word_prefix)
