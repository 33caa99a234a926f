"""Sparse coding over the anchors, in the spirit of orthogonal matching pursuit (tokensurgeon's OMP).

Each donor row `x` is written as `x ≈ Σ_j c_j a_j` over a few donor anchor rows `a_j`, chosen greedily
(the atom most correlated with what is left, then a least-squares refit of all chosen ones), and
becomes `Σ_j c_j b_j` over the same anchors' base rows. Unlike transport's convex average the
coefficients are free, so a row can be a difference of directions ("king - man + woman").

Searching the whole anchor set at every greedy step costs `k` full nearest-neighbour searches; here
the atoms are chosen among each row's `candidates` nearest anchors (one search), and the greedy steps
run on their small Gram matrix. `candidates="all"` picks among every anchor at every step, as OMP does,
for problems small enough to search exactly. The two suit different ends: measured on Gemma-3 ->
SmolLM2 (train lines, own bits/byte), whole-set rows alone in the rebuilt LM head (`output_pieces: none`) gave 1.090x
against 1.102x (tokensurgeon's own model: 1.097x), but as input rows too 1.109x. So `fuse` codes the head's rows over
the whole set where it can, the input rows over the nearest candidates. The result is a `TransportPlan`,
applied like transport's.
"""

from __future__ import annotations

import logging

import torch

from ..projection._checks import as_mask, check_finite
from ..projection.transport import _EXACT_UP_TO, TransportPlan, TransportStats, anchor_neighbours

logger = logging.getLogger(__name__)

_BATCH = 2048


def sparse_coding_plan(
    source_table: torch.Tensor,
    coverage: torch.Tensor,
    anchors: torch.Tensor,
    *,
    k: int = 8,
    candidates: int | str | None = None,
    ridge: float = 1e-2,
    max_l1: float = 2.0,
    search: str = "auto",
) -> TransportPlan:
    """Code every covered row over at most `k` anchors chosen among its `candidates` nearest ones.

    Args:
        source_table: `(V, d)` donor rows on the target vocabulary.
        coverage: rows the donor covers.
        anchors: rows whose base vectors may be borrowed (covered by both sides).
        k: atoms per row.
        candidates: anchors each row's atoms are chosen from; `4 k` (at least 32) by default; `"all"`: every
            anchor at every step, for at most 2^31 rows x anchors (`codes_over_all_anchors` says).
        ridge: added to the Gram diagonal, relative to its mean, so near-duplicate atoms stay solvable.
        max_l1: coefficients whose absolute sum exceeds this are scaled down to it. Nearly collinear atoms
            can take large opposite coefficients that cancel in the donor space but not in the base space;
            one such row in an LM head takes every prediction (measured: 8.4x the own bits per byte at
            ridge 1e-4 without this bound).
        search: the nearest-neighbour search (see `transport_plan`).
    """
    if k < 1:
        raise ValueError(f"`k` must be at least 1, got {k}.")
    if candidates == "all":
        if not codes_over_all_anchors(source_table.shape[0], coverage, anchors):
            raise ValueError(
                "candidates='all' codes every row over every anchor, for at most 2^31 rows x anchors; leave "
                "`candidates` unset to pick atoms among each row's nearest anchors."
            )
        rows = as_mask("coverage", source_table.shape[0], coverage)
        return _whole_set_plan(source_table, rows, as_mask("anchors", source_table.shape[0], anchors), k)
    pool = candidates or max(32, 4 * k)
    near = anchor_neighbours(source_table, coverage, anchors, k=pool, search=search)
    k = min(k, near.ids.shape[1])
    table = source_table.detach().float()
    coefficients = torch.empty(near.rows.numel(), k)
    atoms = torch.empty(near.rows.numel(), k, dtype=torch.long)
    residual_share = 0.0
    for start in range(0, near.rows.numel(), _BATCH):
        part = slice(start, start + _BATCH)
        x = table[near.rows[part]]
        dictionary = table[near.ids[part]]  # (B, m, d)
        chosen, coefs, left = _omp(x, dictionary, k, ridge)
        l1 = coefs.abs().sum(1, keepdim=True)
        coefs = coefs * (max_l1 / l1).clamp(max=1.0)
        atoms[part] = near.ids[part].gather(1, chosen)
        coefficients[part] = coefs
        residual_share += float(left.sum())
    stats = TransportStats(
        n_rows=near.rows.numel(),
        n_anchors=near.n_anchors,
        k=k,
        mean_top1_cosine=float(near.cosines[:, 0].mean()),
        mean_effective_neighbours=_effective_atoms(coefficients),
        search=near.search,
        recall=near.recall,
    )
    logger.info(
        "Sparse-coded %d rows over %d anchors (%d atoms of %d candidates): mean residual %.3f of the norm.",
        stats.n_rows,
        stats.n_anchors,
        k,
        near.ids.shape[1],
        residual_share / max(stats.n_rows, 1),
    )
    return TransportPlan(source_table.shape[0], near.rows, atoms, coefficients, stats)


def codes_over_all_anchors(num_rows: int, coverage: torch.Tensor, anchors: torch.Tensor) -> bool:
    """Whether `candidates="all"` is affordable: the rows x anchors an exact search would take, at most 2^31."""
    rows, atoms = as_mask("coverage", num_rows, coverage), as_mask("anchors", num_rows, anchors)
    return int(rows.sum()) * int(atoms.sum()) <= _EXACT_UP_TO


