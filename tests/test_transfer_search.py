"""The anchor search behind transport: approximate searches find (most of) the exact neighbours and say how many."""

from __future__ import annotations

import pytest
import torch

from hf_embfuse.projection import (
    HEAD_ROWS,
    OmpSettings,
    anchor_neighbours,
    omp_plan,
    transport_plan,
    transport_table,
)


def _clustered_table(rows: int = 3000, width: int = 16, groups: int = 40, seed: int = 0) -> torch.Tensor:
    """Rows scattered around a few directions, as embedding tables are: neighbours are well defined."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, width, generator=generator)
    return centres[torch.randint(groups, (rows,), generator=generator)] + 0.3 * torch.randn(
        rows, width, generator=generator
    )


@pytest.mark.parametrize("search", ["clustered", "faiss"])
def test_approximate_search_finds_the_exact_neighbours_and_reports_its_recall(search):
    table = _clustered_table()
    coverage = torch.ones(table.shape[0], dtype=torch.bool)
    anchors = torch.arange(table.shape[0]) % 3 == 0
    exact = anchor_neighbours(table, coverage, anchors, k=5, search="exact")
    approx = anchor_neighbours(table, coverage, anchors, k=5, search=search)
    assert exact.recall is None and approx.search == search
    found = (approx.ids.unsqueeze(2) == exact.ids.unsqueeze(1)).any(2).float().mean()
    assert float(found) > 0.8
    # The reported recall is measured on a sample of the same rows: it agrees with the whole.
    assert abs(approx.recall - float(found)) < 0.1
    # Every neighbour is an anchor, nearest first.
    assert bool(anchors[approx.ids].all())
    assert bool((approx.cosines[:, :-1] >= approx.cosines[:, 1:] - 1e-6).all())


def test_a_plan_applies_to_any_anchor_indexed_table_like_transport_table():
    table = _clustered_table(rows=400)
    base = torch.randn(400, 8)
    coverage = torch.rand(400) > 0.2
    anchors = coverage & (torch.arange(400) % 2 == 0)
    plan = transport_plan(table, coverage, anchors, k=4)
    torch.testing.assert_close(plan.apply(base), transport_table(table, coverage, base, anchors, k=4))
    # Applied to a second table (an LM head), each row is the same weighted combination of its anchors.
    head = torch.randn(400, 8)
    row = int(plan.rows[7])
    expected = (plan.weights[7].unsqueeze(1) * head[plan.neighbours[7]]).sum(0)
    torch.testing.assert_close(plan.apply(head)[row], expected)


def test_sparse_coding_reconstructs_a_row_that_is_a_combination_of_anchors():
    generator = torch.Generator().manual_seed(1)
    anchors_rows = torch.randn(60, 12, generator=generator)
    # Row 60 is exactly 2·a3 - a7 in the source space; its base vector should then be 2·b3 - b7.
    table = torch.cat([anchors_rows, (2 * anchors_rows[3] - anchors_rows[7]).unsqueeze(0)])
    base = torch.randn(61, 5, generator=generator)
    coverage = torch.ones(61, dtype=torch.bool)
    anchors = torch.arange(61) < 60
    plan = omp_plan(
        table, coverage, anchors, atoms=2, settings=OmpSettings(candidates=30, ridge=1e-8, max_l1=10.0)
    )
    out = plan.apply(base)
    torch.testing.assert_close(out[60], 2 * base[3] - base[7], atol=1e-3, rtol=1e-3)
    # An anchor codes as itself.
    torch.testing.assert_close(out[5], base[5], atol=1e-3, rtol=1e-3)
    # By default the coefficients' absolute sum is bounded (here 3 -> 2): no row can blow up in the base space.
    bounded = omp_plan(table, coverage, anchors, atoms=2, settings=OmpSettings(candidates=30, ridge=1e-8))
    assert float(bounded.weights.abs().sum(1).max()) <= 2.0 + 1e-5
    torch.testing.assert_close(bounded.apply(base)[60], (2 * base[3] - base[7]) * 2 / 3, atol=1e-3, rtol=1e-3)


def test_whole_set_sparse_coding_refuses_problems_past_an_exact_search(monkeypatch):
    from hf_embfuse.projection import omp

    table = torch.randn(30, 4, generator=torch.Generator().manual_seed(3))
    anchors = torch.arange(30) < 20
    assert omp.codes_over_every_anchor(~anchors, anchors)
    monkeypatch.setattr(omp, "EXACT_UP_TO", 10 * 20 - 1)
    assert not omp.codes_over_every_anchor(~anchors, anchors)
    with pytest.raises(ValueError, match="at most 199 rows x anchors"):
        omp_plan(table, ~anchors, anchors, atoms=2, settings=HEAD_ROWS)


def test_whole_set_sparse_coding_finds_atoms_far_from_the_row():
    """`candidates=None` picks among every anchor: a row that is a combination of anchors far from it (not
    among its nearest candidates) is still coded exactly, with free coefficients, and only covered rows are coded."""
    generator = torch.Generator().manual_seed(2)
    anchors_rows = torch.randn(200, 16, generator=generator)
    row = 3 * anchors_rows[11] - 2 * anchors_rows[150] + 0.5 * anchors_rows[42]
    table = torch.cat([anchors_rows, row.unsqueeze(0)])
    base = torch.randn(201, 6, generator=generator)
    anchors = torch.arange(201) < 200
    coverage = ~anchors  # only the new row is coded
    plan = omp_plan(table, coverage, anchors, atoms=3, settings=HEAD_ROWS)
    assert plan.rows.tolist() == [200]
    torch.testing.assert_close(
        plan.apply(base)[200], 3 * base[11] - 2 * base[150] + 0.5 * base[42], atol=1e-3, rtol=1e-3
    )
    assert sorted(plan.neighbours[0].tolist()) == [11, 42, 150]
    assert float(plan.weights.abs().sum()) == pytest.approx(5.5, abs=1e-3)  # not bounded to 2


def test_unknown_search_is_named():
    table = _clustered_table(rows=50)
    with pytest.raises(ValueError, match="search"):
        anchor_neighbours(
            table, torch.ones(50, dtype=torch.bool), torch.ones(50, dtype=torch.bool), search="annoy"
        )
