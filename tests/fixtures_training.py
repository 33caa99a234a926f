"""A tiny learnable task and quiet TrainingArguments for tests that run the HF Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from tests.fixtures_models import VOCAB


class TinyTask(torch.utils.data.Dataset):
    """Label = whether the sequence holds more ids from the upper half of the vocabulary."""

    def __init__(self, size: int = 64, length: int = 8):
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(3, VOCAB, (size, length), generator=generator)
        self.labels = ((self.input_ids > VOCAB // 2).sum(dim=1) > length // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


def tiny_training_args(output_dir: str | Path, steps: int = 4, **overrides: Any) -> TrainingArguments:
    """CPU, no reporters, no checkpoints, no progress bar: `steps` optimizer steps of batch 8."""
    defaults = dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=2,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return TrainingArguments(**{**defaults, **overrides})
