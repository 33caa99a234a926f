"""Token surfaces -> canonical (text, word_start), family detection, placeholders, position-free tokens."""

from __future__ import annotations

import numpy as np
import pytest

from hf_embfuse.alignment import (
    FAMILIES,
    TokenizerFamily,
    Vocabulary,
    canonical_forms,
    detect_family,
    is_placeholder,
)
from hf_embfuse.alignment._strings import CodePoints, bulk_map, strip_prefix
from hf_embfuse.alignment.canonical import (
    BYTE_LEVEL,
    METASPACE,
    WORD,
    WORDPIECE,
    bytes_to_unicode,
    encodable_mask,
    isolated_mask,
    placeholder_mask,
    starts_isolated,
)
from tests.fixtures_tokenizers import FACTORIES, WORDPIECE_SPECIALS

WP = TokenizerFamily(WORDPIECE, "##")
BL = TokenizerFamily(BYTE_LEVEL)
MS = TokenizerFamily(METASPACE)
WD = TokenizerFamily(WORD)


@pytest.mark.parametrize(
    ("family", "token", "text", "word_start"),
    [
        # WordPiece: no prefix = word start (BERT's "the"), "##" = continuation
        (WP, "the", "the", True),
        (WP, "##ing", "ing", False),
        (WP, "##", "##", True),  # the bare prefix is a literal token, not an empty continuation
        (WP, "[CLS]", "[CLS]", True),
        # byte-level BPE: Ġ = word start, bytes decoded properly
        (BL, "Ġthe", "the", True),
        (BL, "the", "the", False),
        (BL, "ing", "ing", False),
        (BL, "Ã©", "é", False),
        (BL, "ĠcafÃ©", "café", True),
        (BL, "Ġ", "", True),  # a bare space
        (BL, "ĠĠ", " ", True),
        (BL, "Ċ", "\n", False),
        (BL, "Ã", "\udcc3", False),  # a lone byte stays a byte (surrogate escape), not "Ã"
        # SentencePiece / Metaspace: ▁ = word start, byte fallback = the byte
        (MS, "▁the", "the", True),
        (MS, "ing", "ing", False),
        (MS, "▁New▁York", "New York", True),
        (MS, "▁", "", True),
        (MS, "<0x41>", "A", False),
        (MS, "<0xC3>", "\udcc3", False),
        (MS, "<0x20>", "", True),  # the space byte is a bare word start, like ▁ and Ġ
        # whole words
        (WD, "Paris", "Paris", True),
        (WD, "e\u0301", "é", True),  # NFC: decomposed accents meet composed ones
    ],
)
def test_canonical_form(family, token, text, word_start):
    texts, starts = canonical_forms([token], family)
    assert (texts[0], bool(starts[0])) == (text, word_start)


def test_byte_level_and_byte_fallback_bytes_meet():
    """GPT-2's lone byte Ã (0xC3) and SentencePiece's <0xC3> are the same canonical byte."""
    (bl,), _ = canonical_forms(["Ã"], BL)
    (ms,), _ = canonical_forms(["<0xC3>"], MS)
    assert bl == ms and not encodable_mask([bl])[0]


def test_byte_level_added_tokens_are_literal():
    """Added tokens of a byte-level vocabulary are stored as plain text, not byte-encoded."""
    texts, starts = canonical_forms(["é", "Ã©"], BL, literal=np.array([True, False]))
    assert texts == ["é", "é"] and not starts.any()


def test_bytes_to_unicode_is_gpt2_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("[unused12]", True),
        ("<unused34>", True),
        ("<extra_id_5>", True),
        ("<|reserved_special_token_3|>", True),
        ("<reserved_7>", True),
        ("<|extra_0|>", True),
        ("madeupword0001", True),
        ("", True),
        (None, True),
        ("[PAD]", False),  # a role token, not a placeholder
        ("<s>", False),
        ("unused", False),
        ("<table>", False),
        ("\n", False),  # whitespace tokens are content (Gemma has them)
    ],
)
def test_placeholder(token, expected):
    assert is_placeholder(token) is expected
    assert placeholder_mask([token])[0] == expected


def test_placeholder_mask_matches_scalar_check_on_mixed_list():
    tokens = ["<unused1>", "the", "[unused0]", None, "<extra_id_0>", "m", "madeupword3", "<x>", "[CLS]"]
    assert placeholder_mask(tokens).tolist() == [is_placeholder(t) for t in tokens]


@pytest.mark.parametrize(
    ("text", "isolated", "starts"),
    [
        (".", True, True),
        ("?!", True, True),
        ("中", True, True),
        ("'s", False, True),
        ("a.", False, False),
        ("", False, False),
    ],
)
def test_position_free_tokens(text, isolated, starts):
    assert isolated_mask([text])[0] == isolated
    assert starts_isolated([text])[0] == starts


