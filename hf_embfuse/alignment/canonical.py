"""Token surfaces to a tokenizer-independent canonical form: `(text, word_start)`.

Every tokenizer family marks "this piece starts a word" differently:

* WordPiece (BERT): a piece *without* the continuation prefix starts a word; `##ing` continues one.
* byte-level BPE (GPT-2, Llama 3, SmolLM2): a leading `Ġ` (the byte-level image of a space) starts a
  word, a piece without it continues one; every character stands for one byte (GPT-2's
  byte-to-unicode table), so `Ã©` is the two UTF-8 bytes of `é`.
* SentencePiece / Metaspace (T5, Llama 2, Gemma): a leading `▁` starts a word; byte-fallback pieces
  `<0x41>` stand for one raw byte.
* whole words (static word vectors, WordLevel): every entry is a word, so it starts one.

The canonical form strips the marker, keeps the flag, and decodes bytes. A piece whose bytes are not
valid UTF-8 on their own (a lone byte such as `Ã` = 0xC3, or `<0xC3>`) keeps them as surrogate
escapes (`"\\udcc3"`), so a byte-level byte and a byte-fallback byte still meet in one key, while
such texts can never be sent to a tokenizer (see `is_encodable`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._strings import SEP, CodePoints, _joinable, bulk_map, strip_prefix

WORDPIECE = "wordpiece"
BYTE_LEVEL = "byte_level"
METASPACE = "metaspace"
WORD = "word"
FAMILIES = (WORDPIECE, BYTE_LEVEL, METASPACE, WORD)

METASPACE_MARK = "▁"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SURROGATE = re.compile("[\udc80-\udcff]")

# Rows that exist only to reserve ids (never trained, or trained on nothing a source could know).
# Matching is on the whole token string; extend the tuple to teach the cascade a new convention.
PLACEHOLDER_PATTERNS: tuple[str, ...] = (
    r"\[unused\d+\]",  # BERT
    r"<unused\d+>",  # Gemma
    r"<extra_id_\d+>",  # T5 sentinels
    r"<\|extra_?\d+\|>",  # Qwen
    r"<\|?reserved[\w\-]*\|?>",  # Llama 3 <|reserved_special_token_5|>, <reserved_123>
    r"<\|?dummy_?\d+\|?>",  # Phi
    r"madeupword\d+",  # fairseq
    r"\[PAD\d+\]|<pad_?\d+>|<\|pad_?\d+\|>",  # numbered padding rows
)
_PLACEHOLDER = re.compile("|".join(f"(?:{p})" for p in PLACEHOLDER_PATTERNS))


# CJK ideographs, which BERT's normaliser surrounds with spaces (as `BasicTokenizer._is_chinese_char`).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


@dataclass(frozen=True)
class TokenizerFamily:
    """How a tokenizer writes word boundaries.

    Attributes:
        name: one of `FAMILIES`.
        continuation_prefix: the WordPiece continuation prefix (`"##"`), else `""`.
    """

    name: str
    continuation_prefix: str = ""


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=1)
def _unicode_to_latin1() -> dict[int, str]:
    # str.translate table: byte-level character -> the latin-1 character of its byte, so that
    # `.encode("latin-1")` afterwards yields the raw bytes in C, not in a Python loop.
    return {ord(ch): chr(b) for b, ch in bytes_to_unicode().items()}


def _candidates(codes: CodePoints, first_chars: str, lengths: tuple[int, ...] = ()) -> np.ndarray:
    """Indices of strings starting with one of `first_chars` (or with one of `lengths`): cheap prefilter."""
    first = codes.leading(1)[:, 0]
    mask = np.isin(first, [ord(c) for c in first_chars]) | np.isin(codes.lengths, lengths)
    return np.flatnonzero(mask)


@functools.lru_cache(maxsize=1)
def _isolated_table() -> np.ndarray:
    """Code points a BERT-style pre-tokenizer always splits off as a word of their own.

    ASCII punctuation (33-47, 58-64, 91-96, 123-126), Unicode punctuation (category P*) and CJK
    ideographs, as in transformers' `BasicTokenizer` and tokenizers' `BertPreTokenizer`.
    """
    size = max(hi for _, hi in _CJK_RANGES) + 1
    table = np.zeros(size, dtype=bool)
    for cp in range(size):
        if unicodedata.category(chr(cp)).startswith("P"):
            table[cp] = True
    for lo, hi in ((33, 47), (58, 64), (91, 96), (123, 126), *_CJK_RANGES):
        table[lo : hi + 1] = True
    return table


def isolated_mask(texts: Sequence[str]) -> np.ndarray:
    """Texts made only of characters BERT-style tokenizers always isolate (`"."`, `"?!"`, `"中"`).

    Such a token has no word position in a WordPiece vocabulary or a word list: the tokenizer
    that made them split it off whether or not a space preceded it. So BERT's `"."` is the same
    token as byte-level BPE's `"."` (no space) as much as `"Ġ."`.
    """
    codes = CodePoints(texts)
    return (codes.lengths > 0) & (codes.count_in_table(_isolated_table()) == codes.lengths)


def starts_isolated(texts: Sequence[str]) -> np.ndarray:
    """Texts whose first character a BERT-style pre-tokenizer splits off (so it starts a word)."""
    first = CodePoints(texts).leading(1)[:, 0]
    table = _isolated_table()
    return (first < table.size) & table[np.minimum(first, table.size - 1)]


def placeholder_mask(tokens: Sequence[str | None], codes: CodePoints | None = None) -> np.ndarray:
    """Which tokens are reserved placeholder rows (`[unused3]`, `<extra_id_0>`, empty, no token).

    Args:
        tokens: token strings by id.
        codes: `CodePoints` of the same tokens (`None` as `""`), if already at hand.
    """
    strings = [t or "" for t in tokens]
    mask = np.zeros(len(strings), dtype=bool)
    for i in _candidates(codes or CodePoints(strings), "<[m", lengths=(0,)).tolist():
        mask[i] = is_placeholder(strings[i])
    return mask


def is_placeholder(token: str | None) -> bool:
    """Whether one token is a reserved placeholder row (see `PLACEHOLDER_PATTERNS`)."""
    return not token or _PLACEHOLDER.fullmatch(token) is not None


def is_encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (no escaped lone bytes), i.e. can be fed to a tokenizer."""
    return _SURROGATE.search(text) is None


