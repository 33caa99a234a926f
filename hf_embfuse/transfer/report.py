"""Per-source row counts of a vocabulary transfer: matched, decomposed, transported, left out."""

from __future__ import annotations

from typing import Any

from ..alignment import ANCHOR_OUTCOMES, AlignedSource


def row_counts(aligned: AlignedSource, transported: int | None = None) -> dict[str, int]:
    """How a source fills the target rows: one-to-one matches (specials included), decomposed, left out;
    `transported` = rows carried into the base space through the anchors (donors only)."""
    counts = aligned.report.counts
    matched = counts["special"] + sum(counts[name] for name in ANCHOR_OUTCOMES)
    counts_out = {
        "matched": int(matched),
        "decomposed": int(counts["decomposed"]),
        "left_out": int(aligned.report.num_rows - aligned.coverage.sum()),
    }
    if transported is not None:
        counts_out["transported"] = int(transported)
    return counts_out


def format_rows(name: str, rows: dict[str, Any]) -> str:
    """One line: `name: 61,002 matched, 180,115 decomposed, ... left out`."""
    order = ("matched", "decomposed", "transported", "filled_from_donors", "mean_initialised", "left_out")
    parts = [f"{rows[key]:,} {key.replace('_', ' ')}" for key in order if key in rows]
    return f"{name}: " + ", ".join(parts)
