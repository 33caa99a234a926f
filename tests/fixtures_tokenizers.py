"""Small in-memory tokenizers of the three families real checkpoints use, fully offline.

Each factory builds a `tokenizers.Tokenizer` from an explicit vocabulary and wraps it in
`PreTrainedTokenizerFast`, so the result behaves like `AutoTokenizer.from_pretrained(...)` of the
family it imitates (special-token roles, `backend_tokenizer`, `added_tokens_decoder`):

* `make_wordpiece_tokenizer()`: BERT-like, uncased WordPiece: `[PAD]`, `[unused0..2]`, `[UNK]`,
  `[CLS]`, `[SEP]`, `[MASK]`, letters, `##` continuation pieces, a few words.
* `make_bpe_tokenizer()`: GPT-2-like byte-level BPE: all 256 byte symbols, merged words written with
  `Ġ` for a leading space, `<|endoftext|>` as bos/eos/unk and one reserved placeholder token.
* `make_unigram_tokenizer()`: SentencePiece-like Unigram with `▁` word starts, `<unk>`, `<s>`,
  `</s>`, `<pad>`, byte-fallback pieces `<0x00>..<0xFF>` and two `<extra_id_*>` sentinels.

Every factory takes the vocabulary as an argument (defaults below), so a test can build the family
with exactly the tokens it needs; `DEFAULT_*` document what the defaults hold and why. Pytest
fixtures of the same names without `make_` return the default tokenizers.

`random_table(tokenizer_or_rows, dim, seed)` gives a deterministic embedding table for a tokenizer.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# --------------------------------------------------------------------------- WordPiece (BERT-like)

WORDPIECE_SPECIALS = ("[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEFAULT_WORDPIECE_WORDS: tuple[str, ...] = (
    # whole words (word-start pieces)
    "the", "cat", "dog", "play", "walk", "hello", "new", "york", "paris", "ing", "un", "happy",
    # continuation pieces
    "##ing", "##ed", "##s", "##ly", "##able", "##é", "##lo",
    # single characters so that most lower-case ASCII text can be tokenised
    *string.ascii_lowercase, *(f"##{c}" for c in string.ascii_lowercase),
    "!", "'", ",", "-", ".", "#", "##'", "##.",
)  # fmt: skip


def make_wordpiece_tokenizer(
    words: Sequence[str] = DEFAULT_WORDPIECE_WORDS,
    *,
    lowercase: bool = True,
    specials: Sequence[str] = WORDPIECE_SPECIALS,
) -> PreTrainedTokenizerFast:
    """A BERT-like WordPiece tokenizer.

    Args:
        words: the vocabulary after the special tokens; `##x` marks a continuation piece.
        lowercase: BERT-uncased normalisation (lower-case, strip accents).
        specials: the first ids; must include `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]` and `[MASK]`.
    """
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*specials, *words]))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


# --------------------------------------------------------------------------- byte-level BPE (GPT-2-like)

BPE_SPECIALS = ("<|endoftext|>",)
BPE_PLACEHOLDERS = ("<|reserved_special_token_0|>",)
DEFAULT_BPE_WORDS: tuple[str, ...] = (
    # raw text: a leading space marks a word start (written Ġ in the vocabulary)
    " the", " The", " cat", " dog", " play", "ing", " ing", "ed", " walk", " hello", " Paris",
    " New", " York", "é", " caf", "'s", " un", " happy", "ly",
)  # fmt: skip


def _byte_level(text: str) -> str:
    (piece, _), *rest = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(
        text
    )
    assert not rest, text
    return piece


def _merges_for(
    tokens: Sequence[str], alphabet: Sequence[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A vocabulary and merge list in which every token of `tokens` is reachable by merges.

    Each new token is split into two known tokens (longest known left part first); where none
    exists, its prefix without the last symbol is added first, recursively.
    """
    vocab = list(alphabet)
    known = set(vocab)
    merges: list[tuple[str, str]] = []

    def add(token: str) -> None:
        if token in known:
            return
        for cut in range(len(token) - 1, 0, -1):
            left, right = token[:cut], token[cut:]
            if left in known and right in known:
                break
        else:
            left, right = token[:-1], token[-1]
            add(left)
        merges.append((left, right))
        vocab.append(token)
        known.add(token)

    for token in tokens:
        add(token)
    return {t: i for i, t in enumerate(vocab)}, merges