def encodable_mask(texts: Sequence[str]) -> np.ndarray:
    """`is_encodable` for many texts at once, also False for empty texts (nothing to encode)."""
    codes = CodePoints(texts)
    return (codes.lengths > 0) & (codes.count_in_range(0xDC80, 0xDCFF) == 0)


def _component_json(component: Any) -> str:
    if component is None:
        return ""
    try:
        return component.__getstate__().decode("utf-8")
    except (AttributeError, TypeError, UnicodeDecodeError):
        return ""


def detect_family(tokenizer: Any, tokens: Sequence[str | None] | None = None) -> TokenizerFamily:
    """Tell a tokenizer's word-boundary convention from its fast backend, else from its vocabulary.

    Args:
        tokenizer: a transformers tokenizer (fast or slow).
        tokens: its vocabulary by id, used when the tokenizer has no fast backend.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = backend.model
        if type(model).__name__ == "WordPiece":
            return TokenizerFamily(WORDPIECE, model.continuing_subword_prefix or "##")
        parts = " ".join(
            _component_json(c) for c in (backend.pre_tokenizer, backend.decoder, backend.normalizer)
        )
        if '"ByteLevel"' in parts:
            return TokenizerFamily(BYTE_LEVEL)
        # serde writes `▁` literally; a Replace(" " -> "▁") normaliser is how Gemma spells Metaspace.
        if '"Metaspace"' in parts or METASPACE_MARK in parts or "\\u2581" in parts:
            return TokenizerFamily(METASPACE)
    if tokens is None:
        tokens = list(tokenizer.get_vocab())
    return _family_from_vocabulary(tokens)


def _family_from_vocabulary(tokens: Iterable[str | None]) -> TokenizerFamily:
    # Byte-fallback pieces and bracketed control tokens say nothing about word boundaries.
    counts = {"##": 0, "Ġ": 0, METASPACE_MARK: 0}
    total = 0
    for tok in tokens:
        if not tok or _BYTE_FALLBACK.fullmatch(tok) or (tok[0] in "<[" and tok[-1] in ">]"):
            continue
        total += 1
        for mark in counts:
            if tok.startswith(mark):
                counts[mark] += 1
    mark, count = max(counts.items(), key=lambda kv: kv[1])
    if count == 0 or count < 0.02 * total:
        return TokenizerFamily(WORD)
    return {
        "##": TokenizerFamily(WORDPIECE, "##"),
        "Ġ": TokenizerFamily(BYTE_LEVEL),
        METASPACE_MARK: TokenizerFamily(METASPACE),
    }[mark]


def _decode_bytes(latin1: str) -> str:
    return latin1.encode("latin-1").decode("utf-8", "surrogateescape")


# SEP's UTF-8 bytes as latin-1 characters: a complete sequence opening with a lead byte, so it ends
# whatever incomplete sequence a token leaves and decodes back to SEP, never merging two tokens.
_SEP_BYTES = SEP.encode("utf-8").decode("latin-1")


def _decode_all(strings: list[str]) -> list[str] | None:
    """Byte-level strings decoded to text in one translate/encode/decode/split, or None if not possible."""
    joined = _joinable(strings)
    if joined is None:
        return None
    try:
        raw = joined.translate(_unicode_to_latin1()).replace(SEP, _SEP_BYTES).encode("latin-1")
    except UnicodeEncodeError:  # some token is not byte-level text (e.g. an added token in CJK)
        return None
    parts = raw.decode("utf-8", "surrogateescape").split(SEP)
    return parts if len(parts) == len(strings) else None  # a token decoding to SEP itself


def _byte_level_texts(strings: list[str], literal: np.ndarray | None) -> list[str]:
    texts = _decode_all(strings) if strings else []
    if texts is None:
        table = _unicode_to_latin1()
        latin1 = [s.translate(table) for s in strings]
        texts = [
            _decode_bytes(x) if max(x, default="") <= "\xff" else t
            for x, t in zip(latin1, strings, strict=True)
        ]
    if literal is not None:
        for i in np.flatnonzero(literal).tolist():
            texts[i] = strings[i]
    return texts


def _nfc(texts: list[str]) -> list[str]:
    # The quick check is C-level per token; almost every vocabulary is NFC already, so few are rebuilt.
    done = np.fromiter(map(_is_nfc, texts), dtype=bool, count=len(texts))
    for i in np.flatnonzero(~done).tolist():
        texts[i] = unicodedata.normalize("NFC", texts[i])
    return texts


_is_nfc = functools.partial(unicodedata.is_normalized, "NFC")


def canonical_forms(
    tokens: Sequence[str | None],
    family: TokenizerFamily,
    literal: np.ndarray | None = None,
    codes: CodePoints | None = None,
) -> tuple[list[str], np.ndarray]:
    """Canonical `(text, word_start)` of every token of one vocabulary.

    Args:
        tokens: token strings by id (`None` for ids without a token, which come out as `""`).
        family: the vocabulary's convention, from `detect_family`.
        literal: per token, whether it is an added token whose string is plain text rather than
            the model's encoding (byte-level vocabularies store added tokens un-encoded).
        codes: `CodePoints` of the same tokens (`None` as `""`), if already at hand.

    Returns:
        `(texts, word_start)`: NFC-normalised texts with the word-start marker removed, and a
        bool array flagging the tokens that start a word.
    """
    strings = [t or "" for t in tokens]
    name = family.name
    if codes is None and name in (WORDPIECE, METASPACE):
        codes = CodePoints(strings)
    if name == WORDPIECE:
        prefix = family.continuation_prefix
        continuation = codes.startswith(prefix, min_length=len(prefix) + 1)
        texts, starts = strip_prefix(strings, prefix, continuation), ~continuation
    elif name == BYTE_LEVEL:
        texts = _byte_level_texts(strings, literal)
        starts = CodePoints(texts).startswith(" ")
        texts = strip_prefix(texts, " ", starts)
    elif name == METASPACE:
        # Drop each leading ▁ (the separator marks where a token starts), then ▁ inside is a space.
        starts = codes.startswith(METASPACE_MARK)
        texts = bulk_map(
            strings, lambda s: (SEP + s).replace(SEP + METASPACE_MARK, SEP)[1:].replace(METASPACE_MARK, " ")
        )
        for i in _candidates(codes, "<").tolist():
            match = _BYTE_FALLBACK.fullmatch(strings[i])
            if match is not None:
                texts[i], starts[i] = _from_byte(int(match.group(1), 16))
    else:
        texts, starts = list(strings), np.ones(len(strings), dtype=bool)
    return _nfc(texts), starts


def _from_byte(value: int) -> tuple[str, bool]:
    # A space byte is a bare word start, as `Ġ` and `▁` alone are.
    if value == 0x20:
        return "", True
    return bytes([value]).decode("utf-8", "surrogateescape"), False


def is_byte_piece_mask(
    tokens: Sequence[str | None], family: TokenizerFamily, codes: CodePoints | None = None
) -> np.ndarray:
    """Byte-fallback pieces (`<0x41>`), which regular pieces outrank when both match."""
    mask = np.zeros(len(tokens), dtype=bool)
    if family.name == METASPACE:
        strings = [t or "" for t in tokens]
        for i in _candidates(codes or CodePoints(strings), "<").tolist():
            mask[i] = _BYTE_FALLBACK.fullmatch(strings[i]) is not None
    return mask
