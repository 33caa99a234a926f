"""Transport: carry a source's notion of similarity into the base space (the WECHSEL / FOCUS idea).

Each covered row becomes a softmax-weighted average of the **base** vectors of its nearest anchors,
with neighbours and weights taken in the source's own space. Unlike a linear map, the result is by
construction a mixture of points the base model already understands.

The neighbours and weights are a `TransportPlan`, computed once and applied to any table indexed like
the anchors (the base's input table, and its output table for an untied LM head). The neighbour
search is exact (blocked matrix products), or approximate through faiss (`pip install
'hf-embfuse[ann]'`) for large vocabularies: 262,144 rows against 61k anchors is ~10^13 multiply-adds
exactly; an inverted-file index scans a few percent of the anchors per row. Approximate searches
report their recall against the exact one on a sample of rows.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass

import torch

from ._checks import as_mask, check_finite, check_table
from .plan import EXACT_UP_TO, PlanStats, RowPlan

logger = logging.getLogger(__name__)

# Bound the (batch × anchors) similarity block to about 128 MiB of float32.
_MAX_BLOCK_ELEMENTS = 2**25
SEARCHES = ("auto", "exact", "clustered", "faiss")
_RECALL_SAMPLE = 1000


# The plan and its statistics live in `plan.py`; these are their names from transport's point of view.
TransportStats = PlanStats
TransportPlan = RowPlan


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
    search: str = "exact",
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
        anchors: mask or row ids of rows whose base vectors may be borrowed (rows the source has, covered or
            not: a source may be asked to fill only some rows).
        k: neighbours per row; capped by the number of anchors available.
        temperature: softmax temperature over cosines; lower is closer to nearest-neighbour copying.
        exclude_self: leave a row out of its own neighbours (only matters for anchor rows).
        center: subtract the mean covered source row before taking cosines. Embedding tables share a
            common direction that makes every cosine high; removing it sharpens neighbours and weights.
        batch_size: rows per similarity block; by default sized so a block stays near 128 MiB.
        search: `"exact"`, `"faiss"` (approximate; the `ann` extra) or `"auto"` (faiss for large problems
            when it is installed).
        return_stats: also return a `TransportStats`.

    Returns:
        The float32 `(V, d_base)` table, and the stats when `return_stats` is set.
    """
    check_table("source_table", source_table)
    check_table("base_table", base_table, rows=source_table.shape[0])
    plan = transport_plan(
        source_table,
        coverage,
        anchors,
        k=k,
        temperature=temperature,
        exclude_self=exclude_self,
        center=center,
        batch_size=batch_size,
        search=search,
    )
    out = plan.apply(base_table)
    return (out, plan.stats) if return_stats else out


def transport_plan(
    source_table: torch.Tensor,
    coverage: torch.Tensor,
    anchors: torch.Tensor,
    *,
    k: int = 10,
    temperature: float = 0.1,
    exclude_self: bool = False,
    center: bool = False,
    batch_size: int | None = None,
    search: str = "exact",
) -> TransportPlan:
    """The neighbours and softmax weights `transport_table` uses, for applying to one or more tables.

    Arguments as for `transport_table`.
    """
    neighbours = anchor_neighbours(
        source_table,
        coverage,
        anchors,
        k=k,
        exclude_self=exclude_self,
        center=center,
        batch_size=batch_size,
        search=search,
    )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive, got {temperature}.")
    weights = torch.softmax(neighbours.cosines / temperature, dim=1)
    effective = float((1.0 / (weights**2).sum(dim=1)).mean())
    stats = TransportStats(
        n_rows=neighbours.rows.numel(),
        n_anchors=neighbours.n_anchors,
        k=neighbours.ids.shape[1],
        mean_top1_cosine=float(neighbours.cosines[:, 0].mean()),
        mean_effective_neighbours=effective,
        search=neighbours.search,
        recall=neighbours.recall,
    )
    logger.info(
        "Transported %d rows from %d anchors (k=%d, temperature=%g, %s search%s): mean top-1 cosine %.3f, "
        "%.2f effective neighbours.",
        stats.n_rows,
        stats.n_anchors,
        stats.k,
        temperature,
        stats.search,
        "" if stats.recall is None else f", recall {stats.recall:.3f}",
        stats.mean_top1_cosine,
        stats.mean_effective_neighbours,
    )
    return TransportPlan(source_table.shape[0], neighbours.rows, neighbours.ids, weights, stats)


@dataclass
class Neighbours:
    """The nearest anchors of every covered row, in the source space.

    Attributes:
        rows: `(n,)` covered rows, ascending.
        ids: `(n, k)` vocabulary row ids of their nearest anchors, nearest first.
        cosines: `(n, k)` the cosines to them.
        n_anchors: anchors searched.
        search: how they were found.
        recall: share of the exact neighbours found, on a sample (approximate searches only).
    """

    rows: torch.Tensor
    ids: torch.Tensor
    cosines: torch.Tensor
    n_anchors: int
    search: str
    recall: float | None = None


