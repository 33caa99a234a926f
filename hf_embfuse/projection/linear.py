"""Linear maps from a source's embedding space into the base model's, initialised from anchor tokens.

An anchor is a base-vocabulary row that both the (aligned) source and the base cover. The map is fitted
in closed form: centre both sides, rescale the source so its mean row norm matches the base's, then
either ridge least squares (any widths) or orthogonal Procrustes (a rotation; the natural choice at
equal width, where two models' spaces differ by roughly a rotation). A share of the anchors is held
out, so the map reports how faithfully it carries rows it never saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ._checks import as_mask, check_finite, check_table

logger = logging.getLogger(__name__)

Method = Literal["auto", "ridge", "procrustes"]

# Ridge strengths are relative to the mean eigenvalue of the anchors' Gram matrix, so one grid serves
# tables of any scale and width.
RIDGE_GRID: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_RIDGE = 1e-2
# Below this many training anchors, a validation split for choosing the ridge strength is noise.
_MIN_ANCHORS_FOR_GRID = 20
_RIDGE_FLOOR = 1e-10


@dataclass
class LinearMap:
    """An affine map `P(x) = x @ weight.T + bias` from a source space into the base space.

    Attributes:
        weight: `(d_base, d_source)` float32 matrix.
        bias: `(d_base,)` float32 vector.
        method: `"ridge"` or `"procrustes"`.
        ridge: relative ridge strength used (fraction of the mean eigenvalue of the anchors' Gram
            matrix), `None` for Procrustes.
        scale: factor applied to the centred source rows so their mean norm matches the base's.
        n_anchors: anchors available; `n_train` were fitted on and `n_heldout` held out.
        train_cosine: mean cosine between mapped and base rows on the training anchors.
        heldout_cosine: the same on the held-out anchors, `None` when nothing was held out.
        heldout_centered_cosine: the same after subtracting the base's mean anchor row from both
            sides. Embedding tables share a common direction, so even predicting the mean row scores
            a positive plain cosine; this figure starts from 0 for such a map.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    method: str
    ridge: float | None
    scale: float
    n_anchors: int
    n_train: int
    n_heldout: int
    train_cosine: float
    heldout_cosine: float | None
    heldout_centered_cosine: float | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Map rows `x` (`(..., d_source)`) into the base space."""
        weight = self.weight.to(device=x.device, dtype=x.dtype)
        return x @ weight.T + self.bias.to(device=x.device, dtype=x.dtype)

    def stats(self) -> dict[str, Any]:
        """The fit's figures as plain JSON-able values (for alignment reports and model cards)."""
        return {
            "method": self.method,
            "ridge": self.ridge,
            "scale": self.scale,
            "n_anchors": self.n_anchors,
            "n_train": self.n_train,
            "n_heldout": self.n_heldout,
            "train_cosine": self.train_cosine,
            "heldout_cosine": self.heldout_cosine,
            "heldout_centered_cosine": self.heldout_centered_cosine,
        }


