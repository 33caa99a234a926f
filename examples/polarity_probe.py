"""How much polarity information each input table holds before any fine-tuning: a linear probe.

    python examples/polarity_probe.py --out outputs/polarity [--projection linear] [--sources smollm2 glove gemma]

Each sentence becomes the mean of its tokens' rows (no special tokens; for a source, over the tokens it
covers), standardised; an L2-regularised logistic regression (λ = 0.01, L-BFGS) is fit on the training split
and scored on the test split of `finetune_polarity.py`. Tables: MiniLM's own input embedding, each source as
the fused model holds it (transported into MiniLM's space, or the raw aligned rows for `--projection linear`),
the fused table at its initial weights and the concatenation of all. Uses the source cache that
`finetune_polarity.py` writes in `--out` (built here if missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_polarity import BASE, build_sources
from finetune_polarity import parse_args as finetune_args
from polarity_data import load_polarity
from transformers import AutoModel, AutoTokenizer

from hf_embfuse.recipe import resolve_path

Bags = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def bags(rows: list[tuple[str, int]], tokenizer) -> Bags:
    encoded = tokenizer([text for text, _ in rows], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([i for sentence in encoded for i in sentence])
    offsets = torch.tensor([0] + [len(sentence) for sentence in encoded[:-1]]).cumsum(0)
    return ids, offsets, torch.tensor([label for _, label in rows], dtype=torch.float32)


def features(table: torch.Tensor, coverage: torch.Tensor | None, data: Bags) -> torch.Tensor:
    ids, offsets, _ = data
    weights = torch.ones(ids.shape) if coverage is None else coverage[ids].float()
    total = F.embedding_bag(ids, table, offsets, mode="sum", per_sample_weights=weights)
    count = F.embedding_bag(
        ids, torch.ones(table.shape[0], 1), offsets, mode="sum", per_sample_weights=weights
    )
    return total / count.clamp_min(1)


def probe(
    table: torch.Tensor, train: Bags, test: Bags, coverage: torch.Tensor | None = None, l2: float = 0.01
):
    """Test accuracy of a logistic regression on mean rows."""
    x_train, x_test = features(table, coverage, train), features(table, coverage, test)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    w = torch.zeros(x_train.shape[1] + 1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=300)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x_train @ w[:-1] + w[-1]
        loss = F.binary_cross_entropy_with_logits(logits, train[2]) + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((x_test @ w[:-1] + w[-1] > 0).float() == test[2]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/polarity"))
    parser.add_argument("--projection", choices=["transport", "linear"], default="transport")
    parser.add_argument("--sources", nargs="+", default=None)
    own = parser.parse_args()
    torch.set_num_threads(1)
    argv = ["--out", str(own.out), "--projection", own.projection]
    args = finetune_args(argv + (["--sources", *own.sources] if own.sources else []))
    base_path = resolve_path(BASE)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    base = AutoModel.from_pretrained(base_path).get_input_embeddings().weight.detach().float()
    specs = build_sources(args, base_path)
    splits = load_polarity()
    train, test = bags(splits.train, tokenizer), bags(splits.test, tokenizer)

    print("| table | width | probe test accuracy |\n|---|---|---|")
    print(f"| MiniLM input embedding | {base.shape[1]} | {probe(base, train, test):.4f} |")
    tables = [spec.table.float() for spec in specs]
    for spec, table in zip(specs, tables, strict=True):
        kind = "raw aligned rows" if spec.projection == "linear" else "transported"
        score = probe(table, train, test, spec.coverage)
        print(f"| {spec.info['name']} ({kind}, covered tokens) | {table.shape[1]} | {score:.4f} |")
    if all(spec.projection == "identity" for spec in specs):
        # The fused table at its initial weights, masked as the model does (sources drop out where uncovered).
        share = (1 - args.base_weight) / len(specs)
        weights = torch.stack(
            [torch.full((base.shape[0],), args.base_weight)]
            + [share * spec.coverage.float() for spec in specs],
            1,
        )
        weights = weights / weights.sum(1, keepdim=True)
        fused = weights[:, :1] * base + sum(weights[:, i + 1, None] * t for i, t in enumerate(tables))
        print(f"| fused, initial weights | {base.shape[1]} | {probe(fused, train, test):.4f} |")
    concat = torch.cat([base, *tables], 1)
    print(f"| concatenation MiniLM + sources | {concat.shape[1]} | {probe(concat, train, test):.4f} |")


if __name__ == "__main__":
    main()
