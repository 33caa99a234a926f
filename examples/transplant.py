"""Heal a transplanted vocabulary: a short Trainer run on plain text that trains only the embedding.

The heal itself is `hf_embfuse.training.heal` (Python users call it directly); this is its command.

After `hf-embfuse build` gives a model another tokenizer (recipe `tokenizer:`), its body has never
seen the new segmentation. A few minutes of next-token training on plain text that touches only
the fused input/output embedding (optionally LoRA on attention too, never the whole body) recovers
part of the loss. Bits per byte on held-out lines is measured before, every `--eval-every` steps
and at the end, and plotted.

    hf-embfuse build examples/transplant_smollm2_to_gemma3.yaml --out smollm2-gemma3
    python examples/transplant.py smollm2-gemma3 --out smollm2-gemma3-healed --minutes 10

Without `--text` the OANC dev text is used (fetched at run time, see hf_embfuse/evaluation/dev_text.py):
its train split for training, the first `--eval-lines` of its held-out split for the curve.
What trains (`--train`):
- `embedding`: the input embedding (for an EmbFuse model: base table, projections and mixer, and the
  source tables where the config says `train_sources`) and the LM head (tied heads are the base table);
- `mixer`: only an EmbFuse model's mixer and projections;
- `--lora`: adds LoRA (rank 8) on attention, merged into the weights when saving.
The loss (`--loss`): `plain` next-token loss, or `distill`, which also matches the chunk likelihoods of
the original model with its own tokenizer (`--teacher`, e.g. the base GGUF; see
hf_embfuse/training/distill.py for the design):

    python examples/transplant.py smollm2-gemma3 --out healed --minutes 10 --loss distill \
        --teacher ~/.cache/hf_embfuse/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from hf_embfuse.evaluation.bits_per_byte import score_lines
from hf_embfuse.training.distill import DistillConfig
from hf_embfuse.training.heal import (  # noqa: F401  (the names this example has always offered)
    LOSS_CHOICES,
    TRAIN_CHOICES,
    LineDataset,
    heal,
    heal_parameters,
    prepare_for_heal,
)
from hf_embfuse.training.heal_callbacks import BitsPerByteCurve  # noqa: F401

logger = logging.getLogger("transplant")


def plot_curve(
    curves: dict[str, list[dict[str, float]]], path: str | os.PathLike, reference: float | None
) -> Path:
    """Bits per byte over steps, one line per curve, the reference model's figure as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, history in curves.items():
        axes.plot([h["step"] for h in history], [h["bits_per_byte"] for h in history], marker="o", label=name)
    if reference is not None:
        axes.axhline(reference, linestyle="--", color="grey", label="own tokenizer")
    axes.set_xlabel("heal step")
    axes.set_ylabel("bits per byte (held-out)")
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _lines(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from hf_embfuse.evaluation.bits_per_byte import read_text_lines
    from hf_embfuse.evaluation.dev_text import dev_split, oanc_sentences

    if args.text is not None:
        lines = read_text_lines(args.text)
        cut = max(1, min(args.eval_lines, len(lines) // 5))
        return lines[cut:], lines[:cut]
    train, heldout = dev_split(oanc_sentences())
    return train, heldout[: args.eval_lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folder", help="the transplanted model (an EmbFuse causal-LM folder, or any causal LM)"
    )
    parser.add_argument("--out", type=Path, required=True, help="where the healed model, curve and plot go")
    parser.add_argument(
        "--text", type=Path, help="UTF-8 text, one passage a line (default: the OANC dev text)"
    )
    parser.add_argument("--train", choices=TRAIN_CHOICES, default="embedding")
    parser.add_argument("--lora", action="store_true", help="also LoRA (rank 8) on attention")
    parser.add_argument(
        "--loss",
        choices=LOSS_CHOICES,
        default="plain",
        help="plain next-token loss, or distill: also match the original model's chunk likelihoods",
    )
    parser.add_argument(
        "--teacher",
        help="for --loss distill: the original model with its own tokenizer (default: --reference)",
    )
    parser.add_argument("--lm-weight", type=float, default=1.0, help="distill: weight of the next-token loss")
    parser.add_argument("--chunk-weight", type=float, default=1.0, help="distill: weight of chunk matching")
    parser.add_argument(
        "--chunk-loss", choices=("bce", "l1"), default="bce", help="distill: ALM's bce, or l1"
    )
    parser.add_argument("--teacher-cache", type=Path, help="distill: a folder for the teacher's log-probs")
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="training time limit (evaluations excluded)"
    )
    parser.add_argument("--max-steps", type=int, default=10_000)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-lines", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--reference", help="the original model with its own tokenizer, drawn as a line")
    parser.add_argument(
        "--start-token",
        help="the token put before each line, in training and scoring (the body's own start token under its "
        "new name; default: as `hf-embfuse eval --text`)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from hf_embfuse.evaluation.text_command import load_causal_lm

    if args.out.exists():
        print(f"transplant: error: {args.out} already exists", file=sys.stderr)
        return 2
    teacher_path = args.teacher or args.reference
    if args.loss == "distill" and teacher_path is None:
        print(
            "transplant: error: --loss distill needs --teacher (the original model) or --reference",
            file=sys.stderr,
        )
        return 2
    train_lines, eval_lines = _lines(args)
    model, tokenizer = load_causal_lm(args.folder)
    start = None
    if args.start_token is not None:
        start = tokenizer.get_vocab().get(args.start_token)
        if start is None:
            print(f"transplant: error: --start-token {args.start_token!r} is not a token", file=sys.stderr)
            return 2
    reference = teacher = teacher_tokenizer = None
    if args.reference:
        logger.info("scoring the reference %s on %d held-out lines", args.reference, len(eval_lines))
        reference = score_lines(*load_causal_lm(args.reference), eval_lines, show_progress=True).bits_per_byte
    if args.loss == "distill":
        teacher, teacher_tokenizer = load_causal_lm(teacher_path)
    model, history = heal(
        model,
        tokenizer,
        train_lines,
        eval_lines,
        out_dir=args.out / "trainer",
        train=args.train,
        lora=args.lora,
        loss=args.loss,
        teacher=teacher,
        teacher_tokenizer=teacher_tokenizer,
        distill=DistillConfig(
            lm_weight=args.lm_weight,
            chunk_weight=args.chunk_weight,
            chunk_loss=args.chunk_loss,
            cache_dir=args.teacher_cache,
        ),
        minutes=args.minutes,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        start_token=start,
    )
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, every rank healed the same model
        return 0
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "heal_curve.json").write_text(
        json.dumps({"reference": reference, "curve": history}, indent=2)
    )
    plot = plot_curve({"heal": history}, args.out / "heal_curve.png", reference)
    first, last = history[0]["bits_per_byte"], history[-1]["bits_per_byte"]
    print(f"bits per byte: {first:.4f} -> {last:.4f} after {history[-1]['step']} steps")
    if reference is not None and not math.isclose(first, reference):
        closed = (first - last) / (first - reference)
        print(
            f"own tokenizer {reference:.4f}: ratio {first / reference:.3f}x -> {last / reference:.3f}x ({closed:.0%} of the gap)"
        )
    print(f"wrote {args.out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
