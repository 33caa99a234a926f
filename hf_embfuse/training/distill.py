"""The distillation heal: the original model, with its own tokenizer, teaches the transplanted one.

The teacher is free: it is the base checkpoint, the same body with the embeddings it was trained
with. Its next-token distributions cannot be compared with the student's (different vocabularies),
but the probability of a piece of *text* can, wherever both tokenizations cut the text at the same
place. That is ALM's approximate likelihood matching (Minixhofer et al. 2025, arXiv 2503.20083):

- Both tokenizers cut the same line (their offsets mappings). A *chunk* is the text between two
  consecutive positions where both have a token boundary, so each chunk is a whole number of tokens
  on both sides.
- A chunk's log-likelihood under a model is the sum of its tokens' next-token log-probabilities,
  each token in the context of the whole line before it.
- The student's chunk log-likelihood `s` is pulled toward the teacher's `t` with ALM's binary
  cross-entropy on the chunk probabilities, `-(e^t · s + (1 - e^t) · log(1 - e^s))` (`chunk_loss="bce"`),
  minimal at `s = t`; or with `|s - t|` (`"l1"`).

Why this loss: bits per byte is the sum of chunk log-likelihoods, so matching chunks is matching the
figure we measure, chunk by chunk, with the teacher's figure (the ratio 1.0×) as the target. The plain
LM loss only says "more likely"; the teacher says by how much, on each chunk, and the chunks where a
transplant loses (the text its new tokens cover) get the largest pull. The plain next-token loss is
kept, weighted (`lm_weight`), so that the student still learns from the text itself where the two
tokenizations rarely agree (long chunks, whose probabilities are tiny on both sides). No hidden-state
term: both tokenizers here are not byte-level in the ALM sense, and chunk likelihoods already reach
every position. The teacher runs under `no_grad`, in bf16 where the hardware has native bf16, and its
per-token log-probabilities may be cached on disk per line (`DistillConfig.cache_dir`).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..evaluation.bits_per_byte import start_token_id
from .chunked_loss import next_token_log_probs
from .heal import HealTrainer, pad_right, target_labels

logger = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """Options of the distillation heal.

    Args:
        lm_weight: weight of the student's own next-token loss (nats per token).
        chunk_weight: weight of the chunk-likelihood matching term (per chunk).
        chunk_loss: `"bce"` (ALM's binary cross-entropy on chunk probabilities) or `"l1"` (|Δ log-likelihood|).
        teacher_dtype: `"auto"` (bf16 where the device computes it natively, else float32), `"bfloat16"`
            or `"float32"`.
        cache_dir: a folder for the teacher's per-line log-probabilities (reused across runs), or `None`.
    """

    lm_weight: float = 1.0
    chunk_weight: float = 1.0
    chunk_loss: Literal["bce", "l1"] = "bce"
    teacher_dtype: str = "auto"
    cache_dir: str | Path | None = None

    def __post_init__(self) -> None:
        if self.chunk_loss not in ("bce", "l1"):
            raise ValueError(f"chunk_loss={self.chunk_loss!r}; choose 'bce' or 'l1'")
        if self.teacher_dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"teacher_dtype={self.teacher_dtype!r}; choose 'auto', 'bfloat16' or 'float32'")
        if self.lm_weight < 0 or self.chunk_weight < 0 or self.lm_weight + self.chunk_weight == 0:
            raise ValueError(
                f"lm_weight={self.lm_weight}, chunk_weight={self.chunk_weight}: both >= 0, one of them > 0"
            )


def clean_ends(offsets: list[tuple[int, int]]) -> set[int]:
    """Character positions where this tokenization has a boundary: a token ends and the next starts no earlier.

    A token that shares a character with the next one (a byte-level piece of a multi-byte character) is no
    boundary.
    """
    ends = set()
    for index, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        following = offsets[index + 1][0] if index + 1 < len(offsets) else end
        if end <= following:
            ends.add(end)
    return ends


def chunk_ids(offsets: list[tuple[int, int]], boundaries: list[int]) -> list[int]:
    """For each token, the index of the chunk it ends in (chunk `k` ends at `boundaries[k]`); -1 past the last."""
    ids = []
    for _, end in offsets:
        k = bisect.bisect_left(boundaries, end)
        ids.append(k if k < len(boundaries) else -1)
    return ids


class DistillDataset(torch.utils.data.Dataset):
    """Lines tokenised by the student's and the teacher's tokenizer, with each token's chunk.

    Each side is `[start, tokens...]` cut to `max_length`; chunks end at the boundaries both sides share
    within the text both kept. `collate` gives `input_ids`/`attention_mask` (student), `teacher_input_ids`/
    `teacher_attention_mask`, `student_chunks`/`teacher_chunks` (`(batch, positions - 1)`: the chunk of
    each predicted token, -1 for none), `num_chunks` and `keys` (the teacher cache's names).
    """

    def __init__(
        self,
        lines: list[str],
        student_tokenizer: Any,
        teacher_tokenizer: Any,
        *,
        max_length: int = 256,
        student_start: int | None = None,
        teacher_start: int | None = None,
    ) -> None:
        self.student_start = start_token_id(student_tokenizer) if student_start is None else student_start
        self.teacher_start = start_token_id(teacher_tokenizer) if teacher_start is None else teacher_start
        for name, tokenizer in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
            if not getattr(tokenizer, "is_fast", False):
                raise ValueError(
                    f"the {name} tokenizer must be a fast tokenizer (its offsets mapping cuts the chunks)"
                )
        student = student_tokenizer(lines, add_special_tokens=False, return_offsets_mapping=True)
        teacher = teacher_tokenizer(lines, add_special_tokens=False, return_offsets_mapping=True)
        self.examples = []
        for line, s_ids, s_offsets, t_ids, t_offsets in zip(
            lines,
            student["input_ids"],
            student["offset_mapping"],
            teacher["input_ids"],
            teacher["offset_mapping"],
            strict=True,
        ):
            s_ids, s_offsets = s_ids[: max_length - 1], s_offsets[: max_length - 1]
            t_ids, t_offsets = t_ids[: max_length - 1], t_offsets[: max_length - 1]
            if not s_ids or not t_ids:
                continue
            kept = min(max(end for _, end in s_offsets), max(end for _, end in t_offsets))
            boundaries = sorted(b for b in clean_ends(s_offsets) & clean_ends(t_offsets) if b <= kept)
            if not boundaries:
                continue
            self.examples.append(
                {
                    "student": [self.student_start, *s_ids],
                    "teacher": [self.teacher_start, *t_ids],
                    "student_chunks": chunk_ids(s_offsets, boundaries),
                    "teacher_chunks": chunk_ids(t_offsets, boundaries),
                    "num_chunks": len(boundaries),
                    "key": hashlib.sha1(f"{self.teacher_start}\n{line}".encode()).hexdigest(),
                }
            )
        if not self.examples:
            raise ValueError(
                "no line has a chunk boundary both tokenizers share; give longer lines of plain text"
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]

    def collate(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        input_ids, mask = pad_right([e["student"] for e in batch], self.student_start)
        teacher_ids, teacher_mask = pad_right([e["teacher"] for e in batch], self.teacher_start)
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": target_labels(input_ids, mask),
            "teacher_input_ids": teacher_ids,
            "teacher_attention_mask": teacher_mask,
            "student_chunks": _pad_chunks([e["student_chunks"] for e in batch], input_ids.shape[1] - 1),
            "teacher_chunks": _pad_chunks([e["teacher_chunks"] for e in batch], teacher_ids.shape[1] - 1),
            "num_chunks": torch.tensor([e["num_chunks"] for e in batch]),
            "keys": [e["key"] for e in batch],
        }


def _pad_chunks(rows: list[list[int]], width: int) -> torch.Tensor:
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for index, row in enumerate(rows):
        out[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def chunk_log_likelihoods(log_probs: torch.Tensor, chunks: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """`(batch, num_chunks)`: the sum of `log_probs` over the positions of each chunk (`chunks` = -1: none)."""
    index = chunks.masked_fill(chunks < 0, num_chunks)  # a dump column, dropped below
    sums = torch.zeros(log_probs.shape[0], num_chunks + 1, dtype=log_probs.dtype, device=log_probs.device)
    return sums.scatter_add(1, index, log_probs)[:, :num_chunks]


def chunk_matching_loss(
    student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, kind: str
) -> torch.Tensor:
    """Mean over `valid` chunks of ALM's binary cross-entropy (`"bce"`) or of |student - teacher| (`"l1"`)."""
    student, teacher = student[valid], teacher[valid]
    if kind == "l1":
        return (student - teacher).abs().mean()
    # log(1 - e^s), stable; s is clamped just below 0 where a chunk is near-certain, or the log explodes.
    s = student.clamp(max=-1e-4)
    log_not = torch.where(s > -0.693, torch.log(-torch.expm1(s)), torch.log1p(-torch.exp(s)))
    p = teacher.exp()
    return -(p * student + (1 - p) * log_not).mean()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (CUDA with bf16, or a CPU with AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class DistillTrainer(HealTrainer):
    """`HealTrainer` plus chunk-likelihood matching against `teacher` (see the module docstring).

    The teacher is no part of the model: the optimizer, DDP and FSDP never see it; it runs under
    `no_grad` on the batch's teacher tokens. Logged besides the loss: `lm_loss`, `chunk_loss` and
    `chunk_gap` (mean |student - teacher| chunk log-likelihood, nats).
    """

    def __init__(self, *args: Any, teacher: Any, config: DistillConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distill = config or DistillConfig()
        dtype = self.distill.teacher_dtype
        if dtype == "auto":
            dtype = "bfloat16" if native_bf16(self.args.device) else "float32"
        self.teacher = (
            teacher.requires_grad_(False).eval().to(device=self.args.device, dtype=getattr(torch, dtype))
        )
        self.cache = Path(self.distill.cache_dir) if self.distill.cache_dir else None
        if self.cache is not None:
            self.cache.mkdir(parents=True, exist_ok=True)
        self._logged: dict[str, list[float]] = {}

    @torch.no_grad()
    def teacher_log_probs(self, inputs: dict[str, Any]) -> torch.Tensor:
        ids, mask = inputs["teacher_input_ids"], inputs["teacher_attention_mask"]
        files = [self.cache / f"{key}.pt" for key in inputs["keys"]] if self.cache is not None else None
        if files and all(f.is_file() for f in files):
            out = torch.zeros(ids.shape[0], ids.shape[1] - 1, device=ids.device)
            for row, file in enumerate(files):
                saved = torch.load(file, weights_only=True)
                out[row, : saved.shape[0]] = saved.to(out.device)
            return out
        out = next_token_log_probs(self.teacher, ids, mask).float()
        for row, file in enumerate(files or []):
            torch.save(out[row, : int(mask[row].sum()) - 1].cpu().clone(), file)
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = self.student_log_probs(model, inputs["input_ids"], inputs["attention_mask"])
        lm = self.lm_loss(student, inputs, num_items_in_batch)
        teacher = self.teacher_log_probs(inputs)
        count = int(inputs["num_chunks"].max())
        s = chunk_log_likelihoods(student, inputs["student_chunks"], count)
        t = chunk_log_likelihoods(teacher, inputs["teacher_chunks"], count)
        valid = torch.arange(count, device=s.device)[None, :] < inputs["num_chunks"][:, None].to(s.device)
        matching = chunk_matching_loss(s, t, valid, self.distill.chunk_loss)
        scale = self.per_batch_scale(num_items_in_batch)  # the chunk term is a per-batch mean
        loss = self.distill.lm_weight * lm + self.distill.chunk_weight * matching / scale
        extra = self.regularization(model, inputs["input_ids"])
        if extra is not None:
            loss = loss + extra / scale
        loss = loss * self.rank_factor(num_items_in_batch)
        gap = (s - t)[valid].abs().mean()
        for name, value in (("lm_loss", lm * scale), ("chunk_loss", matching), ("chunk_gap", gap)):
            self._logged.setdefault(name, []).append(float(value.detach()))
        return (loss, {"loss": loss, "chunk_gap": gap}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for name, values in self._logged.items():
            if values:
                logs[name] = round(sum(values) / len(values), 4)
        self._logged = {}
        super().log(logs, *args, **kwargs)
