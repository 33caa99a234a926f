"""Several tables on several word-similarity datasets, as one table for a README or a JSON report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .wordsim import Pairs, WordSimResult, evaluate_wordsim


@dataclass
class ComparisonTable:
    """Spearman's ρ of each table on each dataset.

    Attributes:
        results: `results[table][dataset]` is a `WordSimResult`.
    """

    results: dict[str, dict[str, WordSimResult]] = field(default_factory=dict)

    @property
    def tables(self) -> list[str]:
        return list(self.results)

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(d for per_table in self.results.values() for d in per_table))

    def mean(self, table: str) -> float:
        """Unweighted mean ρ of `table` over the datasets (NaN if any is NaN)."""
        values = [r.spearman for r in self.results[table].values()]
        return sum(values) / len(values) if values else float("nan")

    def best(self, dataset: str | None = None) -> str:
        """The table with the highest ρ on `dataset`, or the highest mean when `dataset` is None."""

        def score(table: str) -> float:
            value = self.mean(table) if dataset is None else self.results[table][dataset].spearman
            return -math.inf if math.isnan(value) else value

        return max(self.tables, key=score)

    def to_markdown(self, digits: int = 3) -> str:
        """A Markdown table: one row per table, one column per dataset, plus the mean.

        A cell reads `0.746 (340/353)` when some pairs had unknown words (pairs scored / pairs).
        """
        datasets = self.datasets
        lines = [
            "| table | " + " | ".join(datasets) + " | mean |",
            "|---|" + "---:|" * (len(datasets) + 1),
        ]
        for table, per_table in self.results.items():
            cells = []
            for name in datasets:
                result = per_table.get(name)
                if result is None:
                    cells.append("")
                    continue
                cell = f"{result.spearman:.{digits}f}"
                if result.n_unknown_pairs:
                    cell += f" ({result.n_used}/{result.n_pairs})"
                cells.append(cell)
            lines.append(f"| {table} | " + " | ".join(cells) + f" | {self.mean(table):.{digits}f} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: `{"metric": "spearman", "tables": {table: {"mean": ρ, "datasets": {name: result}}}}`."""
        tables = {}
        for table, per_table in self.results.items():
            mean = self.mean(table)
            tables[table] = {
                "mean": None if math.isnan(mean) else mean,
                "datasets": {name: result.to_dict() for name, result in per_table.items()},
            }
        return {"metric": "spearman", "tables": tables}


def compare_tables(
    tables: Mapping[str, tuple[Any, ...]],
    datasets: Mapping[str, Pairs],
    *,
    word_prefix: str = "",
) -> ComparisonTable:
    """Evaluate every table on every dataset.

    Args:
        tables: name → `(table, tokenizer)` or `(table, tokenizer, coverage)`; see `evaluate_wordsim`.
        datasets: name → a `WordSimDataset` or `(word1, word2, score)` tuples.
        word_prefix: see `word_vectors`.
    """
    if not tables or not datasets:
        raise ValueError("`compare_tables` needs at least one table and one dataset.")
    comparison = ComparisonTable()
    for table_name, entry in tables.items():
        if not isinstance(entry, tuple) or len(entry) not in (2, 3):
            raise ValueError(
                f"Table {table_name!r}: expected (table, tokenizer) or (table, tokenizer, coverage), "
                f"got {type(entry).__name__}."
            )
        table, tokenizer, coverage = (*entry, None)[:3]
        comparison.results[table_name] = {
            name: evaluate_wordsim(
                table, tokenizer, pairs, coverage=coverage, word_prefix=word_prefix, name=name
            )
            for name, pairs in datasets.items()
        }
    return comparison
