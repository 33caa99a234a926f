"""Simple ways to combine sources already projected into the base space: what a fusion must beat."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check(projected_tables: Sequence[torch.Tensor], coverages: Sequence[torch.Tensor]) -> int:
    if not projected_tables:
        raise ValueError("Give at least one projected table.")
    if len(projected_tables) != len(coverages):
        raise ValueError(
            f"{len(projected_tables)} tables but {len(coverages)} coverage masks; give one per table."
        )
    rows = projected_tables[0].shape[0]
    for i, (table, mask) in enumerate(zip(projected_tables, coverages, strict=True)):
        if table.ndim != 2 or table.shape[0] != rows:
            raise ValueError(
                f"Table {i} has shape {tuple(table.shape)}; every table must be 2-D with {rows} rows "
                "(aligned to the base vocabulary)."
            )
        if tuple(mask.shape) != (rows,):
            raise ValueError(f"Coverage mask {i} has shape {tuple(mask.shape)}; expected ({rows},).")
    return rows


def average_baseline(
    projected_tables: Sequence[torch.Tensor],
    coverages: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Masked average of projected tables: each row averages the tables that cover it.

    Args:
        projected_tables: `(V, d)` tables in the base space, all the same shape.
        coverages: `(V,)` boolean masks, one per table.
        weights: optional non-negative weight per table (renormalised per row over covering tables);
            unweighted by default.

    Returns:
        float32 `(V, d)`; rows no table covers are zero.
    """
    _check(projected_tables, coverages)
    widths = {t.shape[1] for t in projected_tables}
    if len(widths) != 1:
        raise ValueError(
            f"Averaging needs tables of one width (project them first), got widths {sorted(widths)}."
        )
    if weights is None:
        weights = [1.0] * len(projected_tables)
    if len(weights) != len(projected_tables) or any(not w >= 0 for w in weights):
        raise ValueError(
            f"`weights` must be {len(projected_tables)} non-negative numbers, got {list(weights)}."
        )
    stacked = torch.stack([t.detach().float() for t in projected_tables])
    mask = torch.stack([torch.as_tensor(c, dtype=torch.bool) for c in coverages]).to(stacked.device)
    w = torch.tensor(weights, dtype=torch.float32, device=stacked.device).unsqueeze(1) * mask
    total = w.sum(0, keepdim=True)
    w = torch.where(total > 0, w / total.clamp_min(1e-30), torch.zeros_like(w))
    return torch.einsum("sv,svd->vd", w, stacked)


def concat_baseline(
    projected_tables: Sequence[torch.Tensor], coverages: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Concatenation of per-row L2-normalised tables, so no source dominates by scale.

    Args:
        projected_tables: `(V, d_i)` tables (widths may differ).
        coverages: `(V,)` boolean masks, one per table; a table's block is zero where it does not cover.

    Returns:
        float32 `(V, Σ d_i)`.
    """
    _check(projected_tables, coverages)
    blocks = []
    for table, mask in zip(projected_tables, coverages, strict=True):
        block = torch.nn.functional.normalize(table.detach().float(), dim=1)
        blocks.append(block * torch.as_tensor(mask, dtype=torch.bool).to(block.device).unsqueeze(1))
    return torch.cat(blocks, dim=1)
