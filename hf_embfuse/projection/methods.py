"""The one home of the projection methods: identity, linear, transport, omp.

`project` carries a source's aligned rows into the base space the way its recipe asks. Transport and OMP
return a `RowPlan` over anchor rows, applied to the base's input table and, for a rebuilt LM head, to its
output table alike; identity and linear keep the source's own table with a map applied at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .linear import LinearMap, fit_linear_map
from .omp import HEAD_ROWS, INPUT_ROWS, codes_over_every_anchor, omp_plan
from .plan import RowPlan
from .transport import transport_plan

METHODS = ("identity", "linear", "transport", "omp")


@dataclass
class Projection:
    """A source carried into the base space.

    Attributes:
        method: one of `METHODS`.
        plan: transport / omp: the covered rows as combinations of anchor rows (target row ids).
        head_plan: the plan for the head's rows (OMP codes them over every anchor where affordable).
        linear: linear: the fitted map.
        report: what was measured, JSON-safe.
    """

    method: str
    plan: RowPlan | None = None
    head_plan: RowPlan | None = None
    linear: LinearMap | None = None
    report: dict[str, Any] = field(default_factory=dict)


def project(
    table: torch.Tensor,
    coverage: torch.Tensor,
    anchors: torch.Tensor,
    base_rows: Callable[[torch.Tensor], torch.Tensor],
    *,
    method: str,
    k: int = 10,
    temperature: float = 0.1,
    atoms: int = 10,
    head: bool = False,
    seed: int = 0,
) -> Projection:
    """Carry `table`'s `coverage` rows into the base space.

    Args:
        table: `(V, d_source)` the source aligned on the target rows.
        coverage: `(V,)` rows it is to fill.
        anchors: `(V,)` rows both it and the base have one to one.
        base_rows: the base's input rows of given target row ids (for fitting a linear map).
        method: `"identity"`, `"linear"`, `"transport"` or `"omp"` (a recipe's `projection`, as keywords).
        k: transport's neighbours per row.
        temperature: transport's softmax temperature.
        atoms: OMP's atoms per row.
        head: the LM head is rebuilt too, so make the head's plan.
        seed: seed of the linear map's anchor split.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown projection {method!r}; expected one of {', '.join(METHODS)}.")
    if method == "identity":
        return Projection(method, report={"method": "identity"})
    if method == "linear":
        ids = anchors.nonzero().squeeze(1)
        every = torch.ones(ids.numel(), dtype=torch.bool)
        linear = fit_linear_map(table[ids], base_rows(ids).float(), every, seed=seed)
        report = {
            "method": linear.method,
            "anchors": linear.n_anchors,
            "heldout_cosine": linear.heldout_cosine,
        }
        return Projection(method, linear=linear, report=report)
    if method == "transport":
        plan = transport_plan(table, coverage, anchors, k=k, temperature=temperature, search="auto")
        report = {"method": "transport", "k": k, "temperature": temperature}
        head_plan = plan
    else:
        plan = omp_plan(table, coverage, anchors, atoms=atoms, settings=INPUT_ROWS)
        # The head's rows over every anchor where affordable; past that the head reads the input rows' plan.
        every = head and codes_over_every_anchor(coverage, anchors)
        head_plan = omp_plan(table, coverage, anchors, atoms=atoms, settings=HEAD_ROWS) if every else plan
        report = {"method": "omp", "atoms": atoms}
    stats = plan.stats
    report.update(rows=stats.n_rows, anchors=stats.n_anchors, search=stats.search)
    if stats.recall is not None:
        report["search_recall"] = round(stats.recall, 4)
    return Projection(method, plan=plan, head_plan=head_plan, report=report)
