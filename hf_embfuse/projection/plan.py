"""A row plan: each row of a new table as a weighted combination of rows of an existing one.

Transport and OMP both make one (from the donor's own space); it is then applied to the base's input
table and to its output table alike, chunk by chunk, so no `(rows x k x width)` block is ever held.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_finite, check_table

# Exact searches (and OMP over every anchor) up to this many rows x anchors; approximate ones beyond.
EXACT_UP_TO = 2**31


@dataclass
class PlanStats:
    """What a plan's method did, in a few numbers.

    Attributes:
        n_rows: rows the plan fills.
        n_anchors: anchor rows it drew from.
        k: neighbours (transport) or atoms (OMP) per row.
        mean_top1_cosine: mean source-space cosine between a row and its nearest anchor.
        mean_effective_neighbours: mean participation ratio of the weights: 1 when one neighbour takes
            all the weight, `k` when they are uniform.
        search: `"exact"`, `"clustered"` or `"faiss"`.
        recall: for an approximate search, the share of the exact `k` nearest anchors it found (distinct
            anchors, on a sample of rows); `None` for an exact one.
    """

    n_rows: int
    n_anchors: int
    k: int
    mean_top1_cosine: float
    mean_effective_neighbours: float
    search: str = "exact"
    recall: float | None = None


@dataclass
class RowPlan:
    """Rows of a table as weighted combinations of another table's rows.

    Attributes:
        num_rows: rows of the tables it applies to (and of the result).
        rows: `(n,)` the rows it fills, ascending.
        neighbours: `(n, k)` ids of the rows each one combines.
        weights: `(n, k)` their weights (softmax weights for transport, OMP coefficients).
        stats: how it was made.
    """

    num_rows: int
    rows: torch.Tensor
    neighbours: torch.Tensor
    weights: torch.Tensor
    stats: PlanStats | None = None

    def rows_between(self, start: int, end: int, table: torch.Tensor) -> torch.Tensor:
        """`(end - start, d)` float32: rows `start..end` of the plan applied to `table`, zero where it fills nothing."""
        lo, hi = torch.searchsorted(self.rows, torch.tensor([start, end])).tolist()
        out = torch.zeros(end - start, table.shape[1], dtype=torch.float32, device=table.device)
        if hi > lo:
            neighbours = self.neighbours[lo:hi]
            used, local = torch.unique(neighbours, return_inverse=True)
            # embedding_bag sums the weighted neighbour rows without materialising (n x k x d).
            out[self.rows[lo:hi] - start] = torch.nn.functional.embedding_bag(
                local, table[used].float(), per_sample_weights=self.weights[lo:hi].float(), mode="sum"
            )
        return out

    def apply(self, table: torch.Tensor, *, chunk: int = 65536) -> torch.Tensor:
        """`(num_rows, d)` float32: the whole plan applied to `table` (rows it does not fill are zero)."""
        check_table("table", table, rows=self.num_rows)
        used = torch.unique(self.neighbours)
        check_finite("table", table[used].float(), used)
        return torch.cat(
            [
                self.rows_between(s, min(s + chunk, self.num_rows), table)
                for s in range(0, self.num_rows, chunk)
            ]
        )

    def reindexed(self, ids: torch.Tensor, num_rows: int) -> RowPlan:
        """The same plan over another table: neighbour `i` becomes row `ids[i]` of a `num_rows`-row table.

        Used to read a plan made over target rows from the base's own table (an anchor's target row is one base row).
        """
        return RowPlan(num_rows, self.rows, ids[self.neighbours], self.weights, self.stats)