def anchor_neighbours(
    source_table: torch.Tensor,
    coverage: torch.Tensor,
    anchors: torch.Tensor,
    *,
    k: int = 10,
    exclude_self: bool = False,
    center: bool = False,
    batch_size: int | None = None,
    search: str = "exact",
) -> Neighbours:
    """The `k` nearest anchors (by cosine in the source space) of every covered row; see `transport_table`."""
    check_table("source_table", source_table)
    rows = source_table.shape[0]
    if k < 1:
        raise ValueError(f"`k` must be at least 1, got {k}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive number of rows, got {batch_size}.")
    if search not in SEARCHES:
        raise ValueError(f"`search` must be one of {', '.join(map(repr, SEARCHES))}, got {search!r}.")
    covered = as_mask("coverage", rows, coverage)
    anchor_mask = as_mask("anchors", rows, anchors)
    anchor_ids = anchor_mask.nonzero().squeeze(1)
    # The rows searched are the covered ones; anchors need not be among them (a donor that only fills
    # the rows the base lacks still reads its anchor rows), but their vectors are needed too.
    needed = (covered | anchor_mask).nonzero().squeeze(1)
    row_ids = covered.nonzero().squeeze(1)
    n_anchors = anchor_ids.numel()
    k_eff = min(k, n_anchors - 1 if exclude_self else n_anchors)
    if k_eff < 1:
        raise ValueError(
            f"Transport needs at least {2 if exclude_self else 1} anchors, got {n_anchors}; "
            "anchors are rows covered by both the source and the base."
        )

    table = source_table.detach()
    # The mean is over every row taking part (covered or anchor), as before; each set is then gathered once,
    # centred and normalised in place: no float32 copy of the union beside the two.
    mean = _mean_of(table, needed) if center else None
    unit = _unit_rows(table, row_ids, mean)
    anchor_unit = _unit_rows(table, anchor_ids, mean)
    # Position of each covered row among the anchors (-1 if not an anchor), to find "self".
    anchor_pos = torch.full((rows,), -1, dtype=torch.long)
    anchor_pos[anchor_ids] = torch.arange(n_anchors)
    own = anchor_pos[row_ids] if exclude_self else None
    # One extra neighbour when self is to be dropped afterwards.
    wanted = k_eff + (1 if exclude_self else 0)

    chosen = _choose_search(search, row_ids.numel(), n_anchors)
    recall = None
    if chosen != "exact":
        search_fn = _faiss_search if chosen == "faiss" else _clustered_search
        cosines, positions = search_fn(unit, anchor_unit, wanted)
        sample = torch.randperm(row_ids.numel(), generator=torch.Generator().manual_seed(0))[:_RECALL_SAMPLE]
        _, exact = _exact_search(unit[sample], anchor_unit, wanted, batch_size)
        # The share of each row's distinct exact neighbours the search found (a repeated hit counts once).
        found = (exact.unsqueeze(2) == positions[sample].unsqueeze(1)).any(dim=2)
        recall = float(found.float().mean())
    else:
        cosines, positions = _exact_search(unit, anchor_unit, wanted, batch_size)
    if exclude_self:
        cosines, positions = _drop_self(cosines, positions, own, k_eff)
    return Neighbours(row_ids, anchor_ids[positions], cosines, n_anchors, chosen, recall)


def _mean_of(table: torch.Tensor, ids: torch.Tensor, block: int = 65536) -> torch.Tensor:
    total = torch.zeros(table.shape[1])
    for start in range(0, ids.numel(), block):
        total += table[ids[start : start + block].to(table.device)].float().sum(0).cpu()
    return total / max(ids.numel(), 1)


