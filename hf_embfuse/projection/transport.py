"""Transport: carry a source's notion of similarity into the base space (the WECHSEL / FOCUS idea).

Each covered row becomes a softmax-weighted average of the **base** vectors of its nearest anchors,
with neighbours and weights taken in the source's own space. Unlike a linear map, the result is by
construction a mixture of points the base model already understands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ._checks import as_mask, check_finite, check_table

logger = logging.getLogger(__name__)

# Bound the (batch × anchors) similarity block to about 128 MiB of float32.
_MAX_BLOCK_ELEMENTS = 2**25


@dataclass
class TransportStats:
    """What a transport did, in a few numbers.

    Attributes:
        n_rows: covered rows transported.
        n_anchors: anchor rows neighbours were drawn from.
        k: neighbours used per row (the requested `k`, capped by the anchors available).
        mean_top1_cosine: mean source-space cosine between a row and its nearest anchor.
        mean_effective_neighbours: mean of `1 / Σ w²` over rows: 1 when one neighbour takes all the
            weight, `k` when the weights are uniform.
    """

    n_rows: int
    n_anchors: int
    k: int
    mean_top1_cosine: float
    mean_effective_neighbours: float


def transport_table(
    source_table: torch.Tensor,
    coverage: torch.Tensor,
    base_table: torch.Tensor,
    anchors: torch.Tensor,
    *,
    k: int = 10,
    temperature: float = 0.1,
    exclude_self: bool = False,
    center: bool = False,
    batch_size: int | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, TransportStats]:
    """Build a `(V, d_base)` table whose covered rows are base vectors weighted by source similarity.

    For every covered row `t`: take its `k` nearest anchors by cosine in the source space, weight them
    by `softmax(cos / temperature)`, and average those anchors' rows of `base_table`. Uncovered rows
    are zero (the mixture masks them out by `coverage`).

    With `exclude_self=False` an anchor is its own nearest neighbour (cosine 1), so at low temperature
    it lands close to its own base row, nudged toward the base rows of tokens the source deems
    similar. With `exclude_self=True` every row is rebuilt purely from *other* tokens' base vectors —
    the source's view alone, and the honest setting for measuring how much the source adds on rows the
    base already has.

    Args:
        source_table: `(V, d_source)` source table aligned to the base vocabulary.
        coverage: `(V,)` boolean mask (or row ids) of rows the source covers.
        base_table: `(V, d_base)` the base model's input-embedding table.
        anchors: mask or row ids of rows whose base vectors may be borrowed; must be covered.
        k: neighbours per row; capped by the number of anchors available.
        temperature: softmax temperature over cosines; lower is closer to nearest-neighbour copying.
        exclude_self: leave a row out of its own neighbours (only matters for anchor rows).
        center: subtract the mean covered source row before taking cosines. Embedding tables share a
            common direction that makes every cosine high; removing it sharpens neighbours and weights.
        batch_size: rows per similarity block; by default sized so a block stays near 128 MiB.
        return_stats: also return a `TransportStats`.

    Returns:
        The float32 `(V, d_base)` table, and the stats when `return_stats` is set.
    """
    check_table("source_table", source_table)
    rows = source_table.shape[0]
    check_table("base_table", base_table, rows=rows)
    if k < 1:
        raise ValueError(f"`k` must be at least 1, got {k}.")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive, got {temperature}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive number of rows, got {batch_size}.")
    covered = as_mask("coverage", rows, coverage)
    anchor_mask = as_mask("anchors", rows, anchors)
    if bool((anchor_mask & ~covered).any()):
        raise ValueError(
            f"{int((anchor_mask & ~covered).sum())} anchors are not covered by the source; "
            "pass `anchors & coverage`."
        )
    anchor_ids = anchor_mask.nonzero().squeeze(1)
    row_ids = covered.nonzero().squeeze(1)
    n_anchors = anchor_ids.numel()
    k_eff = min(k, n_anchors - 1 if exclude_self else n_anchors)
    if k_eff < 1:
        raise ValueError(
            f"Transport needs at least {2 if exclude_self else 1} anchors, got {n_anchors}; "
            "anchors are rows covered by both the source and the base."
        )

    device = source_table.device
    out = torch.zeros(rows, base_table.shape[1], dtype=torch.float32, device=device)

    source = source_table.detach().float()
    covered_rows = source[row_ids.to(device)]
    check_finite("source_table", covered_rows, row_ids)
    n_zero = int((covered_rows.abs().sum(dim=1) == 0).sum())
    if n_zero:
        logger.warning("Transport: %d covered rows are all-zero; their neighbours are arbitrary.", n_zero)
    if center:
        covered_rows = covered_rows - covered_rows.mean(0)
    unit = torch.nn.functional.normalize(covered_rows, dim=1)
    base_anchors = base_table.detach().float()[anchor_ids.to(base_table.device)].to(device)
    check_finite("base_table", base_anchors, anchor_ids)
    # Position of each vocabulary row among the anchors (-1 if not an anchor), to find "self".
    anchor_pos = torch.full((rows,), -1, dtype=torch.long)
    anchor_pos[anchor_ids] = torch.arange(n_anchors)
    # Anchors are covered rows, so their (centred) unit vectors are rows of `unit`.
    anchor_unit = unit[torch.searchsorted(row_ids, anchor_ids).to(device)]
    row_pos = anchor_pos[row_ids].to(device)

    batch = batch_size or max(1, min(4096, _MAX_BLOCK_ELEMENTS // n_anchors))
    top1_sum, eff_sum = 0.0, 0.0
    for start in range(0, row_ids.numel(), batch):
        block = unit[start : start + batch]
        sims = block @ anchor_unit.T
        if exclude_self:
            pos = row_pos[start : start + batch]
            own = (pos >= 0).nonzero().squeeze(1)
            sims[own, pos[own]] = float("-inf")
        top_sims, top_idx = sims.topk(k_eff, dim=1)
        weights = torch.softmax(top_sims / temperature, dim=1)
        # embedding_bag sums the weighted neighbour rows without materialising (batch × k × d).
        out[row_ids[start : start + batch].to(device)] = torch.nn.functional.embedding_bag(
            top_idx, base_anchors, per_sample_weights=weights, mode="sum"
        )
        top1_sum += float(top_sims[:, 0].sum())
        eff_sum += float((1.0 / (weights**2).sum(dim=1)).sum())

    # Anchors are covered rows, so there is at least one row here.
    stats = TransportStats(
        row_ids.numel(), n_anchors, k_eff, top1_sum / row_ids.numel(), eff_sum / row_ids.numel()
    )
    logger.info(
        "Transported %d rows from %d anchors (k=%d, temperature=%g): mean top-1 cosine %.3f, "
        "%.2f effective neighbours.",
        stats.n_rows,
        n_anchors,
        k_eff,
        temperature,
        stats.mean_top1_cosine,
        stats.mean_effective_neighbours,
    )
    return (out, stats) if return_stats else out
