"""Input checks shared by the projection methods: clear errors at the edge, not deep inside torch."""

from __future__ import annotations

import torch


def check_table(name: str, table: torch.Tensor, rows: int | None = None) -> None:
    """Raise a `ValueError` unless `table` is a 2-D floating tensor (with `rows` rows when given)."""
    if not isinstance(table, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(table).__name__}.")
    if table.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (vocab × width), got shape {tuple(table.shape)}.")
    if not table.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {table.dtype}.")
    if rows is not None and table.shape[0] != rows:
        raise ValueError(
            f"`{name}` has {table.shape[0]} rows but the other inputs have {rows}; "
            "align every table to the base vocabulary first."
        )


def check_finite(name: str, rows: torch.Tensor, index: torch.Tensor) -> None:
    """Raise a `ValueError` naming the first offending row ids when `rows` holds NaN or inf."""
    # A row sum is NaN or inf whenever an entry is (float64 rows cannot overflow from float32 data);
    # far cheaper than an elementwise isfinite over the whole block.
    bad = ~torch.isfinite(rows.sum(dim=1))
    if bool(bad.any()):
        ids = index[bad][:10].tolist()
        raise ValueError(
            f"`{name}` has NaN or inf values in {int(bad.sum())} of the rows used (first row ids: {ids}); "
            "fix or drop those rows (e.g. leave them out of `anchors` / `coverage`)."
        )


def as_mask(name: str, rows: int, selection: torch.Tensor) -> torch.Tensor:
    """Turn a boolean mask or a 1-D tensor of row ids into a boolean mask of length `rows`."""
    if not isinstance(selection, torch.Tensor):
        selection = torch.as_tensor(selection)
    if selection.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D (a boolean mask or row ids), got shape {tuple(selection.shape)}."
        )
    if selection.dtype == torch.bool:
        if selection.shape[0] != rows:
            raise ValueError(
                f"`{name}` is a mask of length {selection.shape[0]} but the tables have {rows} rows."
            )
        return selection.cpu()
    if selection.is_floating_point() or selection.is_complex():
        raise ValueError(f"`{name}` must be a boolean mask or integer row ids, got {selection.dtype}.")
    selection = selection.long().cpu()
    if selection.numel() and (int(selection.min()) < 0 or int(selection.max()) >= rows):
        raise ValueError(f"`{name}` holds row ids outside [0, {rows}); the tables have {rows} rows.")
    mask = torch.zeros(rows, dtype=torch.bool)
    mask[selection] = True
    return mask
