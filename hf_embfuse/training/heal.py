"""The heal: a short Trainer run that trains a transplanted model's embedding and head on plain text.

After a transplant (recipe `tokenizer:`) the body has never seen the new segmentation. A few minutes
of training on plain text that touches only the input embedding and the LM head (optionally LoRA on
attention, never the whole body) recovers part of the loss. Two losses (`loss=`):

- `"plain"`: next-token cross-entropy on the transplanted model's own tokens;
- `"distill"`: that, plus matching the original model's likelihoods of text chunks (see `distill.py`).

Bits per byte on held-out lines is measured at step 0, every `eval_every` steps and at the end. Memory:
the loss never holds the whole batch's logits (`chunked_loss.py`), and the optimizer only ever sees the
parameters that train, so the frozen body has no optimizer state.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from ..evaluation.bits_per_byte import start_token_id
from ..sources.gguf_model import forget_gguf_quantizer
from .chunked_loss import next_token_log_probs
from .heal_callbacks import BitsPerByteCurve, TimeBudgetProgress

logger = logging.getLogger(__name__)

TRAIN_CHOICES = ("embedding", "mixer")
LOSS_CHOICES = ("plain", "distill")


def heal_parameters(model: Any, train: str = "embedding") -> list[torch.nn.Parameter]:
    """The parameters a heal trains: the input embedding and LM head (`embedding`), or only the mixture.

    An EmbFuse model's source (donor) tables train only where its config says `train_sources=True`: on
    the 262k-token transplant they are 168M frozen parameters that would triple the optimizer state.
    """
    embedding = model.get_input_embeddings()
    frozen: set[int] = set()
    tables = getattr(embedding, "source_tables", None)
    if tables is not None and not getattr(model.config, "train_sources", False):
        frozen = {id(parameter) for parameter in tables.parameters()}
    if train == "mixer":
        if not hasattr(embedding, "mixer"):
            raise ValueError("train='mixer' needs an EmbFuse model (its input embedding has no mixer)")
        modules = [embedding.mixer, embedding.projections]
    elif train == "embedding":
        modules = [embedding, model.get_output_embeddings()]
    else:
        raise ValueError(f"train={train!r}; choose one of {TRAIN_CHOICES}")
    chosen: dict[int, torch.nn.Parameter] = {}
    for module in modules:
        for parameter in module.parameters() if module is not None else []:
            if id(parameter) not in frozen:
                chosen[id(parameter)] = parameter
    return list(chosen.values())


def prepare_for_heal(model: Any, train: str = "embedding", lora: bool = False) -> Any:
    """Freeze everything but what `train` names (plus LoRA adapters when `lora`); returns the model to train."""
    forget_gguf_quantizer(model)  # a GGUF base is dequantised: plain weights the Trainer may train
    model.requires_grad_(False)
    chosen = heal_parameters(model, train)
    if lora:
        from peft import LoraConfig, get_peft_model

        from .peft_utils import find_attention_modules

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
        input_ids, mask = pad_right(batch, self.pad)
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": target_labels(input_ids, mask),
        }


def pad_right(batch: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(ids, attention_mask)` of right-padded sequences."""
    longest = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    return input_ids, mask


