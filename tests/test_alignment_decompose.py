"""PieceEncoder: word starts and continuations are encoded as such in every family, whatever prefix-space
settings the source tokenizer ships with."""

from __future__ import annotations

import pytest
import torch
from tokenizers import normalizers, pre_tokenizers

from hf_embfuse.alignment import OUTCOMES, Vocabulary, align_source
from hf_embfuse.alignment.decompose import PieceEncoder
from hf_embfuse.sources import SourceTable
from tests.fixtures_tokenizers import FACTORIES, make_wordpiece_tokenizer, random_table


def _pieces(tokenizer, texts: list[str], word_start: bool) -> list[list[str]]:
    encoder = PieceEncoder(tokenizer, Vocabulary.from_tokenizer(tokenizer).family)
    flat, lengths = encoder.encode(texts, word_start)
    tokens = tokenizer.convert_ids_to_tokens(flat.tolist())
    out, at = [], 0
    for n in lengths.tolist():
        out.append(tokens[at : at + n])
        at += n
    return out


def _with_prefix_space(name: str):
    """The fixture with the family's automatic prefix space switched on (where it is a setting)."""
    tok = FACTORIES[name]()
    backend = tok.backend_tokenizer
    if name == "bpe":  # RoBERTa-style add_prefix_space=True
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    elif name == "unigram":  # Llama-2-style: the normaliser prepends ▁, no pre-tokenizer
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = None
    else:  # BERT checkpoints often ship with padding and truncation switched on
        backend.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
        backend.enable_truncation(max_length=16)
    return tok


CASES = [
    # family, text, word start?, pieces
    ("wordpiece", "walking", True, ["walk", "##ing"]),
    ("wordpiece", "ing", True, ["ing"]),
    ("wordpiece", "ing", False, ["##ing"]),
    ("wordpiece", "ingly", False, ["##ing", "##ly"]),
    ("wordpiece", "lo's", False, ["##lo", "'", "s"]),  # BERT splits the apostrophe off
    ("bpe", "ing", True, ["Ġing"]),
    ("bpe", "ing", False, ["ing"]),
    ("bpe", "hello", True, ["Ġhello"]),
    ("bpe", "é", False, ["Ã©"]),
    ("bpe", "New York", True, ["ĠNew", "ĠYork"]),
    ("unigram", "ing", True, ["▁ing"]),
    ("unigram", "ing", False, ["in", "g"]),
    ("unigram", "hello", True, ["▁hel", "lo"]),
    ("unigram", "é", False, ["<0xC3>", "<0xA9>"]),
    ("unigram", "New York", True, ["▁New", "▁York"]),
]


@pytest.mark.parametrize("prefix_space", [False, True], ids=["as-built", "prefix-space-on"])
@pytest.mark.parametrize(("name", "text", "word_start", "pieces"), CASES)
def test_encode_position(name, text, word_start, pieces, prefix_space):
    tok = _with_prefix_space(name) if prefix_space else FACTORIES[name]()
    assert _pieces(tok, [text], word_start) == [pieces]


def test_source_tokenizer_is_left_untouched():
    tok = _with_prefix_space("wordpiece")
    before = tok.backend_tokenizer.to_str()
    _pieces(tok, ["walking", "ing"], False)
    assert tok.backend_tokenizer.to_str() == before
    assert len(tok.backend_tokenizer.encode("the").ids) == 16  # still padded as shipped


def test_position_free_continuations_become_word_starts_for_wordpiece():
    tok = FACTORIES["wordpiece"]()
    encoder = PieceEncoder(tok, Vocabulary.from_tokenizer(tok).family)
    assert encoder.position_free(["!", "'s", "ing", "中"]).tolist() == [True, True, False, True]
    bpe = FACTORIES["bpe"]()
    assert not PieceEncoder(bpe, Vocabulary.from_tokenizer(bpe).family).position_free(["!"]).any()


def test_wordpiece_fallback_to_a_word_start_piece_is_rejected():
    """WordPiece's greedy match of `##a` can fall back to the word-start `#` + `###a`: not a continuation."""
    source_tok = make_wordpiece_tokenizer(words=["#", "###a", "b"])
    assert _pieces(source_tok, ["a"], False) == [["#", "###a"]]
    base = FACTORIES["bpe"]()
    source = SourceTable(name="wp", kind="hf", weight=random_table(source_tok), tokenizer=source_tok)
    aligned = align_source(base, source, allow_low_coverage=True)
    row = base.convert_tokens_to_ids("a")  # byte-level "a" continues a word
    assert OUTCOMES[int(aligned.outcomes[row])] == "uncovered"
    assert torch.count_nonzero(aligned.table[row]) == 0


def test_slow_tokenizer_source_is_aligned_without_decomposition(caplog):
    """A tokenizer without a fast backend still gets the dictionary steps; decomposition is skipped."""

    class Slow:
        def __init__(self, fast):
            self._fast = fast
            self.bos_token, self.eos_token, self.unk_token = fast.bos_token, fast.eos_token, fast.unk_token
            self.all_special_ids = fast.all_special_ids

        def __len__(self):
            return len(self._fast)

        def get_vocab(self):
            return self._fast.get_vocab()

    fast = FACTORIES["unigram"]()
    base = FACTORIES["wordpiece"]()
    source = SourceTable(name="slow", kind="hf", weight=random_table(fast), tokenizer=Slow(fast))
    aligned = align_source(base, source)
    assert "not decomposing" in caplog.text and aligned.report.counts["decomposed"] == 0
    row = base.convert_tokens_to_ids("the")
    torch.testing.assert_close(aligned.table[row], source.weight[fast.convert_tokens_to_ids("▁the")])
