"""Choose which parts of an EmbFuse model train."""

from __future__ import annotations

import logging
from typing import TypeVar

from torch import nn

from ._modules import find_fused_embedding, split_parameters

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=nn.Module)


def set_trainable(
    model: ModelT,
    *,
    base: bool | None = None,
    sources: bool | None = None,
    projections: bool | None = None,
    mixer: bool | None = None,
) -> ModelT:
    """Choose which parts of an EmbFuse model train: `True` trains a part, `False` freezes it, `None` leaves it.

    The flags mean what `config.train_sources` and `config.train_projections` mean. A freshly built model
    trains everything but the source tables; `set_trainable(model, base=False)` then trains only the
    mixture (mixer and projections), the cheapest way to learn how much each source should count.

    Args:
        model: an EmbFuse model (not a `PeftModel`: PEFT decides trainability itself; call this before
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
            "set_trainable() got a PeftModel: PEFT already froze everything but the adapter and "
            "`modules_to_save`. Call set_trainable() on the EmbFuse model before `get_peft_model`, or choose "
            "`modules_to_save` instead."
        )
    _, embedding = find_fused_embedding(model)
    split, _ = split_parameters(model)
    parts = {
        "base": (base, split.base + split.base_table),
        "sources": (sources, split.sources),
        "projections": (projections, split.projections),
        "mixer": (mixer, split.mixer),
    }
    for name, (trains, parameters) in parts.items():
        if trains is not None and not isinstance(trains, bool):
            raise TypeError(
                f"set_trainable: {name} must be True (trains), False (frozen) or None; got {trains!r}."
            )
        for parameter in parameters if trains is not None else []:
            parameter.requires_grad_(trains)
    if embedding.mixer.mode == "fixed":
        embedding.mixer.logits.requires_grad_(False)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "train_sources"):
        if sources is not None:
            config.train_sources = sources
        if projections is not None:
            config.train_projections = projections
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    return model
