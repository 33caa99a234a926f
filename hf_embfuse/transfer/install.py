"""Install the target vocabulary's tables into a base model (in memory, or a meta-device skeleton).

The input table, the head (tied to it or its own) and an output bias are replaced by tables of the target's
size, and the configs that name the vocabulary (size, tying, pad/bos/eos ids, modules' cached `vocab_size`)
follow, so the model reads and predicts the target's ids.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Token-id attributes of a config / generation config that must name target ids.
_ID_ROLES = {"pad_token_id": "pad_token", "bos_token_id": "bos_token", "eos_token_id": "eos_token"}


@torch.no_grad()
def install_tables(
    model: Any,
    tokenizer: Any,
    input_table: torch.Tensor,
    *,
    head_mode: str | None,
    head_table: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> None:
    """Put the target's tables into `model` in place.

    Args:
        model: the base model (real or on the meta device).
        tokenizer: the target tokenizer: its ids become the configs' pad/bos/eos ids.
        input_table: `(V_t, d)` the new input table.
        head_mode: `"tied"` (the head shares the new input table), `"untied"` (`head_table` is its own),
            `None` (no LM head).
        head_table: `(V_t, d)` the rebuilt head, for `"untied"`.
        bias: `(V_t,)` the head's new bias, when it has one.
    """
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    old_input = embedding.weight
    was_tied = head is not None and head.weight is old_input
    num_rows = int(input_table.shape[0])
    new_input = nn.Parameter(input_table, requires_grad=old_input.requires_grad)
    _replace_parameter(model, old_input, new_input)
    embedding.num_embeddings = num_rows
    if getattr(embedding, "padding_idx", None) is not None:
        embedding.padding_idx = getattr(tokenizer, "pad_token_id", None)
    if head is not None:
        if head_mode == "untied":
            new_head = nn.Parameter(head_table, requires_grad=head.weight.requires_grad)
            if was_tied:
                head.weight = new_head
            else:
                _replace_parameter(model, head.weight, new_head)
        if hasattr(head, "out_features"):
            head.out_features = num_rows
        old_bias = getattr(head, "bias", None)
        if old_bias is not None and bias is not None:
            _replace_parameter(model, old_bias, nn.Parameter(bias, requires_grad=old_bias.requires_grad))
    set_vocabulary_config(model, tokenizer, num_rows, tied=None if head is None else head_mode == "tied")


def _replace_parameter(model: nn.Module, old: nn.Parameter, new: nn.Parameter) -> None:
    """Point every module that holds `old` (tied weights share one Parameter) at `new`."""
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is old:
                module._parameters[name] = new


def set_vocabulary_config(model: Any, tokenizer: Any, num_rows: int, *, tied: bool | None) -> None:
    """Make the model's configs (and modules that cached them) name the target vocabulary."""
    configs = [model.config, model.config.get_text_config()]
    for config in configs:
        config.vocab_size = num_rows
        if tied is not None:
            config.tie_word_embeddings = tied
    for module in model.modules():
        # Models copy `config.vocab_size` at init (Gemma-3's loss reshapes the logits by it).
        if isinstance(getattr(module, "vocab_size", None), int):
            module.vocab_size = num_rows
    if tied is not None:
        # transformers keeps each model's tied-weight mapping from when it was built, and a wrapper collects
        # its children's: recompute it, or the wrapper ties a rebuilt head back to the input table.
        for module in model.modules():
            if hasattr(module, "get_expanded_tied_weights_keys") and hasattr(module, "all_tied_weights_keys"):
                module.all_tied_weights_keys = module.get_expanded_tied_weights_keys(all_submodels=True)
    generation = getattr(model, "generation_config", None)
    for attribute, role in _ID_ROLES.items():
        token_id = getattr(tokenizer, f"{role}_id", None)
        for config in [*configs, *([generation] if generation is not None else [])]:
            setattr(config, attribute, token_id)
    # An unk id a config carries names a target id too (or none), never the base's stale one.
    for config in configs:
        if getattr(config, "unk_token_id", None) is not None:
            config.unk_token_id = getattr(tokenizer, "unk_token_id", None)
