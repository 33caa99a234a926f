"""Bits per byte of a causal language model on plain text: a figure comparable across tokenizers.

Per-token loss depends on how a tokenizer cuts the text; the total negative log-likelihood of the
text does not, so it is divided by the text's UTF-8 bytes instead of its tokens.

How text is scored (`score_lines`):
- One line is one passage, scored on its own (no context from other lines). Blank lines are
  skipped; a leading UTF-8 byte-order mark of the file is dropped; the line ends (`\\n`, `\\r\\n`)
  are separators and are neither predicted nor counted.
- Each line is tokenised without special tokens and one start token is put in front (the one the
  tokenizer adds itself, such as Gemma's `<bos>`; else `<|endoftext|>`, GPT-2's document separator,
  when the vocabulary has it; else bos, else eos: see `start_token_id`), so the first real token is
  predicted too and every byte of the line is paid for exactly once; the start token itself is not
  scored, no end token is added.
- A line longer than the model's context is scored in consecutive windows: each token is still
  predicted once, a later window's only context is the token before it.
- Lines are sorted by length and packed into batches of at most `batch_tokens` padded positions
  (right padding, masked); batching changes nothing but float rounding.
- Bits per byte = Σ NLL (nats) / ln 2 / Σ UTF-8 bytes of the scored lines.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Logits of one batch are `batch_tokens × vocab` floats; ~2^26 of them (256 MB) keeps a 262k
# vocabulary at 256 positions per batch and a 50k one at ~1,300.
_LOGIT_BUDGET = 1 << 26
_MAX_LINES_PER_BATCH = 64


def read_text_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, line ends removed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not UTF-8, or has no non-blank line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"text file {str(path)!r} does not exist; give a UTF-8 text file, one passage a line"
        )
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"text file {str(path)!r} is not UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}); "
            "convert it first, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`"
        ) from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(
            f"text file {str(path)!r} has no text (it is empty or only blank lines); give a UTF-8 text file, "
            "one passage a line"
        )
    return lines


# GPT-2's document separator; byte-level BPE families keep it where their bos is a chat marker
# (SmolLM2-Instruct: bos `<|im_start|>`), and pretraining saw it before every document.
DOCUMENT_SEPARATOR = "<|endoftext|>"


def start_token_id(tokenizer: Any) -> int:
    """The token put before every line.

    The special token the tokenizer itself puts first (Gemma's `<bos>`, Llama's `<s>`); else
    `<|endoftext|>` when the vocabulary has it; else bos; else eos.
    """
    with_specials = tokenizer("a", add_special_tokens=True)["input_ids"]
    if with_specials and with_specials[0] in set(tokenizer.all_special_ids):
        return int(with_specials[0])
    separator = tokenizer.get_vocab().get(DOCUMENT_SEPARATOR)
    if separator is not None:
        return int(separator)
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a bos nor an eos token to start each "
        "line with; set `tokenizer.bos_token` first"
    )


def added_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the tokenizer's added tokens that are not special (`tokenizer.add_tokens(...)`, recipe `added_tokens`)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted(int(i) for i, token in decoder.items() if not getattr(token, "special", False))


@dataclass
class TextScore:
    """Per-line results of `score_lines`; the aggregate figures are properties.

    Attributes:
        nats: `(lines,)` float64 total NLL of each line in nats.
        num_bytes: `(lines,)` UTF-8 bytes of each line.
        num_tokens: `(lines,)` tokens scored in each line (the start token excluded).
        token_ids: each line's token ids (without the start token).
        not_round_trip: lines whose tokens decode to other text (a lossy tokenizer, e.g. lower-casing).
    """

    nats: torch.Tensor
    num_bytes: torch.Tensor
    num_tokens: torch.Tensor
    token_ids: list[list[int]] = field(repr=False)
    not_round_trip: int = 0

    @property
    def num_lines(self) -> int:
        return len(self.token_ids)

    @property
    def bits(self) -> float:
        return float(self.nats.sum()) / math.log(2)

    @property
    def bits_per_byte(self) -> float:
        return self.bits / int(self.num_bytes.sum())

    @property
    def token_loss(self) -> float:
        """Mean NLL per scored token, in nats (what a Trainer reports as loss)."""
        return float(self.nats.sum()) / int(self.num_tokens.sum())

    def subset(self, keep: torch.Tensor | Sequence[bool]) -> TextScore:
        """The same figures over the lines where `keep` is True."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        if not keep.any():
            raise ValueError("no line is selected")
        ids = [line for line, kept in zip(self.token_ids, keep.tolist(), strict=True) if kept]
        return TextScore(self.nats[keep], self.num_bytes[keep], self.num_tokens[keep], ids)

    def lines_containing(self, token_ids: Iterable[int]) -> torch.Tensor:
        """`(lines,)` bool: the lines whose tokens include any of `token_ids`."""
        wanted = set(int(i) for i in token_ids)
        return torch.tensor([not wanted.isdisjoint(line) for line in self.token_ids], dtype=torch.bool)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits_per_byte": self.bits_per_byte,
            "token_loss": self.token_loss,
            "lines": self.num_lines,
            "bytes": int(self.num_bytes.sum()),
            "tokens": int(self.num_tokens.sum()),
            "lines_not_round_trip": self.not_round_trip,
        }


