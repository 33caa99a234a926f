"""The heal's callbacks: a bits-per-byte curve with a time budget, and a progress bar over that budget."""

from __future__ import annotations

import logging
import time
from typing import Any

from transformers import TrainerCallback

from ..evaluation.bits_per_byte import score_lines
from .chunked_loss import LOGIT_BUDGET

logger = logging.getLogger(__name__)


class BitsPerByteCurve(TrainerCallback):
    """Bits per byte on held-out lines at step 0, every `every` steps and at the end; stops after `minutes`.

    Only the training steps count towards `minutes` (and `train_seconds`), not the evaluations, so a heal
    of N minutes trains for N minutes whatever its curve costs.
    """

    def __init__(
        self,
        tokenizer: Any,
        lines: list[str],
        every: int,
        minutes: float | None,
        start: int | None = None,
        show_progress: bool = False,
    ) -> None:
        self.tokenizer, self.lines, self.every, self.start = tokenizer, lines, every, start
        self.limit = None if minutes is None else 60.0 * minutes
        self.show_progress = show_progress
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self._step_began = 0.0

    def measure(self, model: Any, step: int) -> float:
        # The logits of one scoring batch stay near 256 MB (score_lines' own default allows a whole context of
        # positions: 2 GB and a log-softmax copy on a 262k vocabulary, on top of the optimizer state).
        vocab = int(model.get_output_embeddings().weight.shape[0])
        bpb = score_lines(
            model,
            self.tokenizer,
            self.lines,
            start_token=self.start,
            show_progress=self.show_progress,
            batch_tokens=max(64, LOGIT_BUDGET // vocab),
        ).bits_per_byte
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


class TimeBudgetProgress(TrainerCallback):
    """A training bar whose total is the time budget (seconds of training), not `max_steps`.

    Replaces the Trainer's `ProgressCallback` in a heal with `minutes` set: that bar's total is
    `max_steps`, a ceiling the time budget stops long before. Reads the seconds from `curve`, so
    evaluations do not move the bar; shows the step and the last logged loss.
    """

    def __init__(self, curve: BitsPerByteCurve) -> None:
        self.curve = curve
        self.bar: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            total = round(self.curve.limit or 0)
            self.bar = tqdm(total=total, desc="heal", unit="s", bar_format=_BAR)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.n = min(self.bar.total, round(self.curve.train_seconds))
            self.bar.set_postfix_str(f"step {state.global_step}", refresh=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix_str(f"step {state.global_step}, loss {logs['loss']:.3f}", refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# "heal:  40%|████      | 120/300 s [02:10<03:00, step 85, loss 2.913]"
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s [{elapsed}<{remaining}, {postfix}]"
