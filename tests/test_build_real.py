"""The demo build on the real packaged models: MiniLM (base) + SmolLM2 (GGUF) + GloVe-50d."""

import pytest
import torch

from tests.fresh_process import load_in_fresh_process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(demo_build):
    return demo_build  # one build of the demo recipe per session (tests/fixtures_real.py)


def test_coverage_of_real_sources(built):
    _, result = built
    smollm2, glove = (report.alignment for report in result.reports)
    # Measured: SmolLM2 covers 100.0% of MiniLM's 29,523 content tokens (56.7% canonical, 7.3% case-folded,
    # 32.7% decomposed); GloVe covers 96.6% of the whole-word ones and no `##` continuation.
    assert smollm2.content_coverage >= 0.95
    assert smollm2.counts["decomposed"] > 5000 and smollm2.counts["placeholder"] == 994  # [unused*]
    assert glove.word_start_coverage >= 0.90
    assert glove.counts["decomposed"] == 0  # word vectors have no tokenizer to decompose with


def test_projection_reports(built):
    _, result = built
    for report in result.reports:
        assert report.projection["method"] == "transport"
        assert report.projection["anchors"] > 1000 and report.projection["rows"] > 1000
        # No linear map is fitted "for comparison" on the default path any more.
        assert "linear_heldout_cosine" not in report.projection


def test_saved_model_reloads_in_a_fresh_process(built, tmp_path):
    out, result = built
    input_ids = result.tokenizer(["fusion of embeddings", "a cat"], return_tensors="pt", padding=True)[
        "input_ids"
    ]
    with torch.no_grad():
        expected = result.model.eval()(input_ids=input_ids).last_hidden_state
    (got,) = load_in_fresh_process([(out, "AutoModel", input_ids)], tmp_path)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
