"""Draft models for speculative decoding: does a draft share its target's vocabulary?

Speculative decoding hands token ids from the draft to the target unchanged, so both must mean the same
thing by every id. vLLM compares the two vocabulary sizes; llama.cpp refuses a draft whose vocabulary
type, token texts or special ids differ, or whose size differs by more than a small margin. A model transplanted onto the target's tokenizer and
baked (`hf-embfuse bake`) meets all of these; `check_draft` says so, or names every difference.

    from hf_embfuse.draft import check_draft
    check_draft("draft-baked/", "gemma-3-270m/")   # raises DraftMismatchError listing each problem
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

# Tokenizer ids a draft must share with its target (llama.cpp's draft check compares them), and the
# config ids generation reads to start, stop and pad (a config's `unk_token_id` is read by nothing).
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
CONFIG_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# Tokenised by both tokenizers: catches a different normaliser, pre-tokeniser or added start token
# (`add_bos_token`), which an identical vocabulary alone does not.
PROBE_TEXT = "The capital of France is Paris. Über 3.14 naïve café — 日本語, emoji 🙂!\n  indented"
_SHOWN = 5  # differing tokens named in a problem; the rest are counted


class DraftMismatchError(ValueError):
    """A draft model does not share its target's vocabulary; the message lists each difference."""


@dataclass(frozen=True)
class DraftReport:
    """What `draft_report` compared.

    Attributes:
        draft_vocab_size: rows of the draft's vocabulary (its config's `vocab_size`).
        target_vocab_size: the same for the target.
        problems: one sentence per difference; empty when the draft can serve the target.
    """

    draft_vocab_size: int
    target_vocab_size: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


Model = str | os.PathLike | PreTrainedModel


def _config(model: Model) -> PretrainedConfig:
    config = model.config if isinstance(model, PreTrainedModel) else AutoConfig.from_pretrained(model)
    return config.get_text_config(decoder=True)


def _tokenizer(model: Model, tokenizer: PreTrainedTokenizerBase | None, role: str) -> PreTrainedTokenizerBase:
    if tokenizer is not None:
        return tokenizer
    if isinstance(model, PreTrainedModel):
        raise ValueError(
            f"The {role} was given as a model; pass `{role}_tokenizer=` too, or give its folder."
        )
    return AutoTokenizer.from_pretrained(model)


def _table_problems(model: Model, vocab_size: int, role: str) -> list[str]:
    """A model in memory: its embedding and head must have `vocab_size` rows (a folder's config says it)."""
    if not isinstance(model, PreTrainedModel):
        return []
    problems = []
    for part, module in (
        ("input embedding", model.get_input_embeddings()),
        ("LM head", model.get_output_embeddings()),
    ):
        rows = None if module is None else module.weight.shape[0]
        if rows is not None and rows != vocab_size:
            problems.append(
                f"the {role}'s {part} has {rows} rows but its config says vocab_size={vocab_size}"
            )
    return problems


def _vocabulary_problems(draft: PreTrainedTokenizerBase, target: PreTrainedTokenizerBase) -> list[str]:
    draft_vocab, target_vocab = draft.get_vocab(), target.get_vocab()
    if draft_vocab == target_vocab:
        return []
    differing = sorted(
        (
            token
            for token in draft_vocab.keys() | target_vocab.keys()
            if draft_vocab.get(token) != target_vocab.get(token)
        ),
        key=lambda token: min(draft_vocab.get(token, 1 << 62), target_vocab.get(token, 1 << 62)),
    )
    shown = ", ".join(
        f"{t!r}: draft {draft_vocab.get(t)} / target {target_vocab.get(t)}" for t in differing[:_SHOWN]
    )
    return [
        f"the tokenizers' vocabularies differ on {len(differing)} tokens ({shown}"
        f"{', ...' if len(differing) > _SHOWN else ''}); transplant the draft onto the target's tokenizer "
        "(`tokenizer: source:N` naming the target, or `tokenizer: <the target's folder>`)"
    ]


def draft_report(
    draft: Model,
    target: Model,
    *,
    draft_tokenizer: PreTrainedTokenizerBase | None = None,
    target_tokenizer: PreTrainedTokenizerBase | None = None,
) -> DraftReport:
    """Compare a draft model with its target: vocabulary size, token ids, special ids, tokenisation.

    Args:
        draft: the draft's checkpoint folder, or the model.
        target: the target's checkpoint folder, or the model.
        draft_tokenizer: the draft's tokenizer; loaded from `draft` when it is a folder.
        target_tokenizer: the target's tokenizer; loaded from `target` when it is a folder.

    Returns:
        A `DraftReport`; `report.ok` when the draft can serve the target.
    """
    draft_config, target_config = _config(draft), _config(target)
    draft_tok = _tokenizer(draft, draft_tokenizer, "draft")
    target_tok = _tokenizer(target, target_tokenizer, "target")
    problems = []
    if draft_config.vocab_size != target_config.vocab_size:
        problems.append(
            f"vocab_size differs: draft {draft_config.vocab_size}, target {target_config.vocab_size}; vLLM refuses "
            "such a draft (bake a draft transplanted onto the target's tokenizer: `hf-embfuse bake`)"
        )
    problems += _table_problems(draft, draft_config.vocab_size, "draft")
    problems += _table_problems(target, target_config.vocab_size, "target")
    problems += _vocabulary_problems(draft_tok, target_tok)
    for name in SPECIAL_IDS:
        draft_id, target_id = getattr(draft_tok, name), getattr(target_tok, name)
        if draft_id != target_id:
            problems.append(f"tokenizer {name} differs: draft {draft_id}, target {target_id}")
    for name in CONFIG_IDS:
        draft_id, target_id = getattr(draft_config, name, None), getattr(target_config, name, None)
        if target_id is not None and draft_id != target_id:
            problems.append(f"config {name} differs: draft {draft_id}, target {target_id}")
    draft_ids = draft_tok(PROBE_TEXT)["input_ids"]
    target_ids = target_tok(PROBE_TEXT)["input_ids"]
    if draft_ids != target_ids:
        problems.append(
            f"the tokenizers split {PROBE_TEXT!r} differently (draft {draft_ids[:8]}..., target "
            f"{target_ids[:8]}...): a different normaliser, pre-tokeniser or start token; save the target's "
            "tokenizer files with the draft"
        )
    return DraftReport(draft_config.vocab_size, target_config.vocab_size, tuple(problems))


def check_draft(
    draft: Model,
    target: Model,
    *,
    draft_tokenizer: PreTrainedTokenizerBase | None = None,
    target_tokenizer: PreTrainedTokenizerBase | None = None,
) -> DraftReport:
    """`draft_report`, raising `DraftMismatchError` (a `ValueError`) that lists every problem it finds."""
    report = draft_report(draft, target, draft_tokenizer=draft_tokenizer, target_tokenizer=target_tokenizer)
    if not report.ok:
        name = str(draft) if not isinstance(draft, PreTrainedModel) else type(draft).__name__
        raise DraftMismatchError(
            f"{name} cannot serve as a draft for {Path(target) if not isinstance(target, PreTrainedModel) else type(target).__name__}:\n- "
            + "\n- ".join(report.problems)
        )
    return report


__all__ = ["PROBE_TEXT", "DraftMismatchError", "DraftReport", "check_draft", "draft_report"]
