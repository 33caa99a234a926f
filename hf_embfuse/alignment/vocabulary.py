"""What the cascade needs to know about one vocabulary, computed once per tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._strings import CodePoints
from .canonical import (
    WORD,
    WORDPIECE,
    TokenizerFamily,
    canonical_forms,
    detect_family,
    is_byte_piece_mask,
    isolated_mask,
    placeholder_mask,
)

# Special-token roles in matching priority: a token holding several roles (GPT-2's <|endoftext|> is
# bos, eos and unk at once) is matched by the first role the other side also has.
ROLES = ("bos", "eos", "mask", "unk", "pad")
_ROLE_ATTRIBUTES = {
    "bos": ("bos_token", "cls_token"),
    "eos": ("eos_token", "sep_token"),
    "mask": ("mask_token",),
    "unk": ("unk_token",),
    "pad": ("pad_token",),
}


def _tokens_by_id(tokenizer: Any) -> list[str | None]:
    """Token strings by id, added tokens included; `None` for ids nothing is assigned to."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        size = max(len(tokenizer), backend.get_vocab_size(with_added_tokens=True))
        return list(map(backend.id_to_token, range(size)))  # a C-level loop, faster than get_vocab()
    token_to_id = tokenizer.get_vocab()
    tokens: list[str | None] = [None] * max(len(tokenizer), max(token_to_id.values(), default=-1) + 1)
    for token, idx in token_to_id.items():
        tokens[idx] = token
    return tokens


def _isolated(texts: list[str], family: TokenizerFamily) -> np.ndarray:
    if family.name in (WORDPIECE, WORD):
        return isolated_mask(texts)
    return np.zeros(len(texts), dtype=bool)


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token`, or `None` if the vocabulary lacks it (never the unknown token's id)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.token_to_id(token)
    return tokenizer.get_vocab().get(token)


@dataclass
class Vocabulary:
    """One vocabulary, token by token, in the form the alignment cascade reads.

    Attributes:
        tokens: token string by id (`None` for an id without a token).
        family: the word-boundary convention (see `canonical.py`).
        texts: canonical text by id (`""` for ids without a token).
        word_start: whether each token starts a word.
        special: special tokens (role tokens and other control tokens), never decomposed.
        placeholder: reserved rows (`[unused3]`, `<extra_id_0>`, ids without a token).
        byte_piece: byte-fallback pieces, which regular pieces outrank when both match.
        isolated: tokens without a word position: punctuation and CJK ideographs in a WordPiece
            vocabulary or a word list, which their tokenizer always splits off (see `isolated_mask`).
        roles: role name (`ROLES`) -> token id, for the roles this vocabulary has.
    """

    tokens: list[str | None]
    family: TokenizerFamily
    texts: list[str]
    word_start: np.ndarray
    special: np.ndarray
    placeholder: np.ndarray
    byte_piece: np.ndarray
    roles: dict[str, int]
    isolated: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def content(self) -> np.ndarray:
        """Tokens that carry text: neither special nor placeholder."""
        return ~(self.special | self.placeholder)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> Vocabulary:
        """Read a transformers tokenizer (fast or slow) without encoding anything."""
        tokens = _tokens_by_id(tokenizer)
        size = len(tokens)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        literal = np.zeros(size, dtype=bool)
        special = np.zeros(size, dtype=bool)
        for idx, tok in added.items():
            if idx < size:
                literal[idx] = True
                special[idx] = bool(getattr(tok, "special", False))
        for idx in getattr(tokenizer, "all_special_ids", []) or []:
            if 0 <= idx < size:
                special[idx] = True

        roles: dict[str, int] = {}
        for role in ROLES:
            for attr in _ROLE_ATTRIBUTES[role]:
                token = getattr(tokenizer, attr, None)
                idx = None if token is None else _token_id(tokenizer, str(token))
                if idx is not None and idx < size:
                    roles[role] = idx
                    special[idx] = True
                    break

        family = detect_family(tokenizer, tokens)
        codes = CodePoints([t or "" for t in tokens])
        texts, starts = canonical_forms(tokens, family, literal=literal, codes=codes)
        placeholder = placeholder_mask(tokens, codes=codes)
        placeholder[list(roles.values())] = False
        return cls(
            tokens=tokens,
            family=family,
            texts=texts,
            word_start=starts,
            special=special & ~placeholder,
            placeholder=placeholder,
            byte_piece=is_byte_piece_mask(tokens, family, codes=codes),
            roles=roles,
            isolated=_isolated(texts, family),
        )

    @classmethod
    def from_words(cls, words: Sequence[str]) -> Vocabulary:
        """A static word-vector vocabulary: every entry is a whole word, hence word-start."""
        tokens = [str(w) for w in words]
        family = TokenizerFamily(WORD)
        texts, starts = canonical_forms(tokens, family)
        size = len(tokens)
        placeholder = np.fromiter((not t.strip() for t in tokens), dtype=bool, count=size)
        return cls(
            tokens=tokens,
            family=family,
            texts=texts,
            word_start=starts,
            special=np.zeros(size, dtype=bool),
            placeholder=placeholder,
            byte_piece=np.zeros(size, dtype=bool),
            roles={},
            isolated=_isolated(texts, family),
        )
