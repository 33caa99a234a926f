"""Projection of aligned source tables into the base model's embedding space.

Two ways: a linear map fitted on anchor tokens (`fit_linear_map`), and transport, which rebuilds each
row from the base vectors of its source-space neighbours (`transport_table`).
"""

from .linear import RIDGE_GRID, LinearMap, anchor_mask, fit_linear_map
from .transport import (
    TransportPlan,
    TransportStats,
    anchor_neighbours,
    faiss_available,
    transport_plan,
    transport_table,
)

__all__ = [
    "RIDGE_GRID",
    "LinearMap",
    "TransportPlan",
    "TransportStats",
    "anchor_mask",
    "anchor_neighbours",
    "faiss_available",
    "fit_linear_map",
    "transport_plan",
    "transport_table",
]