@pytest.mark.parametrize(
    ("name", "family"), [("wordpiece", WORDPIECE), ("bpe", BYTE_LEVEL), ("unigram", METASPACE)]
)
def test_detect_family_of_fixtures(name, family):
    detected = detect_family(FACTORIES[name]())
    assert detected.name == family and detected.name in FAMILIES
    assert detected.continuation_prefix == ("##" if family == WORDPIECE else "")


class _SlowTokenizer:
    """A stand-in for a tokenizer without a fast backend: only `get_vocab`."""

    def __init__(self, tokens):
        self.tokens = tokens

    def get_vocab(self):
        return {t: i for i, t in enumerate(self.tokens)}


@pytest.mark.parametrize(
    ("tokens", "family"),
    [
        (["the", "##ing", "##s", "cat", "##ed"], WORDPIECE),
        (["Ġthe", "ing", "Ġcat", "s"], BYTE_LEVEL),
        (["▁the", "ing", "▁cat", "s"], METASPACE),
        (["the", "cat", "dog"], WORD),
    ],
)
def test_detect_family_from_vocabulary_without_backend(tokens, family):
    assert detect_family(_SlowTokenizer(tokens)).name == family


def test_vocabulary_of_wordpiece_fixture():
    tok = FACTORIES["wordpiece"]()
    vocab = Vocabulary.from_tokenizer(tok)
    ids = tok.convert_tokens_to_ids
    assert vocab.roles == {
        "bos": ids("[CLS]"),
        "eos": ids("[SEP]"),
        "mask": ids("[MASK]"),
        "unk": ids("[UNK]"),
        "pad": ids("[PAD]"),
    }
    assert vocab.placeholder[[ids("[unused0]"), ids("[unused2]")]].all()
    assert not vocab.special[ids("[unused0]")] and vocab.special[ids("[PAD]")]
    assert not vocab.word_start[ids("##ing")] and vocab.word_start[ids("ing")]
    assert vocab.isolated[ids("!")] and not vocab.isolated[ids("the")]


def test_vocabulary_of_byte_level_fixture_has_multi_role_token():
    tok = FACTORIES["bpe"]()
    vocab = Vocabulary.from_tokenizer(tok)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert vocab.roles == {"bos": eot, "eos": eot, "unk": eot}
    assert vocab.placeholder[tok.convert_tokens_to_ids("<|reserved_special_token_0|>")]


# --------------------------------------------------------------------------- bulk string helpers


@pytest.mark.parametrize("strings", [["a", "Bß", "", "Ünï"], ["x\uffffy", "z"], [], ["only"]])
def test_bulk_map_equals_loop(strings):
    assert bulk_map(strings, str.casefold) == [s.casefold() for s in strings]


def test_strip_prefix_only_where_masked():
    strings = ["##ing", "##", "the", "##ed"]
    mask = np.array([True, False, False, True])
    assert strip_prefix(strings, "##", mask) == ["ing", "##", "the", "ed"]


def test_code_points_lengths_and_leading():
    codes = CodePoints(["ab", "", "ç\udcc3x"])
    assert codes.lengths.tolist() == [2, 0, 3]
    assert codes.leading(2).tolist() == [[97, 98], [0, 0], [0xE7, 0xDCC3]]
    assert codes.count_in_range(0xDC80, 0xDCFF).tolist() == [0, 0, 1]


# --------------------------------------------------------------------------- the shared tokenizer fixtures


def test_fixture_layouts():
    """The documented ids of tests/fixtures_tokenizers.py, which other test modules rely on."""
    wp, bpe, uni = (FACTORIES[name]() for name in ("wordpiece", "bpe", "unigram"))
    assert wp.convert_ids_to_tokens(list(range(8))) == list(WORDPIECE_SPECIALS)
    assert (wp.cls_token, wp.sep_token, wp.pad_token, wp.mask_token) == ("[CLS]", "[SEP]", "[PAD]", "[MASK]")
    assert bpe.convert_ids_to_tokens(0) == "<|endoftext|>" == bpe.bos_token == bpe.eos_token
    assert len(set(bpe.convert_ids_to_tokens(list(range(1, 257))))) == 256  # the byte symbols
    assert (
        bpe.tokenize(" hello") == ["Ġhello"]
        and bpe.convert_ids_to_tokens(len(bpe) - 1) == "<|reserved_special_token_0|>"
    )
    assert uni.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<unk>", "<s>", "</s>", "<pad>", "<0x00>"]
    assert uni.tokenize("é") == ["▁", "<0xC3>", "<0xA9>"]
    for tok in (wp, bpe, uni):
        assert len(tok) <= 400 and tok.backend_tokenizer is not None
