"""transport_table: rows become similarity-weighted averages of their source-space neighbours' base rows."""

from __future__ import annotations

import math

import pytest
import torch

from hf_embfuse.projection import TransportStats, transport_table


def _angles(*degrees: float) -> torch.Tensor:
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1).float()


@pytest.fixture
def toy():
    # Rows 0-3 are anchors at known angles; row 4 is covered but not an anchor; row 5 is uncovered.
    source = torch.cat([_angles(0, 10, 90, 180, 5), torch.zeros(1, 2)])
    source[1] *= 7.0  # cosine ignores length
    base = torch.arange(18, dtype=torch.float32).reshape(6, 3)
    coverage = torch.tensor([True, True, True, True, True, False])
    anchors = torch.tensor([True, True, True, True, False, False])
    return source, coverage, base, anchors


def test_a_row_gets_the_softmax_weighted_base_rows_of_its_nearest_anchors(toy):
    source, coverage, base, anchors = toy
    out = transport_table(source, coverage, base, anchors, k=2, temperature=0.1)
    cos = torch.tensor([math.cos(math.radians(5)), math.cos(math.radians(5))])  # 0° and 10° are 5° away
    weights = torch.softmax(cos / 0.1, dim=0)
    torch.testing.assert_close(out[4], weights[0] * base[0] + weights[1] * base[1])
    assert out.shape == (6, 3) and out.dtype == torch.float32


def test_uncovered_rows_are_zero(toy):
    source, coverage, base, anchors = toy
    out = transport_table(source, coverage, base, anchors, k=2)
    assert torch.equal(out[5], torch.zeros(3))
    assert (out[:5].abs().sum(dim=1) > 0).all()


def test_k_larger_than_the_anchors_uses_them_all(toy):
    source, coverage, base, anchors = toy
    out, stats = transport_table(source, coverage, base, anchors, k=50, temperature=1.0, return_stats=True)
    assert isinstance(stats, TransportStats)
    assert (stats.k, stats.n_anchors, stats.n_rows) == (4, 4, 5)
    cos = torch.nn.functional.normalize(source[:4], dim=1) @ torch.nn.functional.normalize(source[4], dim=0)
    torch.testing.assert_close(out[4], torch.softmax(cos, dim=0) @ base[:4])


def test_exclude_self_rebuilds_anchors_from_other_anchors_only(toy):
    source, coverage, base, anchors = toy
    out = transport_table(source, coverage, base, anchors, k=1, exclude_self=True)
    # Nearest *other* anchor: 0°↔10°, 90°→10° (80° away, closer than 0°'s 90°), 180°→90°.
    torch.testing.assert_close(out[:4], base[[1, 0, 1, 2]])
    kept = transport_table(source, coverage, base, anchors, k=1, exclude_self=False)
    torch.testing.assert_close(kept[:4], base[:4])  # without exclusion each anchor is its own neighbour


def test_low_temperature_copies_the_nearest_anchor_and_stats_say_so(toy):
    source, coverage, base, anchors = toy
    out, stats = transport_table(source, coverage, base, anchors, k=3, temperature=1e-3, return_stats=True)
    torch.testing.assert_close(out[:4], base[:4])
    assert stats.mean_top1_cosine == pytest.approx(1.0, abs=1e-3)
    assert stats.mean_effective_neighbours < 1.5


def test_batching_does_not_change_the_result():
    gen = torch.Generator().manual_seed(0)
    source, base = torch.randn(50, 8, generator=gen), torch.randn(50, 5, generator=gen)
    coverage = torch.rand(50, generator=gen) > 0.2
    anchors = coverage & (torch.rand(50, generator=gen) > 0.3)
    whole = transport_table(source, coverage, base, anchors, k=4, exclude_self=True)
    one_by_one = transport_table(source, coverage, base, anchors, k=4, exclude_self=True, batch_size=1)
    torch.testing.assert_close(whole, one_by_one)
    ids = transport_table(source, coverage.nonzero().squeeze(1), base, anchors.nonzero().squeeze(1), k=4)
    torch.testing.assert_close(ids, transport_table(source, coverage, base, anchors, k=4))


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        ("no anchors", {}, "Transport needs at least 1 anchors, got 0"),
        ("one anchor", {"exclude_self": True}, "needs at least 2 anchors, got 1"),
        ("nan", {}, r"`source_table` has NaN or inf values .*\[4\]"),
        ("rows differ", {}, "`base_table` has 5 rows but the other inputs have 6"),
        (None, {"k": 0}, "`k` must be at least 1"),
        (None, {"temperature": 0.0}, "`temperature` must be positive"),
        (None, {"batch_size": 0}, "`batch_size` must be a positive number"),
    ],
)
def test_bad_input_is_named(toy, change, kwargs, message):
    source, coverage, base, anchors = toy
    if change == "no anchors":
        anchors = torch.zeros(6, dtype=torch.bool)
    elif change == "one anchor":
        anchors = torch.tensor([0])
    elif change == "nan":
        source = source.clone()
        source[4, 0] = float("nan")
    elif change == "rows differ":
        base = base[:5]
    with pytest.raises(ValueError, match=message):
        transport_table(source, coverage, base, anchors, **kwargs)


def test_rows_outside_coverage_still_lend_their_vectors_as_anchors():
    # A donor asked to fill only the rows the base lacks reads its anchor rows without covering them:
    # the covered rows come out as when everything is covered, the anchors themselves stay zero.
    gen = torch.Generator().manual_seed(1)
    source, base = torch.randn(40, 6, generator=gen), torch.randn(40, 4, generator=gen)
    anchors = torch.arange(40) < 25
    everything = transport_table(source, torch.ones(40, dtype=torch.bool), base, anchors, k=3)
    only_new = transport_table(source, ~anchors, base, anchors, k=3)
    torch.testing.assert_close(only_new[~anchors], everything[~anchors])
    assert only_new[anchors].abs().sum() == 0


def test_centring_removes_a_shared_offset_before_taking_cosines():
    # A large common direction makes every raw cosine near 1 (weights near uniform); centring it away
    # lets the row's real nearest anchor (row 0) take the weight. One-hot base rows expose the weights.
    residuals = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.9, 0.1]])
    source = residuals + 10.0
    base = torch.eye(4, 3)
    coverage, anchors = torch.ones(4, dtype=torch.bool), torch.tensor([0, 1, 2])
    raw = transport_table(source, coverage, base, anchors, k=3, temperature=0.1)
    centred = transport_table(source, coverage, base, anchors, k=3, temperature=0.1, center=True)
    assert raw[3].argmax() == centred[3].argmax() == 0
    assert raw[3].max() < 0.5 < 0.95 < centred[3].max()
    torch.testing.assert_close(centred.sum(dim=1), torch.ones(4))  # still convex combinations