def target_labels(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels whose non-`-100` entries are exactly the predicted tokens: padding and each row's start are -100.

    A plain `Trainer` (which shifts them) gets the same loss; the Trainer counts them for `num_items_in_batch`.
    """
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, 0] = -100
    return labels


class HealTrainer(Trainer):
    """A `Trainer` whose loss is the next-token cross-entropy computed a chunk of positions at a time.

    Same figure as the model's own loss (plus an EmbFuse model's `reg_lambda · Ω`), without the
    `(batch, positions, vocabulary)` logits: see `chunked_loss.py`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The loss is a sum over tokens divided by the global batch's token count (`num_items_in_batch`,
        # gathered over ranks and accumulation steps), so N processes and one process with the same global
        # batch take the same step, whatever the lines' lengths.
        self.model_accepts_loss_kwargs = True

    def rank_factor(self, num_items_in_batch: Any) -> int:
        """What the loss is multiplied by, as `Trainer.compute_loss` does when `num_items_in_batch` is global:
        DDP averages the ranks' gradients, and the token loss is a share of a sum over all ranks."""
        if num_items_in_batch is None or not self.args.average_tokens_across_devices:
            return 1
        return self.accelerator.num_processes

    def per_batch_scale(self, num_items_in_batch: Any) -> float:
        """What a per-batch mean term is divided by so that, like the token loss, it sums to a global mean
        (over ranks, and over accumulation steps, which the Trainer does not divide a loss normalised by
        `num_items_in_batch` by)."""
        if num_items_in_batch is None:
            return 1.0
        return float(self.rank_factor(num_items_in_batch) * self.current_gradient_accumulation_steps)

    def lm_loss(
        self, log_probs: torch.Tensor, inputs: dict[str, Any], num_items_in_batch: Any
    ) -> torch.Tensor:
        """Mean next-token loss: over the global batch's tokens when the Trainer counted them, else this batch's."""
        count = inputs["attention_mask"][:, 1:].sum() if num_items_in_batch is None else num_items_in_batch
        return -log_probs.sum() / (count.clamp(min=1) if torch.is_tensor(count) else max(1, count))

    def output_head(self, model: Any) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model).get_output_embeddings()

    def student_log_probs(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return next_token_log_probs(model, input_ids, attention_mask, head=self.output_head(model))

    def regularization(self, model: Any, input_ids: torch.Tensor) -> torch.Tensor | None:
        """An EmbFuse model's `reg_lambda · Ω`, which its forward adds only when given labels."""
        unwrapped = self.accelerator.unwrap_model(model)
        embedding = unwrapped.get_input_embeddings()
        weight = getattr(unwrapped.config, "reg_lambda", 0.0) or 0.0
        if not weight or not callable(getattr(embedding, "regularization", None)):
            return None
        term = embedding.regularization(input_ids)
        return None if term is None else weight * term

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        log_probs = self.student_log_probs(model, inputs["input_ids"], inputs["attention_mask"])
        loss = self.lm_loss(log_probs, inputs, num_items_in_batch)
        extra = self.regularization(model, inputs["input_ids"])
        if extra is not None:
            loss = loss + extra / self.per_batch_scale(num_items_in_batch)
        loss = loss * self.rank_factor(num_items_in_batch)
        return (loss, {"loss": loss}) if return_outputs else loss


def heal(
    model: Any,
    tokenizer: Any,
    train_lines: list[str],
    eval_lines: list[str],
    *,
    out_dir: str | os.PathLike,
    train: str = "embedding",
    lora: bool = False,
    loss: str = "plain",
    teacher: Any = None,
    teacher_tokenizer: Any = None,
    distill: Any = None,
    minutes: float | None = 10.0,
    max_steps: int = 10_000,
    learning_rate: float = 1e-4,
    batch_size: int = 8,
    max_length: int = 256,
    eval_every: int = 25,
    seed: int = 0,
    start_token: int | None = None,
    show_progress: bool = True,
    training_args: dict[str, Any] | None = None,
) -> tuple[Any, list[dict[str, float]]]:
    """Heal `model`; returns it (LoRA merged, in eval mode) and the bits-per-byte curve.

    Args:
        model, tokenizer: the transplanted causal LM and its (target) tokenizer.
        train_lines, eval_lines: plain text, one passage a line; the curve scores `eval_lines`.
        out_dir: the Trainer's output folder (nothing is saved there unless `training_args` asks).
        train: `"embedding"` (input embedding and LM head) or `"mixer"` (an EmbFuse model's mixture only).
        lora: also LoRA (rank 8) on attention, merged into the weights at the end.
        loss: `"plain"` next-token loss, or `"distill"` from `teacher` (see `hf_embfuse.training.distill`).
        teacher, teacher_tokenizer: for `loss="distill"`, the original model with its own tokenizer.
        distill: a `DistillConfig` (weights, chunk loss, teacher dtype, cache folder); default `DistillConfig()`.
        minutes: training time budget, evaluations excluded (`None`: only `max_steps` stops the run).
        start_token: the id put before every line, in training and in the curve (see `score_lines`).
        show_progress: bars for the training budget and for each bits-per-byte evaluation.
        training_args: more `TrainingArguments` (e.g. `ddp_backend`, `fsdp`), overriding these defaults.
    """
    if loss not in LOSS_CHOICES:
        raise ValueError(f"loss={loss!r}; choose one of {LOSS_CHOICES}")
    if loss == "distill" and (teacher is None or teacher_tokenizer is None):
        raise ValueError(
            "loss='distill' needs `teacher` and `teacher_tokenizer`: the original model and its tokenizer"
        )
    model = prepare_for_heal(model, train, lora)
    curve = BitsPerByteCurve(
        tokenizer, eval_lines, eval_every, minutes, start=start_token, show_progress=show_progress
    )
    arguments = TrainingArguments(
        **{
            "output_dir": str(out_dir),
            "per_device_train_batch_size": batch_size,
            "max_steps": max_steps,
            "learning_rate": learning_rate,
            "lr_scheduler_type": "constant_with_warmup",
            "warmup_steps": 10,
            "weight_decay": 0.0,
            "logging_steps": 10,
            "save_strategy": "no",
            "report_to": [],
            "use_cpu": not torch.cuda.is_available(),
            "disable_tqdm": not show_progress,
            "remove_unused_columns": False,
            "dataloader_num_workers": 0,
            "seed": seed,
            **(training_args or {}),
        }
    )
    if loss == "plain":
        dataset = LineDataset(tokenizer, train_lines, max_length=max_length, start=start_token)
        trainer = HealTrainer(
            model=model,
            args=arguments,
            train_dataset=dataset,
            data_collator=dataset.collate,
            callbacks=[curve],
        )
    else:
        from .distill import DistillConfig, DistillDataset, DistillTrainer

        distill = distill or DistillConfig()
        dataset = DistillDataset(
            train_lines, tokenizer, teacher_tokenizer, max_length=max_length, student_start=start_token
        )
        trainer = DistillTrainer(
            model=model,
            args=arguments,
            train_dataset=dataset,
            data_collator=dataset.collate,
            callbacks=[curve],
            teacher=teacher,
            config=distill,
        )
    if show_progress and minutes is not None:
        # The Trainer's bar counts to `max_steps`, a ceiling the time budget stops long before.
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(TimeBudgetProgress(curve))
    trainer.train()
    if lora:
        model = model.merge_and_unload()
    model.requires_grad_(True)
    return model.eval(), curve.history