def _context_length(model: Any, limit: int | None) -> int:
    config = getattr(model, "config", None)
    config = getattr(config, "base_config", None) or config  # an EmbFuse wrapper's base config
    length = getattr(config, "max_position_embeddings", None) or 2048
    return max(2, min(int(length), limit or 2048))


def _windows(full: list[int], length: int) -> list[list[int]]:
    """Cut `[start, t1, ..., tn]` into inputs of at most `length` ids, overlapping by one id.

    Each input predicts every id after its first, so each token is predicted exactly once.
    """
    return [full[a : a + length] for a in range(0, len(full) - 1, length - 1)]


@torch.no_grad()
def score_lines(
    model: Any,
    tokenizer: Any,
    lines: Sequence[str],
    *,
    batch_tokens: int | None = None,
    max_length: int | None = None,
    start_token: int | None = None,
    show_progress: bool = False,
) -> TextScore:
    """Score `lines` with a causal LM and its tokenizer (see the module docstring for the rules).

    Args:
        model: a causal LM (`...ForCausalLM`, an `EmbFuseForCausalLM`, a PEFT model around one).
        tokenizer: the tokenizer of `model`'s vocabulary.
        lines: the passages, one per entry (blank ones must already be removed).
        batch_tokens: padded positions per forward pass; by default what keeps the logits near 256 MB.
        max_length: longest input; by default the model's context, at most 2048.
        start_token: the id put before every line; by default `start_token_id(tokenizer)`. A transplanted
            model may keep the body's own start token under another id.
        show_progress: a progress bar over the lines.
    """
    if not lines:
        raise ValueError("no lines to score")
    if any(not line.strip() for line in lines):
        raise ValueError("blank lines cannot be scored (they have no bytes to predict); remove them first")
    start = start_token_id(tokenizer) if start_token is None else int(start_token)
    encoded = tokenizer(list(lines), add_special_tokens=False)["input_ids"]
    decoded = tokenizer.batch_decode(encoded, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    not_round_trip = sum(text != line for text, line in zip(decoded, lines, strict=True))
    if not_round_trip:
        logger.warning(
            "%d of %d lines do not decode back to the same text with this tokenizer; bits per byte still "
            "counts the original bytes",
            not_round_trip,
            len(lines),
        )
    length = _context_length(model, max_length)
    vocab = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() else 50_000
    # Positions per forward pass, so that the logits stay near the budget (a window longer than that runs alone).
    budget = batch_tokens or max(1, _LOGIT_BUDGET // vocab)

    # (line index, input ids); each input predicts every id after its first.
    empty = [index for index, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(
            f"line {empty[0] + 1} ({lines[empty[0]][:40]!r}) gives no tokens, so its bytes cannot be scored"
        )
    pieces = [
        (index, window) for index, ids in enumerate(encoded) for window in _windows([start, *ids], length)
    ]
    pieces.sort(key=lambda piece: -len(piece[1]))
    nats = torch.zeros(len(lines), dtype=torch.float64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    progress = _progress(len(pieces), show_progress)
    try:
        begin = 0
        while begin < len(pieces):
            longest = len(pieces[begin][1])
            count = max(1, min(_MAX_LINES_PER_BATCH, budget // longest))
            batch = pieces[begin : begin + count]
            begin += len(batch)
            ids = torch.full((len(batch), longest), start, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, (_, window) in enumerate(batch):
                ids[row, : len(window)] = torch.tensor(window)
                mask[row, : len(window)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)
            per_piece = loss.sum(1).double().cpu()
            for row, (index, _) in enumerate(batch):
                nats[index] += per_piece[row]
            if progress is not None:
                progress.update(len(batch))
    finally:
        if progress is not None:
            progress.close()
        model.train(was_training)
    return TextScore(
        nats=nats,
        num_bytes=torch.tensor([len(line.encode("utf-8")) for line in lines], dtype=torch.long),
        num_tokens=torch.tensor([len(ids) for ids in encoded], dtype=torch.long),
        token_ids=[list(ids) for ids in encoded],
        not_round_trip=not_round_trip,
    )


def _progress(total: int, show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="bits per byte", unit="seq")
