"""`EmbFuseTrainer`: the HF Trainer with a learning rate for the mixer and the mixing weights in the logs."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_callback import DefaultFlowCallback

from .callback import MixingWeightsCallback
from .distributed import check_config_consistency
from .optim import MIXER_LR_RATIO, create_embfuse_optimizer

logger = logging.getLogger(__name__)


class EmbFuseTrainer(Trainer):
    """A `transformers.Trainer` for EmbFuse models (also under PEFT).

    Differences from `Trainer`, all optional:

    * the optimizer is `create_embfuse_optimizer`'s: the mixer trains at `mixer_lr` (default
      `MIXER_LR_RATIO × learning_rate`), projections at `projection_lr` (default `learning_rate`), neither
      with weight decay. The optimizer class and its arguments are still the ones `args.optim` names.
    * a `MixingWeightsCallback` is added, ahead of the reporting integrations so TensorBoard, W&B, ... see
      the `mixing/<source>` values (pass `mixing_callback=False` to leave it out, or your own instance).
    * under `torch.distributed`, `train()` first checks that every rank built the same EmbFuse model
      (before DDP wraps it), raising a `ValueError` that names the differing rank.

    Args:
        mixer_lr: learning rate of the mixing parameters.
        projection_lr: learning rate of the projections into the base space.
        mixing_callback: `True` (default), `False`, or a configured `MixingWeightsCallback`.
        *args, **kwargs: as for `transformers.Trainer`.
    """

    def __init__(
        self,
        *args: Any,
        mixer_lr: float | None = None,
        projection_lr: float | None = None,
        mixing_callback: bool | MixingWeightsCallback = True,
        **kwargs: Any,
    ) -> None:
        for name, value in (("mixer_lr", mixer_lr), ("projection_lr", projection_lr)):
            if value is not None and value <= 0:
                raise ValueError(f"EmbFuseTrainer: {name} must be > 0; got {name}={value}.")
        self.mixer_lr = mixer_lr
        self.projection_lr = projection_lr
        super().__init__(*args, **kwargs)
        if mixing_callback is True:
            mixing_callback = MixingWeightsCallback(check_consistency=False)
        if isinstance(mixing_callback, MixingWeightsCallback):
            mixing_callback.check_consistency = False  # train() checks, before DDP wraps the model
            callbacks = self.callback_handler.callbacks
            # Right after the flow callback: reporters that run later see the values we add to the logs.
            position = next(
                (i + 1 for i, cb in enumerate(callbacks) if isinstance(cb, DefaultFlowCallback)), 0
            )
            callbacks.insert(position, mixing_callback)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        check_config_consistency(self.model)
        return super().train(*args, **kwargs)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None or self.optimizer_cls_and_kwargs is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        is_class = isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
        if {"params", "model", "optimizer_dict"} & set(optimizer_kwargs) or not is_class:
            logger.warning(
                "optim=%r builds its own parameter groups; mixer_lr/projection_lr are not applied.",
                self.args.optim,
            )
            return super().create_optimizer(model)
        optimizer_kwargs = {key: value for key, value in optimizer_kwargs.items() if key != "lr"}
        lr = self.args.learning_rate
        self.optimizer = create_embfuse_optimizer(
            opt_model,
            optimizer_cls,
            lr,
            mixer_lr_ratio=MIXER_LR_RATIO if self.mixer_lr is None or lr <= 0 else self.mixer_lr / lr,
            projection_lr=self.projection_lr,
            weight_decay=self.args.weight_decay,
            decay_parameter_names=self.get_decay_parameter_names(opt_model),
            **optimizer_kwargs,
        )
        return super().create_optimizer(model)
