"""Word-similarity evaluation of an embedding table through a tokenizer.

A word's vector is the mean of its sub-token rows minus the table's mean row (the mean row is a
direction every token shares; left in, it makes all cosines high and similar). Spearman's ρ between
the pairs' cosines and the gold scores is the figure reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .ranks import spearman
from .wordsim_data import WordSimDataset

logger = logging.getLogger(__name__)

Pairs = WordSimDataset | Sequence[tuple[str, str, float]]

_UNKNOWN_SAMPLE = 20


@dataclass
class WordSimResult:
    """One table on one dataset.

    Attributes:
        dataset: the dataset's name.
        spearman: Spearman's ρ over the pairs whose two words are both known (NaN if < 2 such pairs).
        n_pairs: pairs in the dataset.
        n_used: pairs scored (both words known).
        n_unknown_pairs: pairs left out because a word is unknown (`n_pairs - n_used`).
        n_unknown_words: distinct unknown words.
        unknown_words: up to 20 of them, in order of first appearance.
    """

    dataset: str
    spearman: float
    n_pairs: int
    n_used: int
    n_unknown_pairs: int
    n_unknown_words: int
    unknown_words: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["spearman"] = None if np.isnan(self.spearman) else self.spearman
        return out


def _unk_id(tokenizer: Any) -> int | None:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        return int(unk)
    model = getattr(tokenizer, "model", None)
    unk_token = getattr(model, "unk_token", None) if model is not None else None
    if unk_token is not None and hasattr(tokenizer, "token_to_id"):
        unk = tokenizer.token_to_id(unk_token)
    return None if unk is None else int(unk)


def _encode(tokenizer: Any, words: list[str]) -> list[list[int]]:
    """Token ids of each word, without special tokens, for HF tokenizers and raw `tokenizers.Tokenizer`s."""
    if callable(tokenizer):
        return tokenizer(words, add_special_tokens=False)["input_ids"]
    if hasattr(tokenizer, "encode_batch"):
        # A raw backend may carry padding settings from its tokenizer.json; the mask drops the padding.
        encodings = tokenizer.encode_batch(words, add_special_tokens=False)
        return [[i for i, m in zip(e.ids, e.attention_mask, strict=True) if m] for e in encodings]
    raise ValueError(
        f"`tokenizer` must be a Hugging Face tokenizer or a `tokenizers.Tokenizer`, got {type(tokenizer).__name__}."
    )


def _as_table(table: torch.Tensor) -> torch.Tensor:
    table = torch.as_tensor(table)
    if table.ndim != 2:
        raise ValueError(f"`table` must be 2-D (vocab × width), got shape {tuple(table.shape)}.")
    return table.detach().float()


def word_vectors(
    table: torch.Tensor,
    tokenizer: Any,
    words: Sequence[str],
    *,
    coverage: torch.Tensor | None = None,
    word_prefix: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors of whole words: mean of their sub-token rows minus the table's mean row.

    Unknown-token pieces, and with `coverage` pieces on uncovered rows, are left out of the mean; a
    word left with no piece (or that tokenises to nothing) is unknown and gets a zero vector.

    Args:
        table: `(V, d)` embedding table indexed by the tokenizer's ids.
        tokenizer: a Hugging Face tokenizer or a `tokenizers.Tokenizer`.
        words: the words.
        coverage: optional `(V,)` boolean mask of rows that hold real vectors (an aligned source's
            coverage); the mean row is then taken over covered rows only.
        word_prefix: text put before each word before tokenising, e.g. `" "` for byte-level BPE
            tokenizers whose in-sentence words start with a space.

    Returns:
        `(vectors, known)`: float32 `(len(words), d)` and a boolean `(len(words),)` mask.
    """
    table = _as_table(table)
    rows = table.shape[0]
    words = list(words)
    if not words:
        return table.new_zeros(0, table.shape[1]), torch.zeros(0, dtype=torch.bool)
    if coverage is not None:
        coverage = torch.as_tensor(coverage, dtype=torch.bool).cpu()
        if coverage.shape != (rows,):
            raise ValueError(f"`coverage` has shape {tuple(coverage.shape)}; the table has {rows} rows.")
    ids_per_word = _encode(tokenizer, [word_prefix + w for w in words])
    lengths = torch.tensor([len(ids) for ids in ids_per_word], dtype=torch.long)
    flat = torch.tensor([i for ids in ids_per_word for i in ids], dtype=torch.long)
    if flat.numel() and int(flat.max()) >= rows:
        raise ValueError(
            f"The tokenizer produced id {int(flat.max())} but the table has only {rows} rows; "
            "pass the table aligned to this tokenizer's vocabulary."
        )
    keep = torch.ones_like(flat, dtype=torch.bool)
    unk = _unk_id(tokenizer)
    if unk is not None:
        keep &= flat != unk
    if coverage is not None:
        keep &= coverage[flat]
    owner = torch.repeat_interleave(torch.arange(len(words)), lengths)
    counts = torch.bincount(owner[keep], minlength=len(words))
    offsets = torch.cumsum(counts, 0) - counts
    pieces = flat[keep].to(table.device)
    vectors = torch.nn.functional.embedding_bag(pieces, table, offsets.to(table.device), mode="mean")
    mean_row = table[coverage.to(table.device)].mean(0) if coverage is not None else table.mean(0)
    known = counts > 0
    vectors = torch.where(known.to(table.device).unsqueeze(1), vectors - mean_row, torch.zeros_like(vectors))
    return vectors, known


