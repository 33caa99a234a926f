"""Bake: turn an EmbFuse model into a plain checkpoint of its base architecture.

Every mixing mode's weights depend on the token id only (`gated` scores each token's own projected
vectors), so the whole mixture is one `V × d` matrix, `MultiSourceEmbedding.fused_weight()`. Written
into the base model's embedding, it gives a checkpoint that loads with any transformers installation,
without `trust_remote_code`, and runs exactly as fast as the base model.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import types
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from .atomic import OutputExistsError, atomic_output_dir
from .checkpoint_folder import TOKENIZER_FILES, load_embfuse_folder, read_checkpoint_config
from .modeling_embfuse import task_of
from .sentence_transformers import copy_sentence_transformers_files

logger = logging.getLogger(__name__)

_NOT_EMBFUSE_HINT = "A plain checkpoint needs no baking."
# Submodules and buffers of MultiSourceEmbedding that exist only to compute the mixture.
_FUSED_PARTS = ("source_tables.", "projections.", "mixer.", "coverage")


@torch.no_grad()
def bake(model: PreTrainedModel) -> PreTrainedModel:
    """A plain base-architecture model whose input embedding is the EmbFuse model's fused matrix.

    The result is an ordinary transformers model (e.g. `BertForSequenceClassification`) that owns copies
    of all its tensors, in the same dtype, device and train/eval mode as `model`; its outputs equal
    `model`'s up to float rounding.

    A tied LM head is *untied*: in the EmbFuse model the head shares the base model's own table (source 0)
    while the input is the mixture, so the baked model needs two different matrices. It gets
    `tie_word_embeddings=False` and an `lm_head` holding a copy of the original base table; tying it to
    the fused matrix instead would silently change every prediction.

    Args:
        model: an EmbFuse model (`hf_embfuse.EmbFuse*`, or the same classes loaded with `trust_remote_code`).
            A PEFT model must be merged first (`model.merge_and_unload()`).

    Raises:
        ValueError: `model` is a PEFT model or not an EmbFuse model.
    """
    if hasattr(model, "peft_config"):
        raise ValueError(
            f"bake() got a PEFT model ({type(model).__name__}); merge the adapter first: "
            "`model = model.merge_and_unload()`, then bake."
        )
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "embfuse":
        raise ValueError(
            f"bake() needs an EmbFuse model (model_type 'embfuse'); got {type(model).__name__} with model_type "
            f"{getattr(config, 'model_type', None)!r}. A plain model needs no baking."
        )
    from .training._modules import find_fused_embedding  # the training package loads on first use

    auto_class = task_of(type(model)).auto_class
    _, embedding = find_fused_embedding(model)
    inner = model.base_model  # the wrapped model: its state dict is the plain checkpoint's
    output = model.get_output_embeddings()
    head_is_tied = output is not None and output.weight is embedding.weight

    base_config = copy.deepcopy(config.base_config)
    if hasattr(base_config, "auto_map"):
        del base_config.auto_map  # a plain checkpoint names no remote code
    if head_is_tied:
        base_config.tie_word_embeddings = False
        base_config.get_text_config(decoder=True).tie_word_embeddings = False
    if getattr(base_config, "id2label", None) is not None and len(config.id2label) == len(
        base_config.id2label
    ):
        # Users and pipelines edit the top-level labels; the head's size is the base config's.
        base_config.id2label, base_config.label2id = dict(config.id2label), dict(config.label2id)

    from accelerate import init_empty_weights

    # Parameters on the meta device (nothing initialised twice), buffers real: non-persistent buffers
    # such as rotary frequencies are not in the state dict and must be built here.
    with init_empty_weights(include_buffers=False):
        baked = auto_class.from_config(base_config)
    scale = getattr(baked.get_input_embeddings(), "embed_scale", None)
    fused = embedding.fused_weight().float()
    if scale is not None:
        # The base's embedding module multiplies its table by `embed_scale` (Gemma); the fused vectors
        # already include that factor.
        fused = fused / float(scale)
    fused = fused.to(embedding.weight.dtype)

    embedding_paths = [
        name for name, module in inner.named_modules(remove_duplicate=False) if module is embedding
    ]
    state = {}
    for key, tensor in inner.state_dict().items():
        path = next((p for p in embedding_paths if key.startswith(p + ".")), None)
        if path is None:
            state[key] = tensor.detach().clone()
        elif key == f"{path}.weight":
            state[key] = fused.clone()
        elif not key[len(path) + 1 :].startswith(_FUSED_PARTS):
            state[key] = tensor.detach().clone()
    expected = set(baked.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"Cannot bake {type(model).__name__} into {type(baked).__name__}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. The EmbFuse model's parameter names must be its base model's."
        )
    baked.load_state_dict(state, strict=True, assign=True)
    for parameter in baked.parameters():
        parameter.requires_grad_(True)
    devices = {tensor.device for tensor in state.values()}
    if len(devices) == 1:
        # The buffers built above (rotary frequencies, position ids) are on the CPU; the weights are not.
        baked.to(devices.pop())
    generation_config = getattr(model, "generation_config", None)
    if baked.can_generate() and generation_config is not None:
        baked.generation_config = copy.deepcopy(generation_config)
    baked.config.architectures = [type(baked).__name__]
    baked.name_or_path = config.base_model_name_or_path or ""
    return baked.train(model.training)


def bake_to_folder(
    src_dir_or_model: str | os.PathLike | PreTrainedModel,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Bake an EmbFuse checkpoint folder (or model) into a plain checkpoint folder.

    The output holds the baked model's config and weights, its generation config, and the tokenizer files
    of the source folder if it has any; no `.py` files and no `auto_map`, so
    `AutoModelFor*.from_pretrained(out_dir)` loads it without `trust_remote_code`. It is written into a
    temporary folder beside `out_dir` and renamed into place when complete: on any error nothing is left.

    Args:
        src_dir_or_model: an EmbFuse checkpoint folder, or an EmbFuse model in memory.
        out_dir: the folder to write.
        overwrite: replace `out_dir` if it exists.

    Returns:
        `out_dir` as a `Path`.

    Raises:
        FileNotFoundError / ValueError: the source is not an EmbFuse checkpoint (the message names it).
        OutputExistsError: `out_dir` exists and `overwrite` is false.
    """
    out_dir = Path(out_dir)
    source_folder = None
    if isinstance(src_dir_or_model, (str, os.PathLike)):
        source_folder = Path(src_dir_or_model)
        # The tokenizer is copied, not loaded: a folder without one bakes, a damaged one is refused.
        read_checkpoint_config(source_folder, _NOT_EMBFUSE_HINT, tokenizer="optional")
        if out_dir.resolve() == source_folder.resolve():
            raise ValueError(
                f"The output folder {str(out_dir)!r} is the EmbFuse checkpoint being baked; choose another one."
            )
    elif not isinstance(src_dir_or_model, nn.Module):
        raise ValueError(
            f"bake_to_folder() takes an EmbFuse checkpoint folder or model, got {type(src_dir_or_model).__name__}."
        )
    if out_dir.exists() and not overwrite:
        # Checked before the (possibly long) load and bake; atomic_output_dir checks again.
        raise OutputExistsError(out_dir)
    model = (
        load_embfuse_folder(source_folder, _NOT_EMBFUSE_HINT)
        if source_folder is not None
        else src_dir_or_model
    )
    baked = bake(model)
    with atomic_output_dir(out_dir, overwrite=overwrite) as staging:
        baked.save_pretrained(staging)
        if source_folder is not None:
            for name in TOKENIZER_FILES:
                if (source_folder / name).is_file():
                    shutil.copy2(source_folder / name, staging / name)
            copy_sentence_transformers_files(source_folder, staging)  # pooling, normalize, prompts
        _check_plain_checkpoint(staging)
    logger.debug(
        "Baked %s into %s (%s)", source_folder or type(model).__name__, out_dir, type(baked).__name__
    )
    return out_dir


