"""Vocabulary-sized tables as mixtures of row sources, made chunk by chunk.

A new table (the input table on a target vocabulary, a rebuilt LM head, a donor's rows in the base space)
is a per-row weighted mixture of a few *row sources*: a plan read from a base table, a source's own table
through a linear map, a constant row. `mixed_table` evaluates it in row chunks with float32 arithmetic and
stores it in the model's dtype, so the build never holds a float32 copy of a vocabulary-sized table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

# Rows per chunk: about 64 MiB of float32 per chunk and source.
_CHUNK_ELEMENTS = 2**24


class RowPlanLike(Protocol):
    def rows_between(self, start: int, end: int, table: torch.Tensor) -> torch.Tensor: ...


class RowSource(Protocol):
    """Rows `start..end` of a table, as float32 `(end - start, width)`."""

    def rows_between(self, start: int, end: int) -> torch.Tensor: ...


@dataclass
class PlannedRows:
    """A plan (alignment bags, transport, OMP) read from `table`."""

    plan: RowPlanLike
    table: torch.Tensor

    def rows_between(self, start: int, end: int) -> torch.Tensor:
        return self.plan.rows_between(start, end, self.table)


@dataclass
class MappedRows:
    """A source's own rows through an affine map into the base space (`rows @ weight.T + bias`)."""

    table: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def rows_between(self, start: int, end: int) -> torch.Tensor:
        rows = self.table[start:end].float()
        if self.weight is not None:
            rows = rows @ self.weight.float().T
        if self.bias is not None:
            rows = rows + self.bias.float()
        return rows


@dataclass
class ConstantRow:
    """One row for every row (e.g. the base table's mean: what `mean_resizing` gives a new token)."""

    row: torch.Tensor

    def rows_between(self, start: int, end: int) -> torch.Tensor:
        return self.row.float().expand(end - start, -1)


@dataclass
class Layer:
    """A row source and its weight per row (zero where it does not take part)."""

    rows: RowSource
    weight: torch.Tensor


def mixed_table(layers: Sequence[Layer], num_rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """`(num_rows, width)` in `dtype`: per row, the layers' rows weighted by their weights renormalised to 1.

    A row only one layer covers is that layer's row exactly; a row no layer covers is zero.
    """
    out = torch.empty(num_rows, width, dtype=dtype)
    total = sum((layer.weight.float() for layer in layers), torch.zeros(num_rows))
    chunk = max(1, _CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, num_rows, chunk):
        end = min(start + chunk, num_rows)
        weights = total[start:end].clamp_min(1e-30)
        block = torch.zeros(end - start, width)
        for layer in layers:
            share = layer.weight[start:end].float() / weights
            if bool((share > 0).any()):
                block += layer.rows.rows_between(start, end) * share.unsqueeze(1)
        out[start:end] = block.to(dtype)
    return out
