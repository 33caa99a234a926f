"""LoRA on the base model's attention, with the mixture trained in full (`modules_to_save`)."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from torch import nn

from ..modeling_embfuse import task_of
from ._modules import find_fused_embedding, unwrap

if TYPE_CHECKING:
    from peft import LoraConfig

logger = logging.getLogger(__name__)

_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)


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


def infer_task_type(model: nn.Module) -> str:
    """PEFT task type of an EmbFuse model (`EmbFuseForSequenceClassification` -> `"SEQ_CLS"`).

    Read from the task table (`hf_embfuse.modeling_embfuse.TASKS`); a PEFT or DDP wrapper is looked through.

    Raises:
        ValueError: the model is not an EmbFuse wrapper.
    """
    return task_of(type(unwrap(model))).peft_task_type


# This function's names for LoRA's scaling and dropout before it took PEFT's own.
_RENAMED = {"alpha": "lora_alpha", "dropout": "lora_dropout"}


def embfuse_lora_config(
    model: nn.Module,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    task_type: str | None = None,
    modules_to_save: list[str] | None = None,
    *,
    train_projections: bool = False,
    **kwargs: Any,
) -> LoraConfig:
    """A `peft.LoraConfig` for an EmbFuse model: LoRA on the base's attention, the mixer trained in full.

    Arguments are `LoraConfig`'s own, with defaults for an EmbFuse model. The mixer (`logits`, and `gate`
    when gated) is tiny, so it goes into `modules_to_save` and the adapter file stays small: it never
    contains a source table. With a task type PEFT also trains and saves the task head (`classifier`,
    `score`); an LM head trains when named in `modules_to_save=["lm_head"]`. Use with activation
    checkpointing as usual (`model.activation_checkpointing_enable()` before `get_peft_model`).

    Args:
        model: the EmbFuse model the adapter is for.
        r: LoRA rank.
        lora_alpha: LoRA alpha (scaling `lora_alpha / r`).
        lora_dropout: LoRA dropout.
        target_modules: PEFT's `target_modules`; default: `find_attention_modules(model)`.
        task_type: PEFT task type; default: the model's task's (`SEQ_CLS`, `TOKEN_CLS`, `CAUSAL_LM`, ...).
        modules_to_save: modules trained in full and saved with the adapter; the mixer is added to them.
        train_projections: also train (and save) the linear projections of the sources in full. They are
            `d_base × d_source` each: larger than the mixer, far smaller than a source table.
        **kwargs: any other `peft.LoraConfig` field (`bias`, `use_rslora`, `layers_to_transform`, ...).
    """
    from peft import LoraConfig

    renamed = sorted(set(kwargs) & set(_RENAMED))
    if renamed:
        fixes = ", ".join(f"{old}= -> {_RENAMED[old]}=" for old in renamed)
        raise TypeError(f"embfuse_lora_config takes PEFT's argument names: {fixes}.")
    _, embedding = find_fused_embedding(model)
    if target_modules is None:
        target_modules = find_attention_modules(model)
    modules_to_save = list(modules_to_save or [])
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
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        modules_to_save=list(dict.fromkeys(modules_to_save)),
        task_type=task_type,
        **kwargs,
    )