def anchor_mask(
    coverage: torch.Tensor,
    *,
    base_coverage: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows usable as anchors: covered by the source (and the base, if it has gaps), minus `exclude`.

    Args:
        coverage: `(V,)` boolean mask of base-vocabulary rows the aligned source covers.
        base_coverage: optional `(V,)` mask of rows the base table really has (e.g. not padding rows).
        exclude: optional mask or row ids to leave out, e.g. special tokens, whose rows are trained for
            roles rather than meaning and make poor anchors.
    """
    mask = as_mask("coverage", coverage.shape[0], coverage).clone()
    if base_coverage is not None:
        mask &= as_mask("base_coverage", mask.shape[0], base_coverage)
    if exclude is not None:
        mask &= ~as_mask("exclude", mask.shape[0], exclude)
    return mask


def _mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    # Written out: torch's cosine_similarity is several times slower on tall float64 inputs.
    dots = (a * b).sum(dim=1)
    return float((dots / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).mean())


def _split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = round(holdout * n)
    # Keep at least two rows to fit on: one row has no spread to centre.
    n_held = max(0, min(n_held, n - 2))
    if holdout > 0 and n_held == 0:
        logger.warning("Only %d anchors: nothing held out, so no held-out cosine is reported.", n)
    return perm[n_held:], perm[:n_held]


def _choose_ridge(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Pick the relative ridge strength on an inner validation split of the training anchors.

    Returns the strength and the full training Gram and cross-covariance matrices, which the inner
    split's pieces sum to, so the big products are computed once.
    """
    n = x.shape[0]
    fit, val = _split(n, 0.1, seed + 1) if n >= _MIN_ANCHORS_FOR_GRID else (torch.arange(n), torch.arange(0))
    x_fit, y_fit = x[fit], y[fit]
    gram_fit, cross_fit = x_fit.T @ x_fit, x_fit.T @ y_fit
    if val.numel() == 0:
        return DEFAULT_RIDGE, gram_fit, cross_fit
    x_val, y_val = x[val], y[val]
    gram_val, cross_val = x_val.T @ x_val, x_val.T @ y_val
    # One eigendecomposition serves every grid value: W(λ) = Q diag(1 / (e + λ)) Qᵀ Xᵀ Y.
    eigvals, eigvecs = torch.linalg.eigh(gram_fit)
    unit = float(eigvals.clamp_min(0).mean())
    projected_val = x_val @ eigvecs
    rotated_cross = eigvecs.T @ cross_fit
    errors = []
    for alpha in RIDGE_GRID:
        pred = (projected_val / (eigvals.clamp_min(0) + alpha * unit)) @ rotated_cross
        errors.append(float(((pred - y_val) ** 2).sum()))
    best = RIDGE_GRID[min(range(len(RIDGE_GRID)), key=errors.__getitem__)]
    logger.debug("Ridge grid %s: validation errors %s; chose %g.", RIDGE_GRID, errors, best)
    return best, gram_fit + gram_val, cross_fit + cross_val


def fit_linear_map(
    source_table: torch.Tensor,
    base_table: torch.Tensor,
    anchors: torch.Tensor,
    *,
    method: Method = "auto",
    ridge: float | None = None,
    holdout: float = 0.1,
    seed: int = 0,
) -> LinearMap:
    """Fit an affine map from the source space into the base space on anchor rows, without training.

    Args:
        source_table: `(V, d_source)` source table aligned to the base vocabulary.
        base_table: `(V, d_base)` the base model's input-embedding table.
        anchors: boolean mask `(V,)` or row ids of rows both tables cover (see `anchor_mask`).
        method: `"procrustes"` (orthogonal map after scale matching; at unequal widths a
            semi-orthogonal one), `"ridge"` (ridge least squares), or `"auto"`: Procrustes at equal
            width, ridge otherwise.
        ridge: relative ridge strength (fraction of the mean eigenvalue of the anchors' Gram matrix);
            `None` chooses it from `RIDGE_GRID` on a validation split of the training anchors. Values
            below 1e-10 are raised to it, so the solve stays finite with fewer anchors than dimensions.
        holdout: share of the anchors held out to measure `heldout_cosine`.
        seed: seed of the anchor splits; the same inputs and seed give the same map.

    Returns:
        A `LinearMap` with float32 `weight` `(d_base, d_source)` and `bias` `(d_base,)`.
    """
    check_table("source_table", source_table)
    check_table("base_table", base_table, rows=source_table.shape[0])
    if method not in ("auto", "ridge", "procrustes"):
        raise ValueError(f"`method` must be 'auto', 'ridge' or 'procrustes', got {method!r}.")
    if not 0 <= holdout < 1:
        raise ValueError(f"`holdout` must be in [0, 1), got {holdout}.")
    if ridge is not None and not ridge >= 0:
        raise ValueError(f"`ridge` must be a non-negative relative strength or None, got {ridge}.")
    index = as_mask("anchors", source_table.shape[0], anchors).nonzero().squeeze(1)
    if index.numel() < 2:
        raise ValueError(
            f"Need at least 2 anchor rows to fit a map, got {index.numel()}. Anchors are rows both the "
            "source and the base cover; check the source's alignment coverage."
        )
    d_source, d_base = source_table.shape[1], base_table.shape[1]
    if method == "auto":
        method = "procrustes" if d_source == d_base else "ridge"

    # Float64 from here: Gram matrices of tens of thousands of rows lose digits in float32.
    x_all = source_table.detach()[index.to(source_table.device)].cpu().double()
    y_all = base_table.detach()[index.to(base_table.device)].cpu().double()
    check_finite("source_table", x_all, index)
    check_finite("base_table", y_all, index)

    train, held = _split(index.numel(), holdout, seed)
    x, y = x_all[train], y_all[train]
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    norm_x = float(xc.norm(dim=1).mean())
    if norm_x == 0.0:
        raise ValueError(
            "The source's anchor rows are all identical, so there is nothing to map; "
            "check that `source_table` holds real vectors on the anchor rows."
        )
    scale = float(yc.norm(dim=1).mean()) / norm_x
    xc = xc * scale

    ridge_used: float | None = None
    if method == "procrustes":
        u, _, vh = torch.linalg.svd(yc.T @ xc, full_matrices=False)
        core = u @ vh
    else:
        if ridge is None:
            ridge_used, gram, cross = _choose_ridge(xc, yc, seed)
        else:
            ridge_used, gram, cross = float(ridge), xc.T @ xc, xc.T @ yc
        # The floor keeps the solve finite when ridge=0 and there are fewer anchors than dimensions.
        lam = max(ridge_used, _RIDGE_FLOOR) * float(gram.diagonal().mean())
        # Ridge output shrinks toward the base mean as far as the source fails to predict the base; kept
        # on purpose: restoring full norms let weak maps add noise (mixes with GloVe/SmolLM2 lost .02-.04 ρ).
        core = torch.linalg.solve(gram + lam * torch.eye(d_source, dtype=gram.dtype), cross).T

    weight = scale * core
    bias = mean_y - weight @ mean_x
    # Fidelity figures need no float64: map in float32, the dtype the map is used in.
    weight32, bias32 = weight.float(), bias.float()
    train_cos = _mean_cosine(x.float() @ weight32.T + bias32, y.float())
    held_cos = held_centered = None
    if held.numel():
        mapped, target = x_all[held].float() @ weight32.T + bias32, y_all[held].float()
        held_cos = _mean_cosine(mapped, target)
        held_centered = _mean_cosine(mapped - mean_y.float(), target - mean_y.float())
    result = LinearMap(
        weight=weight32,
        bias=bias32,
        method=method,
        ridge=ridge_used,
        scale=scale,
        n_anchors=index.numel(),
        n_train=train.numel(),
        n_heldout=held.numel(),
        train_cosine=train_cos,
        heldout_cosine=held_cos,
        heldout_centered_cosine=held_centered,
    )
    logger.info(
        "Linear map %d -> %d (%s) on %d anchors: train cosine %.3f, held-out cosine %s (centred %s).",
        d_source,
        d_base,
        method,
        index.numel(),
        train_cos,
        "n/a" if held_cos is None else f"{held_cos:.3f}",
        "n/a" if held_centered is None else f"{held_centered:.3f}",
    )
    return result
