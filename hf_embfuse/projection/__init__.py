"""Projection of aligned source tables into the base model's embedding space: one home for the methods.

A linear map fitted on anchor tokens (`fit_linear_map`); transport, which rebuilds each row from the
base vectors of its source-space neighbours (`transport_plan`); and OMP, which codes each row over a few
anchors (`omp_plan`). Transport and OMP return a `RowPlan`; `project` picks the method a recipe names.
"""

from .linear import RIDGE_GRID, LinearMap, anchor_mask, fit_linear_map
from .methods import METHODS, Projection, project
from .omp import HEAD_ROWS, INPUT_ROWS, OmpSettings, codes_over_every_anchor, omp_plan
from .plan import PlanStats, RowPlan
from .transport import (
    TransportPlan,
    TransportStats,
    anchor_neighbours,
    faiss_available,
    transport_plan,
    transport_table,
)

__all__ = [
    "HEAD_ROWS",
    "INPUT_ROWS",
    "METHODS",
    "RIDGE_GRID",
    "LinearMap",
    "OmpSettings",
    "PlanStats",
    "Projection",
    "RowPlan",
    "TransportPlan",
    "TransportStats",
    "anchor_mask",
    "anchor_neighbours",
    "codes_over_every_anchor",
    "faiss_available",
    "fit_linear_map",
    "omp_plan",
    "project",
    "transport_plan",
    "transport_table",
]
