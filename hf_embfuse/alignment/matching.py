"""The dictionary steps of the cascade: special tokens by string or role, then canonical (exact when the
strings agree too) and case-folded text, each a handful of C-level passes over the whole vocabulary."""

from __future__ import annotations

import operator
from itertools import repeat

import numpy as np

from ._strings import bulk_map, take
from .vocabulary import ROLES, Vocabulary


def match_specials(base: Vocabulary, src: Vocabulary, rows: np.ndarray, usable: np.ndarray) -> dict[int, int]:
    """Base special token -> source special token: the same string first, else the same role.

    A base token holding several roles is matched by the first of them (in `ROLES` order) that
    the source also has, e.g. GPT-2's `<|endoftext|>` (bos, eos, unk) -> BERT's `[CLS]` (bos).
    """
    by_token = {src.tokens[j]: j for j in np.flatnonzero(src.special & usable).tolist()}
    roles_of: dict[int, list[str]] = {}
    for role in ROLES:
        if role in base.roles:
            roles_of.setdefault(base.roles[role], []).append(role)
    matched = {}
    for i in rows.tolist():
        j = by_token.get(base.tokens[i])
        for role in roles_of.get(i, ()):
            if j is not None:
                break
            if role in src.roles and usable[src.roles[role]]:
                j = src.roles[role]
        if j is not None:
            matched[i] = j
    return matched


def _lookup(table: dict[str, int], keys: list[str]) -> np.ndarray:
    """`table.get(k, -1)` for every key, as an int64 array."""
    return np.fromiter(map(table.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))


class SourceIndex:
    """A source vocabulary's content tokens as dictionaries, one per word position.

    `canonical[flag]` maps the canonical text of tokens whose word-start flag is `flag` to their id;
    `casefold[flag]` maps case-folded texts, for the tokens that fold to something else ("Paris");
    a token already folded is found in `canonical`. Where several tokens share a key, regular pieces
    beat byte-fallback pieces and lower ids beat higher ones (each dictionary is filled from least
    to most preferred, so the last write wins). Tokens without a word position
    (`Vocabulary.isolated`, e.g. BERT's `"."`) are filed under both positions. `shadowed` maps the
    strings of the tokens that lost such a tie to their ids, so a base token still finds its very
    own string (a tokenizer aligned to itself is the identity).

    Args:
        src: the source vocabulary.
        usable: which source ids have a row in the source table.
    """

    def __init__(self, src: Vocabulary, usable: np.ndarray) -> None:
        ids = np.flatnonzero(src.content & usable)[::-1]
        order = np.concatenate([ids[src.byte_piece[ids]], ids[~src.byte_piece[ids]]])
        self.vocab = src
        self.canonical: dict[bool, dict[str, int]] = {}
        self.casefold: dict[bool, dict[str, int]] = {}
        self.shadowed: dict[str, int] = {}
        for flag in (False, True):
            # Position-free tokens are filed under both positions, the word-start one winning: BERT
            # always splits "!" off as a word, so its "##!" row is all but never trained.
            others = order[(src.word_start[order] != flag) & src.isolated[order]]
            own = order[src.word_start[order] == flag]
            sel = np.concatenate([others, own] if flag else [own, others])
            texts = take(src.texts, sel)
            self.canonical[flag] = dict(zip(texts, sel.tolist(), strict=True))
            if len(self.canonical[flag]) < sel.size:
                winners = np.fromiter(self.canonical[flag].values(), dtype=np.int64)
                losers = sel[~np.isin(sel, winners)]
                self.shadowed.update(zip(take(src.tokens, losers), losers.tolist(), strict=True))
            folded = bulk_map(texts, str.casefold)
            self.casefold[flag] = {
                f: j for f, t, j in zip(folded, texts, sel.tolist(), strict=True) if f != t
            }


def dictionary_passes(
    base: Vocabulary, index: SourceIndex, rows: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Canonical and case-folded look-ups for base `rows`.

    Returns:
        outcome (`"exact"`, `"canonical"`, `"casefold"`) -> (base rows, matched source rows); a
        canonical match is `"exact"` when the two token strings are the same too.
    """
    src = index.vocab
    found = {name: ([], []) for name in ("exact", "canonical", "casefold")}
    for flag in (False, True):
        sel = rows[base.word_start[rows] == flag]
        texts = take(base.texts, sel)
        hit = _lookup(index.canonical[flag], texts)
        matched = np.flatnonzero(hit >= 0)
        same = np.fromiter(
            map(operator.eq, take(base.tokens, sel[matched]), take(src.tokens, hit[matched])),
            dtype=bool,
            count=matched.size,
        )
        if index.shadowed:  # a token that lost a tie to another spelling of its text is still itself
            differ = np.flatnonzero(~same)
            alt = _lookup(index.shadowed, take(base.tokens, sel[matched[differ]]))
            for pos, j in zip(differ[alt >= 0].tolist(), alt[alt >= 0].tolist(), strict=True):
                k = matched[pos]
                if src.word_start[j] == flag and src.texts[j] == texts[k]:
                    hit[k], same[pos] = j, True
        _append(found["exact"], sel[matched[same]], hit[matched[same]])
        _append(found["canonical"], sel[matched[~same]], hit[matched[~same]])

        # Case-folded: a source token already in folded form ("apple") before any that folds to it.
        rest = np.flatnonzero(hit < 0)
        folded = bulk_map(take(texts, rest), str.casefold)
        fold_hit = _lookup(index.canonical[flag], folded)
        missing = np.flatnonzero(fold_hit < 0)
        fold_hit[missing] = _lookup(index.casefold[flag], take(folded, missing))
        ok = fold_hit >= 0
        _append(found["casefold"], sel[rest[ok]], fold_hit[ok])

        # A base token without a word position (BERT's ".") may take the source's other one.
        loose = rest[~ok][base.isolated[sel[rest[~ok]]]]
        other = _lookup(index.canonical[not flag], take(texts, loose))
        _append(found["canonical"], sel[loose[other >= 0]], other[other >= 0])
    return {
        name: (np.concatenate(b).astype(np.int64), np.concatenate(s).astype(np.int64))
        for name, (b, s) in found.items()
    }


def _append(bucket: tuple[list, list], base_rows: np.ndarray, src_rows: np.ndarray) -> None:
    bucket[0].append(base_rows)
    bucket[1].append(src_rows)
