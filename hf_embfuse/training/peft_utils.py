"""LoRA on the base model's attention, with the mixture trained in full (`modules_to_save`)."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from torch import nn

from ._modules import find_fused_embedding

if TYPE_CHECKING:
    from peft import LoraConfig

logger = logging.getLogger(__name__)

_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)

# EmbFuse wrapper (or base head) class-name suffix -> PEFT task type.
_TASK_TYPES = (
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("Model", "FEATURE_EXTRACTION"),
)


def _is_projection_layer(module: nn.Module) -> bool:
    # Linear, and GPT-2's transposed `Conv1D`; matched by name so remote-code classes count too.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def find_attention_modules(model: nn.Module) -> list[str]:
    """Names for PEFT's `target_modules` that select the linear layers of the base's attention blocks.

    A layer counts when a segment of its path mentions attention (`attention`, `attn`, `self_attn`,
    `SelfAttention`, ...). Each layer is named by its leaf (`query`, `q_proj`, `c_attn`, `Wqkv`) when no
    linear layer outside attention has the same leaf, else by its path from the attention block
    (`attention.output.dense`, `attn.c_proj`), so the MLP's layers of the same name stay untouched. The
    fused embedding's projections are never included.

    Raises:
        ValueError: no linear layer under an attention block was found.
    """
    embedding_name, _ = find_fused_embedding(model)
    attention_suffixes: dict[str, str] = {}  # suffix from the attention segment -> leaf name
    other_leaves: set[str] = set()
    all_layers: list[str] = []
    for name, module in model.named_modules():
        if not _is_projection_layer(module) or name.startswith(embedding_name + "."):
            continue
        all_layers.append(name)
        parts = name.split(".")
        hits = [i for i, part in enumerate(parts[:-1]) if _ATTENTION.search(part)]
        if hits:
            attention_suffixes[".".join(parts[hits[-1] :])] = parts[-1]
        else:
            other_leaves.add(parts[-1])
    if not attention_suffixes:
        raise ValueError(
            f"Found no Linear/Conv1D layer under an attention block in {type(model).__name__} (linear layers: "
            f"{', '.join(all_layers[:8]) or 'none'}). Pass `target_modules=[...]` explicitly."
        )
    targets = {leaf if leaf not in other_leaves else suffix for suffix, leaf in attention_suffixes.items()}
    return sorted(targets)


def infer_task_type(model: nn.Module) -> str | None:
    """PEFT task type for a model class (`EmbFuseForSequenceClassification` -> `"SEQ_CLS"`), or `None`."""
    name = type(model).__name__
    return next((task for suffix, task in _TASK_TYPES if name.endswith(suffix)), None)


def embfuse_lora_config(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    task_type: str | None = None,
    train_projections: bool = False,
    **kwargs: Any,
) -> LoraConfig:
    """A `peft.LoraConfig` for an EmbFuse model: LoRA on the base's attention, the mixer trained in full.

    The mixer (`logits`, and `gate` when gated) is tiny, so it goes into `modules_to_save` and the adapter
    file stays small: it never contains a source table. Use with gradient checkpointing as usual
    (`model.gradient_checkpointing_enable(); model.enable_input_require_grads()` before `get_peft_model`).

    Args:
        model: the EmbFuse model the adapter is for.
        r: LoRA rank.
        alpha: LoRA alpha (scaling `alpha / r`).
        dropout: LoRA dropout.
        target_modules: PEFT's `target_modules`; default: `find_attention_modules(model)`.
        task_type: PEFT task type; default inferred from the model class (`SEQ_CLS`, `CAUSAL_LM`, ...), which
            also makes PEFT train and save a classification head.
        train_projections: also train (and save) the linear projections of the sources in full. They are
            `d_base × d_source` each: larger than the mixer, far smaller than a source table.
        **kwargs: passed on to `peft.LoraConfig` (`modules_to_save` entries are added to ours).
    """
    from peft import LoraConfig

    _, embedding = find_fused_embedding(model)
    if target_modules is None:
        target_modules = find_attention_modules(model)
    modules_to_save = list(kwargs.pop("modules_to_save", None) or [])
    if embedding.mixer.mode == "fixed":
        logger.info("Mixing is 'fixed': the mixer has nothing to learn and stays out of modules_to_save.")
    else:
        modules_to_save.append("mixer")
    if train_projections:
        # Each linear projection by its own name: the ModuleList itself cannot be wrapped (it is iterated).
        modules_to_save += [
            f"projections.{index}"
            for index, projection in enumerate(embedding.projections)
            if any(True for _ in projection.parameters())
        ]
    if task_type is None:
        task_type = infer_task_type(model)
    conv1d_only = isinstance(target_modules, list) and all(
        type(module).__name__ == "Conv1D"
        for name, module in model.named_modules()
        if any(name == t or name.endswith("." + t) for t in target_modules)
    )
    kwargs.setdefault("fan_in_fan_out", conv1d_only)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=list(dict.fromkeys(modules_to_save)),
        task_type=task_type,
        **kwargs,
    )
