"""Evaluation: embedding tables on word-similarity data (WordSim-353, SimLex-999, MEN, ...), and causal
language models in bits per byte on plain text (`score_lines`, comparable across tokenizers).

Names are loaded on first use, so `import hf_embfuse.evaluation` stays free of torch and numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TextScore": "bits_per_byte",
    "read_text_lines": "bits_per_byte",
    "score_lines": "bits_per_byte",
    "WordSimDataset": "wordsim_data",
    "WordSimFormatError": "wordsim_data",
    "find_wordsim_files": "wordsim_data",
    "load_standard_wordsim": "wordsim_data",
    "load_wordsim": "wordsim_data",
    "parse_wordsim": "wordsim_data",
    "rankdata": "ranks",
    "spearman": "ranks",
    "WordSimResult": "wordsim",
    "evaluate_wordsim": "wordsim",
    "word_vectors": "wordsim",
    "ComparisonTable": "compare",
    "compare_tables": "compare",
    "average_baseline": "baselines",
    "concat_baseline": "baselines",
    "evaluate_fused": "fused",
    "projected_tables": "fused",
}

__all__ = [
    "ComparisonTable",
    "TextScore",
    "WordSimDataset",
    "WordSimFormatError",
    "WordSimResult",
    "average_baseline",
    "compare_tables",
    "concat_baseline",
    "evaluate_fused",
    "evaluate_wordsim",
    "find_wordsim_files",
    "load_standard_wordsim",
    "load_wordsim",
    "parse_wordsim",
    "projected_tables",
    "rankdata",
    "read_text_lines",
    "score_lines",
    "spearman",
    "word_vectors",
]

if TYPE_CHECKING:
    from .baselines import average_baseline, concat_baseline
    from .bits_per_byte import TextScore, read_text_lines, score_lines
    from .compare import ComparisonTable, compare_tables
    from .fused import evaluate_fused, projected_tables
    from .ranks import rankdata, spearman
    from .wordsim import WordSimResult, evaluate_wordsim, word_vectors
    from .wordsim_data import (
        WordSimDataset,
        WordSimFormatError,
        find_wordsim_files,
        load_standard_wordsim,
        load_wordsim,
        parse_wordsim,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
