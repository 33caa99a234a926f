"""Optimizers whose parameter groups give the mixing parameters their own learning rate."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

from ._modules import split_parameters

# The mixer holds a handful of logits (plus, gated, one gate vector per source); at the learning rate of a
# fine-tune (~2e-5) Adam moves a logit by ~0.02 in 1,000 steps, so the mixture would barely move. Like
# LoRA+'s `loraplus_lr_ratio`, the mixer gets a multiple of the base learning rate unless told otherwise.
MIXER_LR_RATIO = 20.0

_NO_DECAY_PATTERNS = ("bias", "layernorm", "layer_norm", "rmsnorm", "norm.", "_norm", "ln_")


def mixing_parameter_groups(
    model: nn.Module,
    *,
    lr: float,
    mixer_lr: float | None = None,
    projection_lr: float | None = None,
    weight_decay: float = 0.0,
    decay_parameter_names: set[str] | list[str] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for an EmbFuse model (also a PEFT model around one).

    Only parameters with `requires_grad=True` are included; empty groups are left out. Each group carries
    a `"name"` key (`"mixer"`, `"projections"`, `"sources"`, `"decay"`, `"no_decay"`) for inspection.

    * mixer (`logits`, and `gate` when gated): `mixer_lr`, default `MIXER_LR_RATIO * lr`; no weight decay,
      which would pull the mixture toward uniform.
    * projections into the base space: `projection_lr`, default `lr`; no weight decay (they start at an
      identity or a fitted map, not at zero).
    * source tables, when trainable: `lr`, no weight decay (pretrained vectors).
    * everything else (the base model, including its own embedding table): `lr`, with `weight_decay` except
      on biases and normalisation weights, as the HF Trainer does.

    Args:
        model: the EmbFuse model (or `PeftModel`) to be optimised.
        lr: the base learning rate (`TrainingArguments.learning_rate`).
        mixer_lr: learning rate of the mixing parameters.
        projection_lr: learning rate of the projections.
        weight_decay: weight decay of the base model's weight matrices.
        decay_parameter_names: names of the parameters that get weight decay (e.g. from
            `Trainer.get_decay_parameter_names(model)`); by default every base parameter whose name does not
            look like a bias or a normalisation weight.

    Returns:
        A list of param-group dicts for any `torch.optim` optimizer (`create_embfuse_optimizer` builds one).
    """
    if (
        lr <= 0
        or (mixer_lr is not None and mixer_lr <= 0)
        or (projection_lr is not None and projection_lr <= 0)
    ):
        raise ValueError(
            f"Learning rates must be > 0; got lr={lr}, mixer_lr={mixer_lr}, projection_lr={projection_lr}."
        )
    split, names = split_parameters(model)

    def trainable(parameters: list[nn.Parameter]) -> list[nn.Parameter]:
        return [p for p in parameters if p.requires_grad]

    base = trainable(split.base_table + split.base)
    if decay_parameter_names is None:
        decay = [p for p in base if p.ndim >= 2 and not _looks_undecayed(names[id(p)])]
    else:
        wanted = set(decay_parameter_names)
        decay = [p for p in base if names[id(p)] in wanted]
    decay_ids = {id(p) for p in decay}
    # The base groups first: the Trainer logs the learning rate of group 0.
    groups = [
        {"name": "decay", "params": decay, "lr": lr, "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for p in base if id(p) not in decay_ids], "lr": lr},
        {"name": "sources", "params": trainable(split.sources), "lr": lr},
        {"name": "projections", "params": trainable(split.projections), "lr": projection_lr or lr},
        {"name": "mixer", "params": trainable(split.mixer), "lr": mixer_lr or MIXER_LR_RATIO * lr},
    ]
    for group in groups:
        group.setdefault("weight_decay", 0.0)
    return [group for group in groups if group["params"]]


def _looks_undecayed(name: str) -> bool:
    lowered = name.lower()
    return any(pattern in lowered for pattern in _NO_DECAY_PATTERNS)


def create_embfuse_optimizer(
    model: nn.Module,
    optimizer_cls: type[Optimizer],
    lr: float,
    *,
    mixer_lr_ratio: float = MIXER_LR_RATIO,
    projection_lr: float | None = None,
    weight_decay: float = 0.0,
    decay_parameter_names: set[str] | list[str] | None = None,
    **optimizer_kwargs: Any,
) -> Optimizer:
    """An optimizer whose mixer trains at `mixer_lr_ratio × lr`, in the style of PEFT's `create_loraplus_optimizer`.

    For the plain `Trainer`: `Trainer(..., optimizers=(create_embfuse_optimizer(model, torch.optim.AdamW,
    lr=args.learning_rate), None))`; the Trainer builds its learning-rate schedule over these groups.
    The groups are `mixing_parameter_groups`'.

    Args:
        model: the EmbFuse model (or `PeftModel`) to be optimised; only its trainable parameters are included.
        optimizer_cls: any `torch.optim.Optimizer` class.
        lr: the base learning rate (set it to `TrainingArguments.learning_rate`: the Trainer's schedule
            scales each group's own rate, and logs group 0's, the base model's).
        mixer_lr_ratio: the mixer's learning rate over `lr` (like LoRA+'s `loraplus_lr_ratio`).
        projection_lr: learning rate of the projections (default `lr`).
        weight_decay: weight decay of the base model's weight matrices (never of the fused parts).
        decay_parameter_names: which base parameters decay (e.g. `trainer.get_decay_parameter_names(model)`);
            by default those whose names do not look like a bias or a normalisation weight.
        **optimizer_kwargs: passed on to `optimizer_cls` (`betas`, `eps`, `momentum`, ...).
    """
    if mixer_lr_ratio <= 0:
        raise ValueError(f"mixer_lr_ratio must be > 0; got {mixer_lr_ratio}.")
    groups = mixing_parameter_groups(
        model,
        lr=lr,
        mixer_lr=mixer_lr_ratio * lr,
        projection_lr=projection_lr,
        weight_decay=weight_decay,
        decay_parameter_names=decay_parameter_names,
    )
    return optimizer_cls(groups, lr=lr, **optimizer_kwargs)