def _unit_rows(table: torch.Tensor, ids: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """Rows `ids` of `table` in float32, checked, centred by `mean` if given, normalised in place."""
    rows = table[ids.to(table.device)].float().cpu()  # indexing copies: the caller's table is never changed
    check_finite("source_table", rows, ids)
    n_zero = int((rows.abs().sum(dim=1) == 0).sum())
    if n_zero:
        logger.warning("Transport: %d rows are all-zero; their neighbours are arbitrary.", n_zero)
    if mean is not None:
        rows -= mean
    return rows.div_(rows.norm(dim=1, keepdim=True).clamp_min(1e-12))


def faiss_available() -> bool:
    """Whether the approximate search of the `ann` extra (faiss-cpu) is installed."""
    return importlib.util.find_spec("faiss") is not None


def _choose_search(search: str, n_rows: int, n_anchors: int) -> str:
    if search == "faiss" and not faiss_available():
        raise ImportError("search='faiss' needs faiss-cpu: pip install 'hf-embfuse[ann]'.")
    if search != "auto":
        return search
    return "clustered" if n_rows * n_anchors > EXACT_UP_TO and n_anchors > 4096 else "exact"


def _exact_search(
    queries: torch.Tensor, anchors: torch.Tensor, k: int, batch_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = batch_size or max(1, min(4096, _MAX_BLOCK_ELEMENTS // anchors.shape[0]))
    cosines = torch.empty(queries.shape[0], k)
    positions = torch.empty(queries.shape[0], k, dtype=torch.long)
    for start in range(0, queries.shape[0], batch):
        sims = queries[start : start + batch] @ anchors.T
        cosines[start : start + batch], positions[start : start + batch] = sims.topk(k, dim=1)
    return cosines, positions


def _clustered_search(
    queries: torch.Tensor, anchors: torch.Tensor, k: int, probes: int = 8, iterations: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """An inverted-file search in large matrix products: spherical k-means of the anchors into ~√n cells;
    each query is compared with the anchors of the `probes` cells whose centres are nearest to it.

    Each query scans about `probes / √n` of the anchors (8 / 247 ≈ 3% for 61k). The work is one dense
    product per cell (its anchors against the queries that probe it). (bfloat16 products, 7x faster here,
    were tried: with the re-ranking in float32 they need, the whole search was slower.)
    """
    n = anchors.shape[0]
    cells = max(1, round(math.sqrt(n)))
    probes = min(probes, cells)
    generator = torch.Generator().manual_seed(0)
    centres = anchors[torch.randperm(n, generator=generator)[:cells]].clone()
    for _ in range(iterations):
        member = _nearest(anchors, centres, 1)[:, 0]
        sums = torch.zeros_like(centres).index_add_(0, member, anchors)
        empty = torch.bincount(member, minlength=cells) == 0
        centres = torch.where(empty.unsqueeze(1), centres, torch.nn.functional.normalize(sums, dim=1))
    member = _nearest(anchors, centres, 1)[:, 0]
    probed = _nearest(queries, centres, probes)  # (queries, probes) cell ids
    # Each (query, probe) slot gets the best k of that cell; one top-k over the slots at the end
    # (merging into a running top-k cell by cell cost more than the products themselves).
    slot_cosines = torch.full((queries.shape[0], probes, k), float("-inf"))
    slot_positions = torch.zeros(queries.shape[0], probes, k, dtype=torch.int32)
    order = torch.argsort(member)
    starts = torch.searchsorted(member[order], torch.arange(cells + 1)).tolist()
    asking = torch.argsort(probed.flatten())  # (query, probe) pairs grouped by cell
    ask_starts = torch.searchsorted(probed.flatten()[asking], torch.arange(cells + 1)).tolist()
    for cell in range(cells):
        inside = order[starts[cell] : starts[cell + 1]]
        pairs = asking[ask_starts[cell] : ask_starts[cell + 1]]
        if inside.numel() == 0 or pairs.numel() == 0:
            continue
        asked, slot = pairs // probes, pairs % probes
        top, where = (queries[asked] @ anchors[inside].T).topk(min(k, inside.numel()), dim=1)
        slot_cosines[asked, slot, : top.shape[1]] = top
        slot_positions[asked, slot, : top.shape[1]] = inside[where].to(torch.int32)
    cosines, pick = slot_cosines.flatten(1).topk(k, dim=1)
    positions = slot_positions.flatten(1).gather(1, pick).long()
    del slot_cosines, slot_positions
    # A query whose probed cells held fewer than k anchors keeps -inf entries: repeat its nearest found.
    short = torch.isinf(cosines)
    if bool(short.any()):
        positions = torch.where(short, positions[:, :1], positions)
        cosines = torch.where(short, cosines[:, :1], cosines)
    return cosines, positions


def _nearest(points: torch.Tensor, centres: torch.Tensor, count: int, block: int = 65536) -> torch.Tensor:
    """The `count` centres nearest (by inner product) to each point, `(points, count)`."""
    return torch.cat(
        [
            (points[i : i + block] @ centres.T).topk(count, dim=1).indices
            for i in range(0, points.shape[0], block)
        ]
    )


def _faiss_search(queries: torch.Tensor, anchors: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner products over an inverted-file index: about 4·√n lists, 16 of them scanned per query."""
    import faiss
    import numpy as np

    n, width = anchors.shape
    lists = max(1, min(4096, round(4 * math.sqrt(n))))
    quantizer = faiss.IndexFlatIP(width)
    index = faiss.IndexIVFFlat(quantizer, width, lists, faiss.METRIC_INNER_PRODUCT)
    points = np.ascontiguousarray(anchors.numpy(), dtype=np.float32)
    # 40 points per list is faiss's own floor for a stable k-means; more only costs time.
    step = max(1, n // (64 * lists))
    index.train(points[::step])
    index.add(points)
    index.nprobe = min(lists, 16)
    cosines, positions = index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), k)
    cosines, positions = torch.from_numpy(cosines), torch.from_numpy(positions)
    # Fewer than k anchors in the probed lists: faiss pads with -1; borrow the nearest found instead.
    missing = positions < 0
    if bool(missing.any()):
        positions = torch.where(missing, positions[:, :1].clamp_min(0), positions)
        cosines = torch.where(missing, cosines[:, :1], cosines)
    return cosines, positions


def _drop_self(
    cosines: torch.Tensor, positions: torch.Tensor, own: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `k` neighbours of each row other than the row itself."""
    is_self = positions == own.unsqueeze(1)
    # Stable sort moves a row's own entry to the end, keeping the rest in order.
    order = torch.sort(is_self.to(torch.int8), dim=1, stable=True).indices[:, :k]
    return cosines.gather(1, order), positions.gather(1, order)
