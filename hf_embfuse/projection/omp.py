"""OMP: each donor row as a sparse combination of anchor rows (orthogonal matching pursuit, as tokensurgeon's).

A donor row `x` is written as `x ≈ Σ_j c_j a_j` over a few donor anchor rows `a_j` and becomes `Σ_j c_j b_j`
over the same anchors' base rows. Unlike transport's convex average the coefficients are free, so a row can
be a difference of directions ("king - man + woman").

One algorithm, one rule:
- **Atom choice**: at each step the atom with the largest `|<r, a>|` against the residual, then a
  least-squares refit of every chosen atom. The raw inner product, not divided by `||a||`, measured better for
  a rebuilt head's rows (docs/vocabulary-transfer.md, "OMP").
- **Regularisation**: the refit adds `ridge` times the mean squared norm of the chosen atoms to the Gram
  diagonal, so near-duplicate atoms stay solvable.
- **Bound**: a row whose coefficients' absolute sum exceeds `max_l1` is scaled down to it (`None`: free).
  Nearly collinear atoms can take large opposite coefficients that cancel in the donor space but not in
  the base space.

Where the atoms come from is the one thing that varies: each row's `candidates x atoms` nearest anchors (one
nearest-neighbour search, then greedy steps on a small Gram matrix), or every anchor (`candidates=None`),
affordable up to `EXACT_UP_TO` rows x anchors. The result is a `RowPlan`, applied like transport's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ._checks import as_mask, check_finite
from .plan import EXACT_UP_TO, PlanStats, RowPlan
from .transport import anchor_neighbours

logger = logging.getLogger(__name__)

_BATCH = 2048


@dataclass(frozen=True)
class OmpSettings:
    """How rows are coded: where atoms come from, the refit's ridge, and the coefficients' bound.

    Attributes:
        candidates: atoms are chosen among each row's `candidates x atoms` (at least 32) nearest anchors; `None`:
            among every anchor.
        ridge: relative ridge of the refit.
        max_l1: bound on a row's absolute coefficient sum; `None` leaves them free.
    """

    candidates: int | None = 4
    ridge: float = 1e-2
    max_l1: float | None = 2.0


# Input rows: nearest candidates, bounded. Head rows: every anchor, free coefficients where affordable.
# Why the two differ: docs/vocabulary-transfer.md ("OMP").
INPUT_ROWS = OmpSettings()
HEAD_ROWS = OmpSettings(candidates=None, ridge=1e-6, max_l1=None)


def omp_plan(
    source_table: torch.Tensor,
    coverage: torch.Tensor,
    anchors: torch.Tensor,
    *,
    atoms: int = 8,
    settings: OmpSettings = INPUT_ROWS,
    search: str = "auto",
) -> RowPlan:
    """Code every covered row over at most `atoms` anchors.

    Args:
        source_table: `(V, d)` donor rows on the target vocabulary.
        coverage: rows the donor covers (mask or ids).
        anchors: rows whose base vectors may be borrowed (mask or ids).
        atoms: atoms per row.
        settings: candidates, ridge and bound (see `OmpSettings`); `candidates=None` needs
            `codes_over_every_anchor(coverage, anchors)`.
        search: the nearest-neighbour search for candidates (see `transport_plan`).
    """
    if atoms < 1:
        raise ValueError(f"`atoms` must be at least 1, got {atoms}.")
    num_rows = source_table.shape[0]
    rows = as_mask("coverage", num_rows, coverage)
    anchor_mask = as_mask("anchors", num_rows, anchors)
    table = source_table.detach().float()
    candidates = settings.candidates
    if candidates is None and not codes_over_every_anchor(rows, anchor_mask):
        raise ValueError(
            f"OMP over every anchor is for at most {EXACT_UP_TO:,} rows x anchors; got {int(rows.sum()):,} x "
            f"{int(anchor_mask.sum()):,}. Give `candidates` to pick atoms among each row's nearest anchors."
        )
    if candidates is None:
        row_ids, anchor_ids = rows.nonzero().squeeze(1), anchor_mask.nonzero().squeeze(1)
        if anchor_ids.numel() < 1:
            raise ValueError("OMP needs at least 1 anchor, got 0.")
        check_finite("source_table", table[anchor_ids], anchor_ids)
        pool = _SharedPool(table[anchor_ids], anchor_ids)
        n_anchors, search_used, recall = anchor_ids.numel(), "exact", None
    else:
        near = anchor_neighbours(
            source_table, rows, anchor_mask, k=max(32, candidates * atoms), search=search
        )
        row_ids = near.rows
        pool = _NearestPool(table, near.ids)
        n_anchors, search_used, recall = near.n_anchors, near.search, near.recall
    check_finite("source_table", table[row_ids], row_ids)
    atoms = min(atoms, pool.size)
    chosen = torch.empty(row_ids.numel(), atoms, dtype=torch.long)
    coefficients = torch.empty(row_ids.numel(), atoms)
    residual = torch.empty(row_ids.numel())
    top1 = torch.empty(row_ids.numel())
    batch = max(1, min(_BATCH, 2**25 // max(pool.size, 1)))  # (batch x atoms in the pool) scores: ~128 MiB
    for start in range(0, row_ids.numel(), batch):
        part = slice(start, start + batch)
        x = table[row_ids[part]]
        picked, coefs, top1[part] = _omp(x, pool, part, atoms, settings.ridge)
        if settings.max_l1 is not None:
            coefs = coefs * (settings.max_l1 / coefs.abs().sum(1, keepdim=True).clamp_min(1e-30)).clamp(
                max=1.0
            )
        # The residual of the coefficients the plan keeps, after the bound.
        rebuilt = torch.einsum("bk,bkd->bd", coefs, pool.gather(part, picked))
        residual[part] = (x - rebuilt).norm(dim=1) / x.norm(dim=1).clamp_min(1e-30)
        chosen[part], coefficients[part] = pool.ids(part, picked), coefs
    stats = PlanStats(
        n_rows=row_ids.numel(),
        n_anchors=n_anchors,
        k=atoms,
        mean_top1_cosine=float(top1.mean()) if top1.numel() else 0.0,
        mean_effective_neighbours=_effective_atoms(coefficients),
        search=search_used,
        recall=recall,
    )
    logger.info(
        "OMP coded %d rows over %d anchors (%d atoms, %s): mean residual %.3f of the norm.",
        stats.n_rows,
        n_anchors,
        atoms,
        "every anchor" if candidates is None else f"{pool.size} nearest candidates",
        float(residual.mean()) if residual.numel() else 0.0,
    )
    return RowPlan(num_rows, row_ids, chosen, coefficients, stats)


def codes_over_every_anchor(coverage: torch.Tensor, anchors: torch.Tensor) -> bool:
    """Whether every anchor can be a candidate of every row: at most `EXACT_UP_TO` rows x anchors (boolean masks)."""
    return int(coverage.sum()) * int(anchors.sum()) <= EXACT_UP_TO


class _SharedPool:
    """Every anchor is a candidate of every row: scores are one matrix product."""

    def __init__(self, atoms: torch.Tensor, anchor_ids: torch.Tensor) -> None:
        self._atoms, self._anchor_ids = atoms, anchor_ids
        self._norms = atoms.norm(dim=1).clamp_min(1e-30)
        self.size = anchor_ids.numel()

    def correlate(self, part: slice, vectors: torch.Tensor) -> torch.Tensor:
        return vectors @ self._atoms.T

    def norms(self, part: slice) -> torch.Tensor:
        return self._norms

    def gather(self, part: slice, picked: torch.Tensor) -> torch.Tensor:
        return self._atoms[picked]

    def ids(self, part: slice, picked: torch.Tensor) -> torch.Tensor:
        return self._anchor_ids[picked]


class _NearestPool:
    """Each row's own nearest anchors are its candidates."""

    def __init__(self, table: torch.Tensor, neighbour_ids: torch.Tensor) -> None:
        self._table, self._neighbour_ids = table, neighbour_ids
        self.size = neighbour_ids.shape[1]
        self._part: slice | None = None
        self._atoms = torch.empty(0)

    def _batch(self, part: slice) -> torch.Tensor:
        if part != self._part:  # gathered once per batch of rows, reused by every greedy step
            self._part, self._atoms = part, self._table[self._neighbour_ids[part]]
        return self._atoms

    def correlate(self, part: slice, vectors: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bmd,bd->bm", self._batch(part), vectors)

    def norms(self, part: slice) -> torch.Tensor:
        return self._batch(part).norm(dim=2).clamp_min(1e-30)

    def gather(self, part: slice, picked: torch.Tensor) -> torch.Tensor:
        atoms = self._batch(part)
        return atoms.gather(1, picked.unsqueeze(2).expand(-1, -1, atoms.shape[2]))

    def ids(self, part: slice, picked: torch.Tensor) -> torch.Tensor:
        return self._neighbour_ids[part].gather(1, picked)


def _omp(
    x: torch.Tensor, pool: _SharedPool | _NearestPool, part: slice, k: int, ridge: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched OMP of rows `x (B, d)` over their pool of atoms.

    Returns the chosen atom positions in the pool `(B, k)`, their coefficients `(B, k)`, and each row's best
    cosine to an atom.
    """
    batch = x.shape[0]
    cosines = pool.correlate(part, x) / pool.norms(part)  # for the statistics only
    top1 = cosines.max(1).values / x.norm(dim=1).clamp_min(1e-30)
    chosen = torch.zeros(batch, k, dtype=torch.long)
    residual = x
    coefs = torch.zeros(batch, 0)
    for step in range(k):
        score = pool.correlate(part, residual).abs()
        if step:
            score.scatter_(1, chosen[:, :step], -1.0)
        chosen[:, step] = score.argmax(dim=1)
        selected = pool.gather(part, chosen[:, : step + 1])  # (B, s, d)
        gram = selected @ selected.transpose(1, 2)
        scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30).view(-1, 1, 1)
        gram = gram + ridge * scale * torch.eye(step + 1)
        coefs = torch.linalg.solve(gram, torch.einsum("bsd,bd->bs", selected, x))
        residual = x - torch.einsum("bs,bsd->bd", coefs, selected)
    return chosen, coefs, top1


def _effective_atoms(coefficients: torch.Tensor) -> float:
    """Mean participation ratio `(Σ|c|)² / Σc²` of the rows' coefficients: how many atoms a row really uses."""
    if not coefficients.numel():
        return 0.0
    return float(((coefficients.abs().sum(1) ** 2) / (coefficients**2).sum(1).clamp_min(1e-30)).mean())
