"""align_source: every outcome for every family pairing, checked row by row against the source table."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from hf_embfuse.alignment import (
    ANCHOR_OUTCOMES,
    COVERED_OUTCOMES,
    OUTCOMES,
    AlignedSource,
    AlignmentError,
    AlignmentReport,
    Vocabulary,
    align_source,
)
from hf_embfuse.sources import SourceTable
from tests.fixtures_tokenizers import FACTORIES, make_bpe_tokenizer, random_table

DIM = 8
STATIC_WORDS = ["the", "cat", "Paris", "hello", "ing", ",", "!", "new", "York"]


def _tokenizer(name: str):
    # The fixtures are rebuilt per call: cheap (milliseconds), and no test can mutate another's tokenizer.
    return FACTORIES[name]()


def _source(name: str, seed: int = 1) -> SourceTable:
    if name == "static":
        return SourceTable(
            name="static",
            kind="vectors",
            weight=random_table(len(STATIC_WORDS), DIM, seed),
            vocab=STATIC_WORDS,
        )
    tok = _tokenizer(name)
    return SourceTable(name=name, kind="hf", weight=random_table(tok, DIM, seed), tokenizer=tok)


def _row_ids(source: SourceTable, pieces: list[str]) -> list[int]:
    if source.vocab is not None:
        return [source.vocab.index(p) for p in pieces]
    ids = source.tokenizer.convert_tokens_to_ids(pieces)
    assert all(source.tokenizer.convert_ids_to_tokens(i) == p for i, p in zip(ids, pieces, strict=True)), (
        pieces
    )
    return ids


def _outcome(aligned: AlignedSource, row: int) -> str:
    return OUTCOMES[int(aligned.outcomes[row])]


# (base family, source family, base token, outcome, source pieces whose mean the row must equal)
CASES = [
    # ---- WordPiece base <- byte-level BPE source
    ("wordpiece", "bpe", "[CLS]", "special", ["<|endoftext|>"]),  # cls = bos role
    ("wordpiece", "bpe", "[SEP]", "special", ["<|endoftext|>"]),  # sep = eos role
    ("wordpiece", "bpe", "[UNK]", "special", ["<|endoftext|>"]),
    ("wordpiece", "bpe", "[PAD]", "unmatched_special", None),  # GPT-2 has no pad token
    ("wordpiece", "bpe", "[MASK]", "unmatched_special", None),
    ("wordpiece", "bpe", "[unused0]", "placeholder", None),
    ("wordpiece", "bpe", "the", "canonical", ["Ġthe"]),  # BERT "the" starts a word, like Ġthe
    ("wordpiece", "bpe", "ing", "canonical", ["Ġing"]),
    ("wordpiece", "bpe", "##ing", "canonical", ["ing"]),  # continuation meets continuation, not Ġing
    ("wordpiece", "bpe", "##é", "canonical", ["Ã©"]),  # byte-level bytes decoded
    ("wordpiece", "bpe", "paris", "casefold", ["ĠParis"]),
    ("wordpiece", "bpe", "##able", "decomposed", ["a", "b", "l", "e"]),
    ("wordpiece", "bpe", "a", "decomposed", ["Ġ", "a"]),
    ("wordpiece", "bpe", "!", "canonical", ["!"]),  # BERT's "!" has no word position
    # ---- WordPiece base <- SentencePiece Unigram source
    ("wordpiece", "unigram", "[CLS]", "special", ["<s>"]),
    ("wordpiece", "unigram", "[SEP]", "special", ["</s>"]),
    ("wordpiece", "unigram", "[PAD]", "special", ["<pad>"]),
    ("wordpiece", "unigram", "[UNK]", "special", ["<unk>"]),
    ("wordpiece", "unigram", "[MASK]", "unmatched_special", None),
    ("wordpiece", "unigram", "the", "canonical", ["▁the"]),
    ("wordpiece", "unigram", "##lo", "canonical", ["lo"]),
    ("wordpiece", "unigram", "new", "casefold", ["▁New"]),
    ("wordpiece", "unigram", "##ing", "decomposed", ["in", "g"]),  # never the word-initial ▁ing
    ("wordpiece", "unigram", "ing", "canonical", ["▁ing"]),
    ("wordpiece", "unigram", "hello", "decomposed", ["▁hel", "lo"]),
    ("wordpiece", "unigram", "##é", "decomposed", ["<0xC3>", "<0xA9>"]),  # byte fallback pieces
    # ---- WordPiece base <- static word vectors (whole words only)
    ("wordpiece", "static", "the", "exact", ["the"]),
    ("wordpiece", "static", "paris", "casefold", ["Paris"]),
    ("wordpiece", "static", "york", "casefold", ["York"]),
    ("wordpiece", "static", "##ing", "uncovered", None),  # a continuation is not the word "ing"
    ("wordpiece", "static", "ing", "exact", ["ing"]),
    ("wordpiece", "static", "walk", "uncovered", None),  # no tokenizer: nothing to decompose with
    ("wordpiece", "static", "[CLS]", "unmatched_special", None),
    ("wordpiece", "static", "!", "exact", ["!"]),
    # ---- byte-level BPE base <- WordPiece source
    ("bpe", "wordpiece", "<|endoftext|>", "special", ["[CLS]"]),  # bos, eos, unk: bos comes first
    ("bpe", "wordpiece", "<|reserved_special_token_0|>", "placeholder", None),
    ("bpe", "wordpiece", "Ġthe", "canonical", ["the"]),
    ("bpe", "wordpiece", "ĠThe", "casefold", ["the"]),
    ("bpe", "wordpiece", "ing", "canonical", ["##ing"]),
    ("bpe", "wordpiece", "Ġing", "canonical", ["ing"]),
    ("bpe", "wordpiece", "Ã©", "canonical", ["##é"]),
    ("bpe", "wordpiece", "Ã", "uncovered", None),  # a lone byte: BERT has no byte pieces
    ("bpe", "wordpiece", "in", "decomposed", ["##i", "##n"]),
    ("bpe", "wordpiece", "Ġcaf", "decomposed", ["c", "##a", "##f"]),
    ("bpe", "wordpiece", "'s", "decomposed", ["'", "s"]),  # BERT splits the apostrophe off: "s" starts a word
    ("bpe", "wordpiece", "!", "exact", ["!"]),
    ("bpe", "wordpiece", '"', "uncovered", None),  # BERT gives [UNK]: never mixed into a content row
    # ---- byte-level BPE base <- Unigram source
    ("bpe", "unigram", "<|endoftext|>", "special", ["<s>"]),
    ("bpe", "unigram", "ed", "exact", ["ed"]),
    ("bpe", "unigram", "Ġthe", "canonical", ["▁the"]),
    ("bpe", "unigram", "ĠThe", "canonical", ["▁The"]),
    ("bpe", "unigram", "Ġ", "canonical", ["▁"]),
    ("bpe", "unigram", "Ã", "canonical", ["<0xC3>"]),  # byte meets byte fallback
    ("bpe", "unigram", "ing", "decomposed", ["in", "g"]),
    ("bpe", "unigram", "Ã©", "decomposed", ["<0xC3>", "<0xA9>"]),
    ("bpe", "unigram", "Ġhello", "decomposed", ["▁hel", "lo"]),
    # ---- byte-level BPE base <- static vectors
    ("bpe", "static", "Ġthe", "canonical", ["the"]),
    ("bpe", "static", "ĠParis", "canonical", ["Paris"]),
    ("bpe", "static", "ĠThe", "casefold", ["the"]),
    ("bpe", "static", "ing", "uncovered", None),
    ("bpe", "static", "!", "exact", ["!"]),
    # ---- Unigram base <- byte-level BPE source
    ("unigram", "bpe", "<s>", "special", ["<|endoftext|>"]),
    ("unigram", "bpe", "</s>", "special", ["<|endoftext|>"]),
    ("unigram", "bpe", "<unk>", "special", ["<|endoftext|>"]),
    ("unigram", "bpe", "<pad>", "unmatched_special", None),
    ("unigram", "bpe", "<extra_id_0>", "placeholder", None),
    ("unigram", "bpe", "<0x41>", "canonical", ["A"]),
    ("unigram", "bpe", "<0xC3>", "canonical", ["Ã"]),
    ("unigram", "bpe", "▁", "canonical", ["Ġ"]),
    ("unigram", "bpe", "▁hel", "canonical", ["Ġhel"]),
    ("unigram", "bpe", "ed", "exact", ["ed"]),
    ("unigram", "bpe", "lo", "decomposed", ["l", "o"]),
    # ---- Unigram base <- WordPiece source
    ("unigram", "wordpiece", "<s>", "special", ["[CLS]"]),
    ("unigram", "wordpiece", "</s>", "special", ["[SEP]"]),
    ("unigram", "wordpiece", "<pad>", "special", ["[PAD]"]),
    ("unigram", "wordpiece", "<unk>", "special", ["[UNK]"]),
    ("unigram", "wordpiece", "▁Paris", "casefold", ["paris"]),
    ("unigram", "wordpiece", "s", "canonical", ["##s"]),
    ("unigram", "wordpiece", ",", "exact", [","]),
    ("unigram", "wordpiece", "▁hel", "decomposed", ["h", "##e", "##l"]),
    ("unigram", "wordpiece", "<0xC3>", "uncovered", None),
    ("unigram", "wordpiece", "▁", "uncovered", None),  # a bare word start: no text to encode
    # ---- Unigram base <- static vectors
    ("unigram", "static", "▁the", "canonical", ["the"]),
    ("unigram", "static", "lo", "uncovered", None),
    # ---- same family: everything is exact or special
    ("wordpiece", "wordpiece", "##ing", "exact", ["##ing"]),
    ("wordpiece", "wordpiece", "[MASK]", "special", ["[MASK]"]),
    ("bpe", "bpe", "Ã©", "exact", ["Ã©"]),
    ("unigram", "unigram", "<0xC3>", "exact", ["<0xC3>"]),
    ("unigram", "unigram", "<0x41>", "exact", ["<0x41>"]),  # not the regular "A" with the same text
    ("wordpiece", "wordpiece", "##'", "exact", ["##'"]),  # not the position-free "'"
    ("unigram", "unigram", "<pad>", "special", ["<pad>"]),
]

PAIRS = sorted({(b, s) for b, s, *_ in CASES})


@pytest.fixture(scope="module")
def aligned_pairs() -> dict[tuple[str, str], tuple]:
    out = {}
    for base_name, source_name in PAIRS:
        base, source = _tokenizer(base_name), _source(source_name)
        out[base_name, source_name] = (base, source, align_source(base, source, allow_low_coverage=True))
    return out


@pytest.mark.parametrize(("base_name", "source_name", "token", "outcome", "pieces"), CASES)
def test_outcome_and_row(aligned_pairs, base_name, source_name, token, outcome, pieces):
    base, source, aligned = aligned_pairs[base_name, source_name]
    row = base.convert_tokens_to_ids(token)
    assert base.convert_ids_to_tokens(row) == token
    assert _outcome(aligned, row) == outcome
    assert bool(aligned.coverage[row]) == (pieces is not None)
    if pieces is None:
        assert torch.count_nonzero(aligned.table[row]) == 0
        return
    expected = source.weight[_row_ids(source, pieces)].mean(0)
    torch.testing.assert_close(aligned.table[row], expected)
    if outcome != "decomposed":
        assert int(aligned.source_index[row]) == _row_ids(source, pieces)[0]


def test_every_outcome_but_beyond_vocab_occurs_in_the_table():
    assert {c[3] for c in CASES} == set(OUTCOMES) - {"beyond_vocab"}


@pytest.mark.parametrize(("base_name", "source_name"), PAIRS)
def test_report_is_consistent_with_rows(aligned_pairs, base_name, source_name):
    base, _, aligned = aligned_pairs[base_name, source_name]
    report = aligned.report
    assert report.num_rows == report.tokenizer_size == len(base) == aligned.table.shape[0]
    assert aligned.table.dtype == torch.float32 and aligned.table.shape[1] == DIM
    assert sum(report.counts.values()) == report.num_rows
    assert set(report.counts) == set(OUTCOMES)
    for i, name in enumerate(OUTCOMES):
        assert report.counts[name] == int((aligned.outcomes == i).sum()), name
    covered = aligned.outcome_mask(*COVERED_OUTCOMES)
    assert torch.equal(covered, aligned.coverage)
    assert report.num_covered == int(aligned.coverage.sum())
    assert report.coverage == pytest.approx(aligned.coverage.float().mean().item())
    content = ~aligned.outcome_mask("special", "unmatched_special", "placeholder", "beyond_vocab")
    assert report.num_content == int(content.sum())
    assert report.content_coverage == pytest.approx(aligned.coverage[content].float().mean().item())
    # Uncovered rows are zero; one-to-one rows point at their source row, the others at none.
    assert torch.count_nonzero(aligned.table[~aligned.coverage]) == 0
    one_to_one = aligned.outcome_mask("special", *ANCHOR_OUTCOMES)
    assert torch.equal(aligned.source_index >= 0, one_to_one)
    assert torch.equal(aligned.anchor_mask, aligned.outcome_mask(*ANCHOR_OUTCOMES))
    assert len(report.uncovered_sample) <= 20


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_tokenizer_aligned_to_itself_is_the_identity(name):
    source = _source(name)
    aligned = align_source(source.tokenizer, source)
    rows = ~aligned.outcome_mask("placeholder")
    assert aligned.outcome_mask("special", "exact")[rows].all(), aligned.report.counts
    assert torch.equal(aligned.source_index[rows], torch.arange(len(source.tokenizer))[rows])
    assert torch.equal(aligned.table[rows], source.weight[rows])


def test_wordpiece_continuation_never_takes_a_word_initial_piece():
    """`##ing` against a BPE without a bare `ing`: decomposed into continuation pieces, not Ġing."""
    base = _tokenizer("wordpiece")
    bpe = make_bpe_tokenizer(words=(" ing", " walk"))
    source = SourceTable(name="bpe", kind="hf", weight=random_table(bpe, DIM), tokenizer=bpe)
    aligned = align_source(base, source)
    row = base.convert_tokens_to_ids("##ing")
    assert _outcome(aligned, row) == "decomposed"
    ids = _row_ids(source, ["i", "n", "g"])
    torch.testing.assert_close(aligned.table[row], source.weight[ids].mean(0))
    word = base.convert_tokens_to_ids("ing")
    assert int(aligned.source_index[word]) == bpe.convert_tokens_to_ids("Ġing")


def test_rows_beyond_the_tokenizer_are_uncovered():
    base, source = _tokenizer("wordpiece"), _source("bpe")
    aligned = align_source(base, source, num_rows=len(base) + 5)
    tail = aligned.outcomes[len(base) :]
    assert aligned.table.shape[0] == len(base) + 5
    assert (tail == OUTCOMES.index("beyond_vocab")).all()
    assert not aligned.coverage[len(base) :].any()
    assert torch.count_nonzero(aligned.table[len(base) :]) == 0
    assert aligned.report.counts["beyond_vocab"] == 5
    assert aligned.report.tokenizer_size == len(base) and aligned.report.num_rows == len(base) + 5


def test_fewer_rows_than_tokens_drops_the_rest(caplog):
    base, source = _tokenizer("wordpiece"), _source("bpe")
    with caplog.at_level(logging.WARNING):
        aligned = align_source(base, source, num_rows=20)
    assert aligned.table.shape[0] == 20 and sum(aligned.report.counts.values()) == 20
    assert "ignored" in caplog.text


def test_source_table_shorter_than_its_tokenizer():
    """Tokens past the end of the source table are never used, neither matched nor as pieces."""
    base, full = _tokenizer("unigram"), _source("bpe")
    cut = full.tokenizer.convert_tokens_to_ids("Ġhel")  # the table ends just before Ġhel
    short = SourceTable(name="bpe", kind="hf", weight=full.weight[:cut], tokenizer=full.tokenizer)
    aligned = align_source(base, short)
    assert int(aligned.source_index.max()) < cut
    # The source tokenizer spells " hel" as Ġhel, a row the table lacks: uncovered, not a wrong row.
    hel = base.convert_tokens_to_ids("▁hel")
    assert _outcome(aligned, hel) == "uncovered" and not aligned.coverage[hel]
    the = base.convert_tokens_to_ids("▁the")  # Ġthe is inside the table: still matched
    assert int(aligned.source_index[the]) == full.tokenizer.convert_tokens_to_ids("Ġthe") < cut


@pytest.mark.parametrize(
    ("combine", "reduce"),
    [("mean", lambda r: r.mean(0)), ("sum", lambda r: r.sum(0)), ("max", lambda r: r.max(0).values)],
)
def test_combine_modes(combine, reduce):
    base, source = _tokenizer("wordpiece"), _source("unigram")
    aligned = align_source(base, source, combine=combine)
    row = base.convert_tokens_to_ids("hello")
    torch.testing.assert_close(aligned.table[row], reduce(source.weight[_row_ids(source, ["▁hel", "lo"])]))
    the = base.convert_tokens_to_ids("the")  # one-to-one rows are copied whatever the mode
    torch.testing.assert_close(aligned.table[the], source.weight[_row_ids(source, ["▁the"])[0]])
    assert aligned.report.combine == combine


def test_without_decomposition_those_rows_stay_uncovered():
    base, source = _tokenizer("wordpiece"), _source("unigram")
    full = align_source(base, source)
    lean = align_source(base, source, decompose=False)
    decomposed = full.outcome_mask("decomposed")
    assert decomposed.any() and lean.report.counts["decomposed"] == 0
    assert (lean.outcomes[decomposed] == OUTCOMES.index("uncovered")).all()
    assert torch.equal(lean.coverage, full.coverage & ~decomposed)
    assert not lean.report.decompose


def test_half_precision_source_converts_only_what_it_uses():
    base, source = _tokenizer("wordpiece"), _source("unigram")
    half = SourceTable(
        name="u", kind="hf", weight=source.weight.to(torch.bfloat16), tokenizer=source.tokenizer
    )
    aligned = align_source(base, half)
    reference = align_source(
        base, SourceTable(name="u", kind="hf", weight=half.weight.float(), tokenizer=source.tokenizer)
    )
    assert aligned.table.dtype == torch.float32
    torch.testing.assert_close(aligned.table, reference.table)


def test_progress_bar_does_not_change_the_result():
    base, source = _tokenizer("bpe"), _source("unigram")
    quiet, loud = align_source(base, source), align_source(base, source, show_progress=True)
    assert torch.equal(quiet.table, loud.table) and torch.equal(quiet.outcomes, loud.outcomes)


def test_a_base_vocabulary_read_once_serves_every_source():
    base = _tokenizer("wordpiece")
    vocabulary = Vocabulary.from_tokenizer(base)
    for name in ("bpe", "unigram", "static"):
        fresh, shared = (
            align_source(base, _source(name)),
            align_source(base, _source(name), base_vocabulary=vocabulary),
        )
        assert torch.equal(fresh.table, shared.table) and torch.equal(fresh.outcomes, shared.outcomes)
    with pytest.raises(ValueError, match="base_vocabulary has 2 tokens"):
        align_source(base, _source("bpe"), base_vocabulary=Vocabulary.from_words(["a", "b"]))


def test_low_coverage_raises_naming_the_source_and_the_option():
    base = _tokenizer("wordpiece")
    source = SourceTable(
        name="my-vectors.txt", kind="vectors", weight=random_table(2, DIM), vocab=["zzz", "qqq"]
    )
    with pytest.raises(AlignmentError, match=r"my-vectors\.txt.*allow_low_coverage=True") as info:
        align_source(base, source)
    assert isinstance(info.value, ValueError)
    aligned = align_source(base, source, allow_low_coverage=True)
    assert aligned.report.content_coverage == 0.0 and not aligned.coverage.any()


def test_min_coverage_threshold_is_respected():
    base, source = _tokenizer("wordpiece"), _source("static")
    coverage = align_source(base, source).report.content_coverage
    assert 0 < coverage < 1
    with pytest.raises(AlignmentError):
        align_source(base, source, min_coverage=coverage + 0.01)
    align_source(base, source, min_coverage=coverage)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"combine": "median"}, ValueError, "combine='median'"),
        ({"num_rows": 0}, ValueError, "num_rows must be positive"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        align_source(_tokenizer("wordpiece"), _source("bpe"), **kwargs)


def test_source_must_be_a_source_table():
    with pytest.raises(TypeError, match="SourceTable"):
        align_source(_tokenizer("wordpiece"), torch.zeros(3, 3))


# --------------------------------------------------------------------------- report


def test_report_round_trips_through_json(aligned_pairs):
    report = aligned_pairs["wordpiece", "bpe"][2].report
    data = json.loads(json.dumps(report.to_dict()))
    assert AlignmentReport.from_dict(data) == report
    data["from_the_future"] = 1
    assert AlignmentReport.from_dict(data) == report


def test_report_table_lists_every_outcome(aligned_pairs):
    report = aligned_pairs["bpe", "wordpiece"][2].report
    text = str(report)
    assert text == report.format_table()
    for name in OUTCOMES:
        assert name in text
    assert "'wordpiece'" in text and f"{report.content_coverage:.2%}" in text
    assert report.uncovered_sample and repr(report.uncovered_sample[0]) in text
