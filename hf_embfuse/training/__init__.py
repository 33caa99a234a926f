"""Training EmbFuse models: the mixture under the HF Trainer, PEFT and `accelerate launch`.

* `MixingWeightsCallback`: log each source's mixing weight; history JSON and plot at the end.
* `EmbFuseTrainer`: a `Trainer` with `mixer_lr` / `projection_lr` and that callback built in.
* `create_embfuse_optimizer`: an optimizer with those learning rates, for `Trainer(optimizers=(opt, None))`.
* `mixing_parameter_groups`: the same optimizer groups for any `torch.optim` optimizer or loop.
* `set_trainable`: choose which parts train (base, source tables, projections, mixer).
* `embfuse_lora_config`: LoRA on the base's attention with the mixer in `modules_to_save`.
* `check_config_consistency`: every rank of a distributed run built the same model.
* `heal`: train a transplanted model's embedding and head on plain text (`loss="plain"` or `"distill"`
  from the original model, `DistillConfig`), with a time budget and a bits-per-byte curve.
* `next_token_log_probs`: a causal LM's next-token log-probabilities without the whole batch's logits.
"""

from .callback import MixingWeightsCallback, mixing_history_figure, mixing_statistics, plot_mixing_history
from .chunked_loss import next_token_log_probs
from .distill import DistillConfig, DistillTrainer
from .distributed import check_config_consistency, embfuse_fingerprint
from .freezing import set_trainable
from .heal import HealTrainer, heal, prepare_for_heal
from .optim import MIXER_LR_RATIO, create_embfuse_optimizer, mixing_parameter_groups
from .peft_utils import embfuse_lora_config, find_attention_modules, infer_task_type
from .trainer import EmbFuseTrainer

__all__ = [
    "MIXER_LR_RATIO",
    "DistillConfig",
    "DistillTrainer",
    "EmbFuseTrainer",
    "HealTrainer",
    "MixingWeightsCallback",
    "check_config_consistency",
    "create_embfuse_optimizer",
    "embfuse_fingerprint",
    "embfuse_lora_config",
    "find_attention_modules",
    "heal",
    "infer_task_type",
    "mixing_history_figure",
    "mixing_parameter_groups",
    "mixing_statistics",
    "next_token_log_probs",
    "plot_mixing_history",
    "prepare_for_heal",
    "set_trainable",
]
