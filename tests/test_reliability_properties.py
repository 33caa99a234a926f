"""Property-based tests of alignment and fusion over generated vocabularies (hypothesis).

Vocabularies of random words become WordPiece, byte-level BPE and Unigram tokenizers in memory
(`tests/fixtures_tokenizers.py`); every base/source family pair is aligned and fused, and the
invariants below must hold for every example:

* every index is in range, and a row matched one to one is exactly the source row it names;
* the coverage mask, the per-row outcomes and the report's counts and shares agree;
* no NaN/Inf in any aligned or fused row; uncovered rows are zero;
* special tokens are never decomposed or matched by text;
* a tokenizer aligned to itself gives back its own table (the identity), every row matched exactly
  or as a special token. Reserved placeholder rows (`[unused0]`, `<extra_id_0>`) are the deliberate
  exception: they are untrained, so the cascade leaves them uncovered even then.

Examples are derandomised (the same on every run) and few, so the file stays fast.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertModel

import hf_embfuse
from hf_embfuse.alignment import COVERED_OUTCOMES, OUTCOMES, align_source
from hf_embfuse.sources import SourceTable
from tests.fixtures_tokenizers import make_bpe_tokenizer, make_unigram_tokenizer, make_wordpiece_tokenizer

pytestmark = pytest.mark.timeout(600)

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
# Letters only: byte-level BPE's pre-tokenizer splits letters from digits and punctuation, and every
# generated word must stay one pre-token. Accented and non-Latin letters exercise normalisation.
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHéüßñçøΩжя日本"
WORD = st.text(alphabet=LETTERS, min_size=1, max_size=6)
WORDS = st.lists(WORD, min_size=1, max_size=25, unique=True)
FAMILIES = ("wordpiece", "bpe", "unigram", "vectors")
SPECIAL_OUTCOMES = {OUTCOMES.index(name) for name in ("special", "unmatched_special", "placeholder")}
DIRECT_OUTCOMES = {OUTCOMES.index(name) for name in ("special", "exact", "canonical", "casefold")}
COVERED = [OUTCOMES.index(name) for name in COVERED_OUTCOMES]


@st.composite
def vocabularies(draw, family: str, pool: list[str] | None = None):
    """(tokenizer or None, word list or None) of `family`, from generated words (drawn from `pool` if
    given, so that two vocabularies share words) with word-position marks."""
    if pool is None:
        words = draw(WORDS)
    else:
        words = draw(st.lists(st.sampled_from(pool), min_size=3 * len(pool) // 4, unique=True))
    # Mostly word starts, as in real vocabularies; continuations are `##x` / no `Ġ` / no `▁`.
    starts = draw(
        st.lists(st.sampled_from([True, True, True, False]), min_size=len(words), max_size=len(words))
    )
    if family == "wordpiece":
        tokens = [("" if start else "##") + w for w, start in zip(words, starts, strict=True)]
        return make_wordpiece_tokenizer(tokens, lowercase=draw(st.booleans())), None
    if family == "bpe":
        texts = [(" " if start else "") + w for w, start in zip(words, starts, strict=True)]
        try:
            return make_bpe_tokenizer(list(dict.fromkeys(texts))), None
        except AssertionError:  # the fixture's merges cannot rebuild every word as one token
            assume(False)
    if family == "unigram":
        pieces = [("▁" if start else "") + w for w, start in zip(words, starts, strict=True)]
        return make_unigram_tokenizer(pieces, byte_fallback=draw(st.booleans())), None
    return None, words


def _source(draw, family: str, width: int, pool: list[str], name: str = "generated") -> SourceTable:
    tokenizer, words = draw(vocabularies(family, pool))
    size = len(tokenizer) if tokenizer is not None else len(words)
    # A model table may be shorter than its tokenizer (tokens past it are unusable).
    rows = size - (draw(st.integers(0, 3)) if tokenizer is not None else 0)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    seed = draw(st.integers(0, 2**16))
    weight = torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)) * scale
    return SourceTable(
        name, "hf" if tokenizer is not None else "vectors", weight, tokenizer=tokenizer, vocab=words
    )


def check_alignment(base_tokenizer, source: SourceTable, num_rows: int):
    aligned = align_source(base_tokenizer, source, num_rows=num_rows, allow_low_coverage=True)
    table, coverage, report = aligned.table, aligned.coverage, aligned.report
    outcomes, index = aligned.outcomes.numpy().astype(np.int64), aligned.source_index.numpy()
    source_rows = source.weight.shape[0]

    # Shapes and ranges.
    assert table.shape == (num_rows, source.width) and coverage.shape == (num_rows,)
    assert ((outcomes >= 0) & (outcomes < len(OUTCOMES))).all()
    assert ((index >= -1) & (index < source_rows)).all()
    direct = index >= 0
    assert np.isin(outcomes[direct], list(DIRECT_OUTCOMES)).all()
    assert not np.isin(outcomes[~direct], list(DIRECT_OUTCOMES)).any()
    assert torch.equal(table[torch.from_numpy(direct)], source.weight[torch.from_numpy(index[direct])])

    # Coverage mask, outcomes and report agree.
    covered = np.isin(outcomes, COVERED)
    assert np.array_equal(coverage.numpy(), covered)
    assert report.num_rows == num_rows and sum(report.counts.values()) == num_rows
    assert report.counts == {name: int((outcomes == i).sum()) for i, name in enumerate(OUTCOMES)}
    assert report.num_covered == int(covered.sum())
    assert report.coverage == pytest.approx(covered.mean())
    for share in (report.content_coverage, report.word_start_coverage, report.continuation_coverage):
        assert 0.0 <= share <= 1.0
    beyond = np.arange(num_rows) >= len(base_tokenizer)
    assert (outcomes[beyond] == OUTCOMES.index("beyond_vocab")).all()

    # Values: finite, zero where uncovered, decomposed rows (means of source rows) within the source's range.
    assert torch.isfinite(table).all()
    assert (table[~coverage] == 0).all()
    decomposed = torch.from_numpy(outcomes == OUTCOMES.index("decomposed"))
    event(f"decomposed rows: {'some' if decomposed.any() else 'none'}")
    if decomposed.any():
        bound = source.weight.abs().max() * (1 + 1e-5)
        assert (table[decomposed].abs() <= bound).all()

    # Special tokens are matched by role or left out, never by text or decomposition.
    special_ids = [i for i in base_tokenizer.all_special_ids if i < num_rows]
    assert np.isin(outcomes[special_ids], list(SPECIAL_OUTCOMES)).all()
    return aligned


def _tiny_base(vocab_size: int, width: int) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        max_position_embeddings=16,
    )
    return BertModel(config).eval()


PAIRS = [(b, s) for b in FAMILIES[:3] for s in FAMILIES]


@pytest.mark.parametrize(("base_family", "source_family"), PAIRS)
@SETTINGS
@given(data=st.data())
def test_alignment_and_fusion_invariants(base_family, source_family, data):
    pool = data.draw(st.lists(WORD, min_size=4, max_size=30, unique=True), label="shared words")
    base_tokenizer, _ = data.draw(vocabularies(base_family, pool), label="base")
    source = _source(data.draw, source_family, data.draw(st.sampled_from([4, 8])), pool)
    num_rows = len(base_tokenizer) + data.draw(st.integers(0, 3), label="rows past the tokenizer")
    aligned = check_alignment(base_tokenizer, source, num_rows)

    # Fuse: every projection, every mixing mode, rows never NaN/Inf.
    projection = data.draw(st.sampled_from(["transport", "linear", "identity"]), label="projection")
    mixing = data.draw(st.sampled_from(["fixed", "learned", "gated"]), label="mixing")
    base = _tiny_base(num_rows, width=source.width if projection == "identity" else 8)
    recipe = {"path": "generated", "projection": projection, "allow_low_coverage": True}
    if projection == "transport":  # an option of the transport projection only: refused with the others
        recipe["transport_k"] = 3
    with mock.patch("hf_embfuse.build.read_source", return_value=source):
        try:
            model = hf_embfuse.fuse(base, [recipe], base_tokenizer=base_tokenizer, mixing=mixing).model
        except ValueError as error:
            # The one refusal allowed: fewer than two distinct source rows matched one to one, so no
            # map can be fit (e.g. "a" and "A" both matched by case-folding to the one source row "a").
            assert "anchor" in str(error), error
            distinct = aligned.source_index[aligned.anchor_mask].unique().numel()
            assert projection != "identity" and distinct < 2, (projection, distinct)
            event("fuse refused: too few anchors")
            return
    event(f"fused ({projection})")
    embedding = model.get_input_embeddings()
    if embedding.mixer.gate is not None:
        torch.nn.init.normal_(embedding.mixer.gate, std=1.0)
    fused = embedding.fused_weight()
    assert fused.shape == (num_rows, base.config.hidden_size)
    assert torch.isfinite(fused).all()
    expected = aligned.coverage.clone()
    if embedding.padding_idx is not None:
        expected[embedding.padding_idx] = False  # the padding row stays the base's
    assert torch.equal(embedding.coverage[:, 1], expected)


@pytest.mark.parametrize("family", FAMILIES[:3])
@SETTINGS
@given(data=st.data())
def test_a_tokenizer_aligned_to_itself_is_the_identity(family, data):
    tokenizer, _ = data.draw(vocabularies(family))
    weight = torch.randn(
        len(tokenizer), 6, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    )
    source = SourceTable("self", "hf", weight, tokenizer=tokenizer)
    aligned = check_alignment(tokenizer, source, len(tokenizer))
    outcomes = aligned.outcomes.numpy()
    placeholder = outcomes == OUTCOMES.index("placeholder")
    matched = np.isin(outcomes, [OUTCOMES.index("special"), OUTCOMES.index("exact")])
    assert (matched | placeholder).all(), aligned.report.counts
    assert np.array_equal(aligned.source_index.numpy()[matched], np.flatnonzero(matched))
    assert torch.equal(aligned.table[torch.from_numpy(matched)], weight[torch.from_numpy(matched)])
    # Placeholders are only the reserved rows the factories add, never a generated word.
    tokens = tokenizer.convert_ids_to_tokens(np.flatnonzero(placeholder).tolist())
    assert all(t.startswith(("[unused", "<extra_id_", "<|reserved")) for t in tokens), tokens