def evaluate_wordsim(
    table: torch.Tensor,
    tokenizer: Any,
    pairs: Pairs,
    *,
    coverage: torch.Tensor | None = None,
    word_prefix: str = "",
    name: str | None = None,
) -> WordSimResult:
    """Spearman's ρ between word-pair cosines under `table` and the pairs' gold scores.

    Pairs with an unknown word are left out of ρ and counted in the result (and logged), so a table
    that knows fewer words cannot look better by silently scoring an easier subset.

    Args:
        table: `(V, d)` embedding table (a source aligned to the base vocabulary, the base's, a fused one).
        tokenizer: the tokenizer whose ids index `table`.
        pairs: a `WordSimDataset` or `(word1, word2, score)` tuples.
        coverage: optional `(V,)` mask of rows holding real vectors; see `word_vectors`.
        word_prefix: see `word_vectors`.
        name: the dataset's label; defaults to the dataset's own name.
    """
    if isinstance(pairs, WordSimDataset):
        dataset = pairs
    else:
        triples = list(pairs)
        if any(len(p) != 3 for p in triples):
            raise ValueError("`pairs` must be a WordSimDataset or (word1, word2, score) tuples.")
        dataset = WordSimDataset(
            name or "pairs",
            [p[0] for p in triples],
            [p[1] for p in triples],
            [float(p[2]) for p in triples],
        )
    label = name or dataset.name
    vocab = dataset.words
    position = {w: i for i, w in enumerate(vocab)}
    vectors, known = word_vectors(table, tokenizer, vocab, coverage=coverage, word_prefix=word_prefix)
    first = torch.tensor([position[w] for w in dataset.word1], dtype=torch.long)
    second = torch.tensor([position[w] for w in dataset.word2], dtype=torch.long)
    used = known[first] & known[second]
    a, b = vectors[first[used]].double(), vectors[second[used]].double()
    cosines = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    gold = np.asarray(dataset.scores, dtype=np.float64)[used.numpy()]
    rho = spearman(cosines.cpu().numpy(), gold)
    unknown = [w for w, k in zip(vocab, known.tolist(), strict=True) if not k]
    result = WordSimResult(
        dataset=label,
        spearman=rho,
        n_pairs=len(dataset),
        n_used=int(used.sum()),
        n_unknown_pairs=len(dataset) - int(used.sum()),
        n_unknown_words=len(unknown),
        unknown_words=unknown[:_UNKNOWN_SAMPLE],
    )
    if result.n_unknown_pairs:
        logger.warning(
            "%s: %d of %d pairs left out for %d unknown words (e.g. %s).",
            label,
            result.n_unknown_pairs,
            result.n_pairs,
            result.n_unknown_words,
            ", ".join(unknown[:5]),
        )
    return result