def _check_plain_checkpoint(folder: Path) -> None:
    code_files = sorted(path.name for path in folder.glob("*.py"))
    config = json.loads((folder / "config.json").read_text())
    if code_files or "auto_map" in config or config.get("model_type") == "embfuse":
        raise RuntimeError(
            f"Baking produced a checkpoint that needs remote code (code files {code_files}, auto_map "
            f"{config.get('auto_map')}); this is a bug in hf_embfuse.bake."
        )


__all__ = ["bake", "bake_to_folder"]


class _CallableModule(types.ModuleType):
    """This module, callable as its `bake` function.

    `hf_embfuse.bake` has to be two things: the function (`hf_embfuse.bake(model)`, the public API) and
    this submodule (`from hf_embfuse.bake import bake_to_folder`, `hf_embfuse.bake.bake_to_folder`). Python
    sets the package attribute `bake` to the submodule whenever anything imports it, so a function of
    that name would be replaced by the module depending on import order. Making the module callable
    (the module-`__class__` assignment documented for customising module attribute access) gives one
    object that is both, whatever the order.
    """

    def __call__(self, model: PreTrainedModel) -> PreTrainedModel:
        return bake(model)

    __call__.__doc__ = bake.__doc__


sys.modules[__name__].__class__ = _CallableModule
