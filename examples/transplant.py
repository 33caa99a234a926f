"""Heal a transplanted vocabulary: a short Trainer run on plain text that trains only the embedding.

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
- `embedding`: the whole input embedding (for an EmbFuse model: base table, source tables,
  projections and mixer) and the LM head (tied heads are the base table);
- `mixer`: only an EmbFuse model's mixer and projections;
- `--lora`: adds LoRA (rank 8) on attention, merged into the weights when saving.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_embfuse.evaluation.bits_per_byte import score_lines, start_token_id
from hf_embfuse.sources.gguf_model import forget_gguf_quantizer

logger = logging.getLogger("transplant")

TRAIN_CHOICES = ("embedding", "mixer")


def heal_parameters(model: Any, train: str = "embedding") -> list[torch.nn.Parameter]:
    """The parameters a heal trains: the input embedding and LM head (`embedding`), or only the mixture."""
    embedding = model.get_input_embeddings()
    if train == "mixer":
        if not hasattr(embedding, "mixer"):
            raise ValueError("--train mixer needs an EmbFuse model (its input embedding has no mixer)")
        modules = [embedding.mixer, embedding.projections]
    elif train == "embedding":
        modules = [embedding, model.get_output_embeddings()]
    else:
        raise ValueError(f"train={train!r}; choose one of {TRAIN_CHOICES}")
    chosen: dict[int, torch.nn.Parameter] = {}
    for module in modules:
        for parameter in module.parameters() if module is not None else []:
            chosen[id(parameter)] = parameter
    return list(chosen.values())


def prepare_for_heal(model: Any, train: str = "embedding", lora: bool = False) -> Any:
    """Freeze everything but what `train` names (plus LoRA adapters when `lora`); returns the model to train."""
    forget_gguf_quantizer(model)  # a GGUF base is dequantised: plain weights the Trainer may train
    model.requires_grad_(False)
    chosen = heal_parameters(model, train)
    if lora:
        from peft import LoraConfig, get_peft_model

        from hf_embfuse.training import find_attention_modules

        config = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=find_attention_modules(model)
        )
        model = get_peft_model(model, config)
    for parameter in chosen:
        parameter.requires_grad_(True)
    if getattr(model.config, "mixing", None) == "fixed":
        model.get_input_embeddings().mixer.logits.requires_grad_(False)  # not used by fixed mixing
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("training %d of %d parameters (%.1f%%)", trainable, total, 100 * trainable / total)
    return model


class LineDataset(torch.utils.data.Dataset):
    """Lines as causal-LM examples: the start token, then the line's tokens (as bits per byte scores them)."""

    def __init__(
        self, tokenizer: Any, lines: list[str], max_length: int = 256, start: int | None = None
    ) -> None:
        start = start_token_id(tokenizer) if start is None else start
        encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
        self.examples = [[start, *ids][:max_length] for ids in encoded if ids]
        self.pad = start

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> list[int]:
        return self.examples[index]

    def collate(self, batch: list[list[int]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), longest), self.pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": input_ids.masked_fill(mask == 0, -100),
        }


class BitsPerByteCurve(TrainerCallback):
    """Bits per byte on held-out lines at step 0, every `every` steps and at the end; stops after `minutes`.

    Only the training steps count towards `minutes` (and `train_seconds`), not the evaluations.
    """

    def __init__(
        self, tokenizer: Any, lines: list[str], every: int, minutes: float | None, start: int | None = None
    ) -> None:
        self.tokenizer, self.lines, self.every, self.start = tokenizer, lines, every, start
        self.limit = None if minutes is None else 60.0 * minutes
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self._step_began = 0.0

    def measure(self, model: Any, step: int) -> float:
        bpb = score_lines(model, self.tokenizer, self.lines, start_token=self.start).bits_per_byte
        self.history.append(
            {"step": step, "bits_per_byte": bpb, "train_seconds": round(self.train_seconds, 1)}
        )
        logger.info("step %d: bits per byte %.4f (%.0f s of training)", step, bpb, self.train_seconds)
        return bpb

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.measure(model, 0)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_began = time.monotonic()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.train_seconds += time.monotonic() - self._step_began
        if self.limit is not None and self.train_seconds >= self.limit:
            control.should_training_stop = True
        elif self.every and state.global_step % self.every == 0:
            self.measure(model, state.global_step)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.history[-1]["step"] != state.global_step:
            self.measure(model, state.global_step)


def heal(
    model: Any,
    tokenizer: Any,
    train_lines: list[str],
    eval_lines: list[str],
    *,
    out_dir: str | os.PathLike,
    train: str = "embedding",
    lora: bool = False,
    minutes: float | None = 10.0,
    max_steps: int = 10_000,
    learning_rate: float = 1e-4,
    batch_size: int = 8,
    eval_every: int = 25,
    seed: int = 0,
    start_token: int | None = None,
    show_progress: bool = True,
) -> tuple[Any, list[dict[str, float]]]:
    """Train what `train` names on `train_lines`; returns the model (LoRA merged) and the bits-per-byte curve.

    `start_token` is the id put before every line, in training and in the curve (see `score_lines`).
    """
    model = prepare_for_heal(model, train, lora)
    dataset = LineDataset(tokenizer, train_lines, start=start_token)
    curve = BitsPerByteCurve(tokenizer, eval_lines, eval_every, minutes, start=start_token)
    arguments = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=10,
        weight_decay=0.0,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not show_progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=seed,
    )
    trainer = Trainer(
        model=model, args=arguments, train_dataset=dataset, data_collator=dataset.collate, callbacks=[curve]
    )
    trainer.train()
    if lora:
        model = model.merge_and_unload()
    model.requires_grad_(True)
    return model.eval(), curve.history


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
    train_lines, eval_lines = _lines(args)
    model, tokenizer = load_causal_lm(args.folder)
    start = None
    if args.start_token is not None:
        start = tokenizer.get_vocab().get(args.start_token)
        if start is None:
            print(f"transplant: error: --start-token {args.start_token!r} is not a token", file=sys.stderr)
            return 2
    reference = None
    if args.reference:
        reference = score_lines(*load_causal_lm(args.reference), eval_lines).bits_per_byte
    model, history = heal(
        model,
        tokenizer,
        train_lines,
        eval_lines,
        out_dir=args.out / "trainer",
        train=args.train,
        lora=args.lora,
        minutes=args.minutes,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        start_token=start,
    )
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
