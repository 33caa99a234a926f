"""Plain vs distillation heal at equal training time, in bits per byte on held-out English (one thread).

    hf-embfuse build examples/transplant_gemma3_to_smollm2.yaml --out /tmp/gemma3-smollm2
    hf-embfuse build examples/transplant_smollm2_to_gemma3.yaml --out /tmp/smollm2-gemma3
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_heal.py \\
        --pair /tmp/gemma3-smollm2 ~/.cache/hf_embfuse/gemma-3-270m-q4_k_m.gguf \\
        --pair /tmp/smollm2-gemma3 PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf --minutes 10

Each `--pair` is a transplanted folder and its teacher: the body's own checkpoint with its own tokenizer
(the GGUF the recipe's `base:` names). Per pair: the teacher's bits per byte on the held-out lines (the
reference, ratio 1.0×), then `hf_embfuse.training.heal` twice from the same folder, `loss="plain"` and
`loss="distill"`, each for `--minutes` of training (evaluations excluded), with the tokenizer's default
start token. Text: the OANC dev text (hf_embfuse/evaluation/dev_text.py), train split for the heals, the
first `--lines` held-out lines for the curves. Results: outputs/bench_heal.json, curves (bits per byte
over training seconds, one panel per pair) in outputs/bench_heal.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from hf_embfuse.evaluation.bits_per_byte import score_lines  # noqa: E402
from hf_embfuse.evaluation.dev_text import dev_split, oanc_sentences  # noqa: E402
from hf_embfuse.evaluation.text_command import load_causal_lm  # noqa: E402
from hf_embfuse.training import DistillConfig, heal  # noqa: E402

logger = logging.getLogger("bench_heal")
OUT = Path(__file__).resolve().parents[1] / "outputs"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_pair(
    folder: str, teacher_path: str, args: argparse.Namespace, train: list[str], heldout: list[str]
) -> dict:
    name = Path(folder).name
    teacher, teacher_tokenizer = load_causal_lm(teacher_path)
    reference = score_lines(teacher, teacher_tokenizer, heldout, show_progress=True).bits_per_byte
    logger.info("%s: teacher %s, %.4f bits per byte", name, teacher_path, reference)
    result: dict[str, Any] = {"folder": folder, "teacher": teacher_path, "reference": reference, "heals": {}}
    for loss in args.losses:
        model, tokenizer = load_causal_lm(folder)
        began = time.monotonic()
        with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
            _, curve = heal(
                model,
                tokenizer,
                train,
                heldout,
                out_dir=scratch,
                loss=loss,
                teacher=teacher if loss == "distill" else None,
                teacher_tokenizer=teacher_tokenizer,
                distill=DistillConfig(chunk_loss=args.chunk_loss, chunk_weight=args.chunk_weight),
                minutes=args.minutes,
                learning_rate=args.lr,
                batch_size=args.batch_size,
                eval_every=args.eval_every,
            )
        for point in curve:
            point["ratio"] = point["bits_per_byte"] / reference
        result["heals"][loss] = {
            "curve": curve,
            "steps": curve[-1]["step"],
            "wall_seconds": round(time.monotonic() - began, 1),
            "peak_rss_gb_so_far": round(peak_rss_gb(), 2),
        }
        logger.info(
            "%s %s: %.3fx -> %.3fx in %d steps",
            name,
            loss,
            curve[0]["ratio"],
            curve[-1]["ratio"],
            curve[-1]["step"],
        )
        del model
    del teacher
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        for loss, run in result["heals"].items():
            curve = run["curve"]
            axis.plot(
                [p["train_seconds"] for p in curve], [p["ratio"] for p in curve], marker="o", label=loss
            )
        axis.axhline(1.0, linestyle="--", color="grey", label="teacher (own tokenizer)")
        axis.set_title(Path(result["folder"]).name)
        axis.set_xlabel("training seconds")
        axis.set_ylabel("bits per byte / teacher's (held-out)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pair", nargs=2, action="append", required=True, metavar=("TRANSPLANT", "TEACHER"))
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per heal")
    parser.add_argument("--losses", nargs="+", default=["plain", "distill"], choices=["plain", "distill"])
    parser.add_argument("--lines", type=int, default=200, help="held-out lines scored")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-loss", choices=("bce", "l1"), default="bce")
    parser.add_argument("--chunk-weight", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=OUT / "bench_heal.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train, heldout = dev_split(oanc_sentences())
    heldout = heldout[: args.lines]
    results = [run_pair(folder, teacher, args, train, heldout) for folder, teacher in args.pair]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "minutes": args.minutes,
        "lines": args.lines,
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "pairs": results,
    }
    args.out.write_text(json.dumps(record, indent=2))
    plot(results, args.out.with_suffix(".png"))
    print(f"\n{'pair':28} {'zero-shot':>10} " + " ".join(f"{loss:>10}" for loss in args.losses))
    for result in results:
        heals = result["heals"]
        first = next(iter(heals.values()))["curve"][0]["ratio"]
        cells = " ".join(f"{heals[loss]['curve'][-1]['ratio']:>9.3f}x" for loss in args.losses)
        print(f"{Path(result['folder']).name:28} {first:>9.3f}x {cells}")
        if {"plain", "distill"} <= set(heals):
            plain, distill = (heals[loss]["curve"][-1]["bits_per_byte"] for loss in ("plain", "distill"))
            print(f"{'':28} distill / plain bits per byte: {distill / plain:.4f}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} (peak RSS {record['peak_rss_gb']} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
