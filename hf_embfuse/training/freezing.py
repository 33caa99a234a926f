"""Choose which parts of an EmbFuse model train."""

from __future__ import annotations

import logging
from typing import TypeVar

from torch import nn

from ._modules import find_fused_embedding, split_parameters

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=nn.Module)


def freeze(
    model: ModelT,
    *,
    base: bool = False,
    sources: bool = True,
    projections: bool = False,
    mixer: bool = False,
) -> ModelT:
    """Set which parts of an EmbFuse model are trainable: `True` freezes a part, `False` makes it trainable.

    The defaults match a freshly built model (source tables frozen, everything else trainable).
    `freeze(model, base=True)` trains only the mixture (mixer and projections), the cheapest way to learn
    how much each source should count.

    Args:
        model: an EmbFuse model (not a `PeftModel`: PEFT decides trainability itself; call `freeze` before
            `get_peft_model` if at all).
        base: everything outside the fused parts: the transformer, its heads, and the base model's own
            embedding table (source 0; a tied LM head shares it).
        sources: the aligned source tables (sources 1..K-1).
        projections: the linear maps of the sources into the base space.
        mixer: the mixing parameters (`logits`, and `gate` when gated). With `fixed` mixing the logits stay
            frozen whatever this says: they are not used, and an unused trainable parameter breaks DDP.

    Returns:
        The model, for chaining. `config.train_sources` and `config.train_projections` are updated, so the
        choice survives `save_pretrained` / `from_pretrained`.
    """
    if hasattr(model, "peft_config"):
        raise ValueError(
            "freeze() got a PeftModel: PEFT already froze everything but the adapter and `modules_to_save`. "
            "Call freeze() on the EmbFuse model before `get_peft_model`, or choose `modules_to_save` instead."
        )
    _, embedding = find_fused_embedding(model)
    split, _ = split_parameters(model)
    for parameter in split.base + split.base_table:
        parameter.requires_grad_(not base)
    for parameter in split.sources:
        parameter.requires_grad_(not sources)
    for parameter in split.projections:
        parameter.requires_grad_(not projections)
    for parameter in split.mixer:
        parameter.requires_grad_(not mixer)
    if embedding.mixer.mode == "fixed":
        embedding.mixer.logits.requires_grad_(False)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "train_sources"):
        config.train_sources = not sources
        config.train_projections = not projections
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    return model
