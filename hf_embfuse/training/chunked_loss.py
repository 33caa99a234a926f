"""Next-token log-probabilities without the full `(batch, positions, vocabulary)` logits.

A causal LM's forward computes logits for every position at once: with Gemma-3's 262,144 tokens, a
batch of 8 × 256 positions is 2 GB of float32 logits, and the cross-entropy's backward keeps another
copy or two. Here the body runs once (`logits_to_keep=1`, so the model's own head sees one position),
and the head and log-softmax run over `chunk` positions at a time under activation checkpointing:
the backward recomputes one chunk's logits instead of keeping them all, so the peak holds one chunk.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

# Logits of one chunk are `chunk × vocabulary` floats; ~2^26 of them (256 MB) keeps a 262k
# vocabulary at 256 positions per chunk and a 49k one at ~1,400.
LOGIT_BUDGET = 1 << 26


def _text_config(model: Any) -> Any:
    config = getattr(model, "config", None) or model.module.config  # DDP keeps the model as `.module`
    config = getattr(config, "base_config", None) or config  # an EmbFuse wrapper's base config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _head_log_probs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, cap: float | None):
    logits = head(hidden).float()
    if cap:  # Gemma-2-style final logit soft-capping, as the model's own forward applies it
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def next_token_log_probs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    head: torch.nn.Module | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """`(batch, positions - 1)` log p(input_ids[:, t + 1] | input_ids[:, : t + 1]); 0 where the target is padding.

    Args:
        model: a causal LM (or a DDP/PEFT wrapper around one) whose forward accepts `logits_to_keep` and
            `output_hidden_states`; the last hidden state must be what its head reads (true of transformers'
            decoder LMs).
        input_ids, attention_mask: `(batch, positions)`, right-padded.
        head: the output embedding (default: `model.get_output_embeddings()`); pass it when `model` is a
            wrapper that does not forward that call.
        chunk: positions per head call (default: what keeps one chunk's logits near 256 MB).
    """
    head = model.get_output_embeddings() if head is None else head
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_to_keep=1,
        output_hidden_states=True,
        use_cache=False,
    )
    hidden = outputs.hidden_states[-1][:, :-1]
    targets = input_ids[:, 1:]
    valid = attention_mask[:, 1:].bool()
    chunk = chunk or max(16, LOGIT_BUDGET // int(head.weight.shape[0]))
    cap = getattr(_text_config(model), "final_logit_softcapping", None)
    rows, targets = hidden[valid], targets[valid]  # only real positions: padding costs no head call
    pieces = []
    for begin in range(0, rows.shape[0], chunk):
        piece_rows, piece_targets = rows[begin : begin + chunk], targets[begin : begin + chunk]
        if torch.is_grad_enabled() and (piece_rows.requires_grad or head.weight.requires_grad):
            pieces.append(
                checkpoint(_head_log_probs, head, piece_rows, piece_targets, cap, use_reentrant=False)
            )
        else:
            pieces.append(_head_log_probs(head, piece_rows, piece_targets, cap))
    log_probs = torch.zeros(valid.shape, dtype=torch.float32, device=hidden.device)
    if pieces:
        log_probs = log_probs.masked_scatter(valid, torch.cat(pieces))
    return log_probs


def chunked_lm_loss(
    model: Any, batch: dict[str, torch.Tensor], head: torch.nn.Module | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy over the real positions of `batch` (`input_ids`, `attention_mask`)."""
    log_probs = next_token_log_probs(model, batch["input_ids"], batch["attention_mask"], head=head)
    count = batch["attention_mask"][:, 1:].sum().clamp(min=1)
    return -log_probs.sum() / count


__all__ = ["LOGIT_BUDGET", "chunked_lm_loss", "next_token_log_probs"]