def make_bpe_tokenizer(words: Sequence[str] = DEFAULT_BPE_WORDS) -> PreTrainedTokenizerFast:
    """A GPT-2-like byte-level BPE tokenizer.

    Ids: `<|endoftext|>` 0 (bos = eos = unk, as GPT-2), the 256 byte symbols, then `words` (raw
    text, byte-level encoded here, with intermediate merge results) and last the reserved
    placeholder `<|reserved_special_token_0|>` as an added special token.

    Args:
        words: raw texts to make single tokens; a leading space makes a word-start (`Ġ`) token.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, merges = _merges_for([_byte_level(w) for w in words], [*BPE_SPECIALS, *alphabet])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in (*BPE_SPECIALS, *BPE_PLACEHOLDERS)])
    for word in words:  # the merges must rebuild every word as one token
        assert tok.encode(word).tokens == [_byte_level(word)], (word, tok.encode(word).tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=list(BPE_PLACEHOLDERS),
    )


# --------------------------------------------------------------------------- SentencePiece-like Unigram

UNIGRAM_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
UNIGRAM_PLACEHOLDERS = ("<extra_id_0>", "<extra_id_1>")
DEFAULT_UNIGRAM_PIECES: tuple[str, ...] = (
    # `▁` marks a word start; no bare `ing` (only `▁ing`) and no `é` (byte fallback covers it)
    "▁", "▁the", "▁The", "▁cat", "▁dog", "▁play", "▁ing", "▁Paris", "▁New", "▁York", "▁hel", "lo",
    "▁walk", "ed", "s", "▁caf", "in", "▁un", "▁happy", "ly",
    *string.ascii_lowercase, *string.ascii_uppercase, "'", ".", ",", "!", "-",
)  # fmt: skip


def make_unigram_tokenizer(
    pieces: Sequence[str] = DEFAULT_UNIGRAM_PIECES, *, byte_fallback: bool = True
) -> PreTrainedTokenizerFast:
    """A SentencePiece-like Unigram tokenizer (T5 / Llama-2 conventions).

    Ids: `<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3, then `<0x00>`..`<0xFF>` (if `byte_fallback`), then
    `pieces`, and last the `<extra_id_0>`, `<extra_id_1>` sentinels as added special tokens. Every
    piece scores the same, so the segmentation with the fewest pieces wins.

    Args:
        pieces: the vocabulary pieces; a leading `▁` makes a word-start piece.
        byte_fallback: encode characters outside the vocabulary as their UTF-8 bytes.
    """
    bytes_ = [f"<0x{b:02X}>" for b in range(256)] if byte_fallback else []
    vocab = [(p, 0.0) for p in UNIGRAM_SPECIALS] + [(p, -1.0) for p in dict.fromkeys([*bytes_, *pieces])]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=byte_fallback))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁")])
    tok.add_special_tokens([AddedToken(t, special=True) for t in (*UNIGRAM_SPECIALS, *UNIGRAM_PLACEHOLDERS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=list(UNIGRAM_PLACEHOLDERS),
    )


# --------------------------------------------------------------------------- helpers and fixtures

FACTORIES = {
    "wordpiece": make_wordpiece_tokenizer,
    "bpe": make_bpe_tokenizer,
    "unigram": make_unigram_tokenizer,
}


def random_table(rows: int | PreTrainedTokenizerFast, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """A deterministic `(rows, dim)` float32 table; `rows` may be a tokenizer (one row per token)."""
    n = rows if isinstance(rows, int) else len(rows)
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    return make_wordpiece_tokenizer()


@pytest.fixture
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    return make_bpe_tokenizer()


@pytest.fixture
def unigram_tokenizer() -> PreTrainedTokenizerFast:
    return make_unigram_tokenizer()
