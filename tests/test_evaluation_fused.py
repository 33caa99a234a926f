"""evaluate_fused: fused vs base vs each source vs baselines on a tiny EmbFuse model."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_embfuse.evaluation import (
    average_baseline,
    concat_baseline,
    evaluate_fused,
    evaluate_wordsim,
    projected_tables,
)
from hf_embfuse.evaluation.fused import display_name, table_names
from tests.fixtures_models import tiny_base, tiny_fused

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "cat",
    "dog",
    "car",
    "##s",
    "tiger",
    "sun",
    "moon",
    "##light",
    "tree",
]
ID = {token: i for i, token in enumerate(WORDS)}
PAIRS = [
    ("cat", "dog", 8.0),
    ("cat", "tiger", 7.5),
    ("cats", "dogs", 7.9),
    ("sun", "moon", 6.0),
    ("sunlight", "sun", 8.5),
    ("car", "tree", 1.0),
    ("moon", "tree", 2.0),
    ("tiger", "car", 0.5),
    ("dog", "sunlight", 1.5),
    ("cars", "car", 9.0),
]
DATASETS = {"toy": PAIRS, "toy-reversed": [(b, a, s) for a, b, s in PAIRS]}


def make_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordPiece(ID, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def _with_coverage(model, uncovered: dict[int, list[str]]):
    """Cover every word piece in every source, except `uncovered[source]` pieces."""
    coverage = model.get_input_embeddings().coverage
    coverage[: len(WORDS)] = True
    for source, pieces in uncovered.items():
        coverage[[ID[p] for p in pieces], source] = False
    return model


def test_rows_fused_base_each_source_and_baselines(tokenizer):
    model = tiny_fused("bert")
    table = evaluate_fused(model, tokenizer, DATASETS)
    base_name = display_name(model.config.sources[0]["name"], "source 0")
    assert table.tables == [
        "fused (learned)",
        f"{base_name} (base)",
        "random-0 (identity)",  # initialised identity-like (no fitted map), as the config records
        "random-1 (identity)",
        "average baseline",
        "concat baseline",
    ]
    assert table.datasets == ["toy", "toy-reversed"]
    for per_table in table.results.values():
        for result in per_table.values():
            assert result.n_pairs == len(PAIRS)
            assert math.isfinite(result.spearman)
    assert evaluate_fused(model, tokenizer, DATASETS, baselines=False).tables == table.tables[:4]


def test_unknown_words_counted_per_source(tokenizer):
    # Source 1 lacks "tiger"; source 2 lacks both pieces of "sunlight" and "tree" is uncovered there too.
    model = _with_coverage(tiny_fused("bert"), {1: ["tiger"], 2: ["sun", "##light", "tree"]})
    results = {
        name: per_table["toy"]
        for name, per_table in evaluate_fused(model, tokenizer, DATASETS).results.items()
    }
    first, second = results["random-0 (identity)"], results["random-1 (identity)"]
    assert (first.n_unknown_words, first.unknown_words) == (1, ["tiger"])
    assert first.n_unknown_pairs == 2 and first.n_used == 8
    assert sorted(second.unknown_words) == ["sun", "sunlight", "tree"]
    assert (second.n_unknown_pairs, second.n_used) == (5, 5)
    # The base covers every row, so the fused table and the baselines know every word.
    for name in ("fused (learned)", "average baseline", "concat baseline"):
        assert results[name].n_unknown_pairs == 0, name


def test_single_source_rows_use_projected_covered_rows(tokenizer):
    model = _with_coverage(tiny_fused("bert"), {1: ["moon"]})
    embedding = model.get_input_embeddings()
    projection = embedding.projections[0]
    with torch.no_grad():  # a non-trivial map, so the row must really be read after projection
        projection.weight.copy_(
            torch.randn(projection.weight.shape, generator=torch.Generator().manual_seed(3))
        )
        projection.bias.uniform_(-1, 1)
    source = embedding.source_tables[0].detach()
    expected = evaluate_wordsim(
        source @ projection.weight.T + projection.bias, tokenizer, PAIRS, coverage=embedding.coverage[:, 1]
    )
    actual = evaluate_fused(model, tokenizer, DATASETS).results["random-0 (identity)"]["toy"]
    assert actual.spearman == pytest.approx(expected.spearman, abs=1e-9)
    assert actual.unknown_words == ["moon"]
    raw = evaluate_wordsim(source, tokenizer, PAIRS, coverage=embedding.coverage[:, 1])
    assert raw.spearman != pytest.approx(actual.spearman, abs=1e-6)


def test_baselines_match_the_baseline_functions(tokenizer):
    model = tiny_fused("bert")
    embedding = model.get_input_embeddings()
    tables = projected_tables(embedding, chunk_size=7)  # several chunks and a ragged last one
    assert torch.equal(tables[0], embedding.weight.float())
    masks = list(embedding.coverage.unbind(1))
    results = evaluate_fused(model, tokenizer, DATASETS).results
    for name, baseline in (("average baseline", average_baseline), ("concat baseline", concat_baseline)):
        expected = evaluate_wordsim(baseline(tables, masks), tokenizer, PAIRS)
        assert results[name]["toy"].spearman == pytest.approx(expected.spearman, abs=1e-9)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_fixed_base_only_weights_score_exactly_the_base(tokenizer, arch):
    model = tiny_fused(arch, mixing="fixed", fixed_weights=[1.0, 0.0, 0.0])
    results = evaluate_fused(model, tokenizer, DATASETS).results
    base_row = next(name for name in results if name.endswith("(base)"))
    for dataset in DATASETS:
        assert results["fused (fixed)"][dataset].spearman == results[base_row][dataset].spearman
    plain = evaluate_wordsim(tiny_base(arch).get_input_embeddings().weight, tokenizer, PAIRS)
    assert results[base_row]["toy"].spearman == plain.spearman


def test_mixing_changes_the_fused_row(tokenizer):
    base_only = evaluate_fused(
        tiny_fused("bert", mixing="fixed", fixed_weights=[1.0, 0.0, 0.0]), tokenizer, DATASETS
    )
    mixed = evaluate_fused(
        tiny_fused("bert", mixing="fixed", fixed_weights=[0.2, 0.4, 0.4]), tokenizer, DATASETS
    )
    assert (
        mixed.results["fused (fixed)"]["toy"].spearman != base_only.results["fused (fixed)"]["toy"].spearman
    )


def test_table_names_are_short_and_unique(tmp_path):
    model = tiny_fused("bert")
    config = model.config
    config.sources[0]["name"] = str(tmp_path / "pkg" / "model")
    config.sources[2]["name"] = "random-0"
    config.sources[1]["initialization"] = config.sources[2]["initialization"] = "linear"
    assert table_names(config) == [
        "pkg/model (base)",
        "random-0 (linear)",
        "random-0 (linear) #2",
    ]
    assert (
        display_name("sentence-transformers/all-MiniLM-L6-v2", "x")
        == "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert display_name(None, "source 3") == "source 3"


def test_plain_model_is_refused(tokenizer):
    with pytest.raises(ValueError, match="not an EmbFuse model"):
        evaluate_fused(tiny_base("bert"), tokenizer, DATASETS)
