"""Word similarity of the demo's fused MiniLM vs each of its sources and the simple baselines.

Builds `examples/fused_minilm.yaml` into `outputs/fused-minilm` (or reuses it), loads it back the
way users do (`AutoModel.from_pretrained`, no remote code), and prints Spearman's ρ on WordSim-353,
SimLex-999 and MEN for: the fused table at the recipe's initial weights (base 0.5, sources 0.25
each; `learned` mode, untrained), MiniLM alone, SmolLM2 and GloVe alone (transported into MiniLM's
space, covered rows only), the unweighted masked average and the concatenation. Then the same fused
model at other fixed weightings (`--weightings`).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/eval_demo.py [--rebuild] [--json FILE]

Other weightings are applied by setting the mixer to `fixed` with the given weights, which gives the
table `fuse(..., mixing="fixed", base_weight=w0)` builds (same sources, same transport; only the mix
differs) without reading and aligning the sources again; `--check-rebuild` builds one with `fuse`
and confirms it. `--linear` also builds the same recipe with linear (ridge) maps instead of
transport, for the comparison in DESIGN.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hf_embfuse.evaluation import evaluate_fused, load_standard_wordsim
from hf_embfuse.evaluation.command import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
WEIGHTINGS = ((0.75, 0.125, 0.125), (0.6, 0.2, 0.2), (0.4, 0.3, 0.3), (1 / 3, 1 / 3, 1 / 3), (1.0, 0.0, 0.0))


def build(recipe_path: Path, out: Path, rebuild: bool) -> float:
    """Build the demo model into `out` unless it is there already; return the seconds spent."""
    if (out / "config.json").is_file() and not rebuild:
        print(f"reusing {out} (pass --rebuild to build it again)")
        return 0.0
    from hf_embfuse import build_to_folder, load_recipe

    start = time.perf_counter()
    build_to_folder(load_recipe(recipe_path), out, overwrite=True)
    seconds = time.perf_counter() - start
    print(f"built {out} in {seconds:.1f} s")
    return seconds


def set_fixed_weights(model: torch.nn.Module, weights: tuple[float, ...]) -> None:
    """Mix with fixed `weights` (renormalised over the sources covering each token)."""
    mixer = model.get_input_embeddings().mixer
    mixer.mode = "fixed"
    mixer.fixed_weights.copy_(torch.tensor(weights, dtype=torch.float32))


def check_rebuild(recipe_path: Path, model: torch.nn.Module, weights: tuple[float, ...]) -> float:
    """Max |Δ| between the reweighted table and one `fuse(..., base_weight=weights[0])` builds."""
    from hf_embfuse import fuse, load_recipe

    recipe = load_recipe(recipe_path)
    rebuilt = fuse(
        recipe.base, recipe.model_copy(update={"mixing": "fixed", "base_weight": weights[0]})
    ).model
    set_fixed_weights(model, weights)
    ours = model.get_input_embeddings().fused_weight()
    theirs = rebuilt.get_input_embeddings().fused_weight()
    return (ours - theirs).abs().max().item()


def fuse_linear(recipe_path: Path) -> torch.nn.Module:
    """The demo recipe with every source mapped by an anchor-fitted linear map instead of transport."""
    from hf_embfuse import Linear, fuse, load_recipe

    recipe = load_recipe(recipe_path)
    sources = [s.model_copy(update={"projection": Linear()}) for s in recipe.sources]
    return fuse(recipe.base, recipe.model_copy(update={"mixing": "fixed", "sources": sources})).model


def reweighted_rows(model, tokenizer, datasets, label: str) -> dict:
    """The fused row of `model` at each of `WEIGHTINGS`."""
    rows = {}
    for weights in WEIGHTINGS:
        set_fixed_weights(model, weights)
        per_dataset = evaluate_fused(model, tokenizer, datasets, baselines=False)
        rows[f"{label} " + "/".join(f"{w:.3g}" for w in weights)] = per_dataset.results[per_dataset.tables[0]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default=ROOT / "examples" / "fused_minilm.yaml", type=Path)
    parser.add_argument("--out", default=ROOT / "outputs" / "fused-minilm", type=Path)
    parser.add_argument("--rebuild", action="store_true", help="build the model even if --out holds one")
    parser.add_argument("--json", type=Path, help="also write every table as JSON")
    parser.add_argument("--linear", action="store_true", help="also build and score linear-map projections")
    parser.add_argument(
        "--check-rebuild", action="store_true", help="confirm a reweighting equals a fresh fuse()"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    build(args.recipe, args.out, args.rebuild)
    datasets = load_standard_wordsim()
    model, tokenizer = load_checkpoint(args.out)
    initial = [round(w, 3) for w in model.get_input_embeddings().mean_mixing_weights().tolist()]

    start = time.perf_counter()
    table = evaluate_fused(model, tokenizer, datasets)
    seconds = time.perf_counter() - start
    print(f"\n## {args.out.name}: {model.config.mixing} mixing, mean weights {initial} (untrained)\n")
    print(table.to_markdown())
    base = next(name for name in table.tables if name.endswith("(base)"))
    fused = table.tables[0]
    print(
        f"\nfused − base, mean ρ: {table.mean(fused) - table.mean(base):+.3f}; "
        f"best by mean: {table.best()}; evaluated in {seconds:.1f} s"
    )
    report = {"initial": table.to_dict()}

    rows = reweighted_rows(model, tokenizer, datasets, "fused fixed")
    reweighted = type(table)(results={base: table.results[base], **rows})
    print("\n## the same sources at fixed weightings (base / SmolLM2 / GloVe)\n")
    print(reweighted.to_markdown())
    report["fixed_weightings"] = reweighted.to_dict()

    if args.linear:
        start = time.perf_counter()
        linear = fuse_linear(args.recipe)
        print(f"\nbuilt the linear-map variant in {time.perf_counter() - start:.1f} s")
        linear_table = evaluate_fused(linear, tokenizer, datasets)
        linear_rows = reweighted_rows(linear, tokenizer, datasets, "linear fixed")
        linear_table.results.update(linear_rows)
        print("\n## the same recipe with linear (ridge) maps instead of transport\n")
        print(linear_table.to_markdown())
        report["linear"] = linear_table.to_dict()

    if args.check_rebuild:
        difference = check_rebuild(args.recipe, model, WEIGHTINGS[0])
        print(f"\nreweighted vs fuse(base_weight={WEIGHTINGS[0][0]}): max |Δ| = {difference:.2e}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
