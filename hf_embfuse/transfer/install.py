"""Give the base model the target vocabulary: new input rows, a new (tied or rebuilt) head, new token ids.

The input table becomes source 0 on the target rows. Rows the base lacks are masked in the mixture
(`coverage[:, 0]` False) but still hold the donors' build-time mixture, so a head tied to this table
predicts them sensibly; rows nobody has get the base's mean row (what `mean_resizing` gives every
new row) and count as the base's. An untied head is rebuilt in the same way from the base's output
table (its own piece rule) and the donors' rows carried into the base's output space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..alignment import AlignedSource

logger = logging.getLogger(__name__)

# Token-id attributes of a config / generation config that must name target ids.
_ID_ROLES = {"pad_token_id": "pad_token", "bos_token_id": "bos_token", "eos_token_id": "eos_token"}


@dataclass
class Donor:
    """One donor's rows in the base space on the target vocabulary, for the fill and the head.

    Attributes:
        rows: `(V_t, d_base)` its input rows in the base space (projection applied).
        coverage: `(V_t,)` the rows it has.
        weight: its initial mixing weight.
        output_rows: `(V_t, d_base)` its rows carried into the base's output space, or `None`.
    """

    rows: torch.Tensor
    coverage: torch.Tensor
    weight: float
    output_rows: torch.Tensor | None = None


def mix_rows(
    base_rows: torch.Tensor,
    base_coverage: torch.Tensor,
    base_weight: float,
    donors: list[Donor],
    output: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The build-time mixture per row (initial weights renormalised over who covers it) and who covers it.

    The weights are normalised before the sum, so a row only one source covers is that source's row exactly.
    """
    parts = [(base_rows, base_weight * base_coverage.float())]
    for donor in donors:
        rows = donor.output_rows if output else donor.rows
        if rows is not None:
            parts.append((rows, donor.weight * donor.coverage.float()))
    weights = sum(w for _, w in parts)
    covered = weights > 0
    total = torch.zeros_like(base_rows, dtype=torch.float32)
    for rows, w in parts:
        total += rows.float() * (w / weights.clamp_min(1e-30)).unsqueeze(1)
    return total, covered


@torch.no_grad()
def install_target_vocabulary(
    base_model: Any,
    target_tokenizer: Any,
    aligned: AlignedSource,
    base_weight: float,
    donors: list[Donor],
    *,
    untie: bool,
    output_aligned: AlignedSource | None = None,
    bias_aligned: AlignedSource | None = None,
) -> dict[str, Any]:
    """Put the target-vocabulary tables into `base_model` in place; return the source-0 coverage and counts.

    Args:
        base_model: the base model (input table, LM head and config are replaced).
        target_tokenizer: its ids become the config's pad/bos/eos ids.
        aligned: the base input table on the target rows.
        base_weight: source 0's initial mixing weight.
        donors: the other sources' rows in the base space.
        untie: give a tied head its own table (rebuilt like an untied one).
        output_aligned: the base output table on the target rows (an untied head, or `untie`).
        bias_aligned: the output bias as a one-column table on the target rows (MLM decoders).

    Returns:
        `{"coverage": (V_t,) bool, "filled_from_donors": n, "mean_initialised": n, "head": "tied" | "untied" | None}`.
    """
    embedding = base_model.get_input_embeddings()
    old_weight = embedding.weight
    head = base_model.get_output_embeddings()
    was_tied = head is not None and head.weight is old_weight
    base_mean = old_weight.detach().float().mean(0)
    num_rows = aligned.table.shape[0]

    coverage = aligned.coverage.clone()
    mixture, donor_covered = mix_rows(
        torch.zeros_like(aligned.table), torch.zeros_like(coverage), 0.0, donors, False
    )
    table = aligned.table.clone()
    fill = ~coverage & donor_covered
    table[fill] = mixture[fill]
    nobody = ~coverage & ~donor_covered
    table[nobody] = base_mean
    coverage |= nobody  # the base's mean row is the only vector these tokens have
    new_weight = nn.Parameter(table.to(old_weight.dtype), requires_grad=old_weight.requires_grad)
    _replace_parameter(base_model, old_weight, new_weight)
    embedding.num_embeddings = num_rows
    if getattr(embedding, "padding_idx", None) is not None:
        embedding.padding_idx = getattr(target_tokenizer, "pad_token_id", None)

    head_mode = None
    if head is not None:
        if was_tied and not untie:
            head_mode = "tied"
        else:
            head_mode = "untied"
            source = output_aligned if output_aligned is not None else aligned
            rows, covered = mix_rows(source.table, source.coverage, base_weight, donors, True)
            old_head = head.weight.detach().float() if not was_tied else old_weight.detach().float()
            rows[~covered] = old_head.mean(0)
            new_head = nn.Parameter(rows.to(old_weight.dtype), requires_grad=head.weight.requires_grad)
            if was_tied:
                head.weight = new_head
            else:
                _replace_parameter(base_model, head.weight, new_head)
        if hasattr(head, "out_features"):
            head.out_features = num_rows
        bias = getattr(head, "bias", None)
        if bias is not None:
            new_bias = bias_aligned.table[:, 0].clone() if bias_aligned is not None else torch.zeros(num_rows)
            if bias_aligned is not None:
                new_bias[~bias_aligned.coverage] = bias.detach().float().mean()
            _replace_parameter(
                base_model, bias, nn.Parameter(new_bias.to(bias.dtype), requires_grad=bias.requires_grad)
            )
    _set_vocabulary_config(
        base_model, target_tokenizer, num_rows, tied=None if head is None else head_mode == "tied"
    )
    return {
        "coverage": coverage,
        "filled_from_donors": int(fill.sum()),
        "mean_initialised": int(nobody.sum()),
        "head": head_mode,
    }


def _replace_parameter(model: nn.Module, old: nn.Parameter, new: nn.Parameter) -> None:
    """Point every module that holds `old` (tied weights share one Parameter) at `new`."""
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is old:
                module._parameters[name] = new


def _set_vocabulary_config(model: Any, tokenizer: Any, num_rows: int, *, tied: bool | None) -> None:
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