def _effective_atoms(coefficients: torch.Tensor) -> float:
    """Mean participation ratio `(Σ|c|)² / Σc²` of the rows' coefficients: how many atoms a row really uses."""
    return float(((coefficients.abs().sum(1) ** 2) / (coefficients**2).sum(1).clamp_min(1e-30)).mean())


def _whole_set_plan(
    source_table: torch.Tensor, rows: torch.Tensor, anchors: torch.Tensor, k: int
) -> TransportPlan:
    """OMP with every anchor a candidate atom at every step (small problems; see the module docstring).

    The coefficients stay free: atoms picked by the residual among all anchors are not the near-duplicates
    that take large cancelling coefficients among a row's nearest ones (measured: bounding them to an
    absolute sum of 2 gave 1.104x instead of 1.090x).
    """
    table = source_table.detach().float()
    row_ids, anchor_ids = rows.nonzero().squeeze(1), anchors.nonzero().squeeze(1)
    k = min(k, anchor_ids.numel())
    if k < 1:
        raise ValueError("Sparse coding needs at least 1 anchor, got 0.")
    atoms_table = table[anchor_ids]
    check_finite("source_table", atoms_table, anchor_ids)
    check_finite("source_table", table[row_ids], row_ids)
    chosen = torch.empty(row_ids.numel(), k, dtype=torch.long)
    coefficients = torch.empty(row_ids.numel(), k)
    top1 = torch.empty(row_ids.numel())
    unit_atoms = torch.nn.functional.normalize(atoms_table, dim=1)
    batch = max(1, min(_BATCH, 2**25 // max(anchor_ids.numel(), 1)))  # (batch x anchors) scores: ~128 MiB
    for start in range(0, row_ids.numel(), batch):
        x = table[row_ids[start : start + batch]]
        top1[start : start + batch] = (torch.nn.functional.normalize(x, dim=1) @ unit_atoms.T).max(1).values
        residual, picked = x.clone(), torch.empty(x.shape[0], k, dtype=torch.long)
        for step in range(k):
            score = (residual @ atoms_table.T).abs()
            if step:
                score.scatter_(1, picked[:, :step], -1.0)
            picked[:, step] = score.argmax(dim=1)
            dictionary = atoms_table[picked[:, : step + 1]]  # (B, s, d)
            gram = dictionary @ dictionary.transpose(1, 2)
            gram = gram + 1e-6 * gram.diagonal(dim1=1, dim2=2).mean(1).view(-1, 1, 1) * torch.eye(step + 1)
            coefs = torch.linalg.solve(gram, torch.einsum("bsd,bd->bs", dictionary, x))
            residual = x - torch.einsum("bs,bsd->bd", coefs, dictionary)
        coefficients[start : start + batch] = coefs
        chosen[start : start + batch] = anchor_ids[picked]
    stats = TransportStats(
        n_rows=row_ids.numel(),
        n_anchors=anchor_ids.numel(),
        k=k,
        mean_top1_cosine=float(top1.mean()) if top1.numel() else 0.0,
        mean_effective_neighbours=_effective_atoms(coefficients),
        search="exact",
    )
    logger.info("Sparse-coded %d rows over all %d anchors (%d atoms each).", stats.n_rows, stats.n_anchors, k)
    return TransportPlan(source_table.shape[0], row_ids, chosen, coefficients, stats)


def _omp(
    x: torch.Tensor, dictionary: torch.Tensor, k: int, ridge: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched OMP in Gram form: chosen atom positions `(B, k)`, coefficients `(B, k)`, relative residuals `(B,)`."""
    gram = dictionary @ dictionary.transpose(1, 2)  # (B, m, m)
    correlation = torch.einsum("bmd,bd->bm", dictionary, x)  # (B, m)
    batch, m = correlation.shape
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)
    norms = gram.diagonal(dim1=1, dim2=2).clamp_min(1e-30).sqrt()
    chosen = torch.zeros(batch, k, dtype=torch.long)
    taken = torch.zeros(batch, m, dtype=torch.bool)
    rows = torch.arange(batch)
    coefs = torch.zeros(batch, 0)
    for step in range(k):
        # What the chosen atoms do not explain yet, seen through each atom: D r = D x - G[:, :, S] c.
        left = correlation - torch.einsum("bms,bs->bm", gram.gather(2, _expand(chosen[:, :step], m)), coefs)
        score = (left.abs() / norms).masked_fill(taken, -1.0)
        pick = score.argmax(dim=1)
        chosen[:, step] = pick
        taken[rows, pick] = True
        selected = chosen[:, : step + 1]
        sub = gram.gather(1, _expand(selected, m, dim=1)).gather(2, _expand(selected, step + 1))
        sub = sub + ridge * scale.view(-1, 1, 1) * torch.eye(step + 1)
        coefs = torch.linalg.solve(sub, correlation.gather(1, selected))
    reconstruction = torch.einsum(
        "bk,bkd->bd", coefs, dictionary.gather(1, _expand3(chosen, dictionary.shape[2]))
    )
    residual = (x - reconstruction).norm(dim=1) / x.norm(dim=1).clamp_min(1e-30)
    return chosen, coefs, residual


def _expand(index: torch.Tensor, size: int, dim: int = 2) -> torch.Tensor:
    """`(B, s)` positions as a gather index over a `(B, m, m)` Gram matrix along `dim`."""
    if dim == 2:
        return index.unsqueeze(1).expand(-1, size, -1)
    return index.unsqueeze(2).expand(-1, -1, size)


def _expand3(index: torch.Tensor, width: int) -> torch.Tensor:
    return index.unsqueeze(2).expand(-1, -1, width)
