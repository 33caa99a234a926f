"""Bake: turn an EmbFuse model into a plain checkpoint of its base architecture.

Every mixing mode's weights depend on the token id only (`gated` scores each token's own projected
vectors), so the whole mixture is one `V × d` matrix, `MultiSourceEmbedding.fused_weight()`. Written
into the base model's embedding, it gives a checkpoint that loads with any transformers installation,
without `trust_remote_code`, and runs exactly as fast as the base model.

`bake(model)` works on a loaded model. `bake_to_folder(folder, out)` never loads the body: it reads the
fused embedding's tensors alone and byte-copies every other tensor (`checkpoint_stream`), so it bakes a 70B
checkpoint in the memory its vocabulary tables need. Use the folder form for anything large.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import GENERATION_CONFIG_NAME

from .atomic import OutputExistsError, atomic_output_dir
from .checkpoint_folder import TOKENIZER_FILES, checkpoint_task, load_embfuse_folder, read_checkpoint_config
from .checkpoint_stream import (
    DTYPES,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    StoredTensor,
    load_stored,
    load_stored_rows,
    stored_tensors,
    write_checkpoint,
)
from .configuration_embfuse import EmbFuseConfig
from .modeling_embfuse import MultiSourceEmbedding, task_of
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

    base_config = _plain_config(config, untie=head_is_tied)

    baked = _empty_model(auto_class, base_config)
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


def _plain_config(config: EmbFuseConfig, *, untie: bool) -> PretrainedConfig:
    """The baked model's config: the base config, with no remote code, the head untied if asked, the labels."""
    base_config = copy.deepcopy(config.base_config)
    if hasattr(base_config, "auto_map"):
        del base_config.auto_map  # a plain checkpoint names no remote code
    if untie:
        base_config.tie_word_embeddings = False
        base_config.get_text_config(decoder=True).tie_word_embeddings = False
    if getattr(base_config, "id2label", None) is not None and len(config.id2label) == len(
        base_config.id2label
    ):
        # Users and pipelines edit the top-level labels; the head's size is the base config's.
        base_config.id2label, base_config.label2id = dict(config.id2label), dict(config.label2id)
    return base_config


def _empty_model(auto_class: type, config: PretrainedConfig) -> PreTrainedModel:
    """The plain model with parameters on the meta device (nothing initialised) and buffers real.

    Non-persistent buffers such as rotary frequencies or Gemma's `embed_scale` are not in any state dict
    and must be built here.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return auto_class.from_config(config)


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

    A safetensors folder is baked without loading its body (`write_baked_checkpoint`): peak memory is about
    the fused matrix, whatever the model's size. A model in memory is baked with
    `bake` and saved; a folder of pickled weights is loaded whole.

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
    if source_folder is None:
        baked = bake(src_dir_or_model)
        with atomic_output_dir(out_dir, overwrite=overwrite) as staging:
            baked.save_pretrained(staging)
            _check_plain_checkpoint(staging)
        return out_dir
    with atomic_output_dir(out_dir, overwrite=overwrite) as staging:
        if _has_safetensors(source_folder):
            write_baked_checkpoint(source_folder, staging)
        else:  # pickled weights cannot be read tensor by tensor: load the model whole
            bake(load_embfuse_folder(source_folder, _NOT_EMBFUSE_HINT)).save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (source_folder / name).is_file():
                shutil.copy2(source_folder / name, staging / name)
        copy_sentence_transformers_files(source_folder, staging)  # pooling, normalize, prompts
        _check_plain_checkpoint(staging)
    logger.debug("Baked %s into %s", source_folder, out_dir)
    return out_dir


def _has_safetensors(folder: Path) -> bool:
    return (folder / SAFE_WEIGHTS_NAME).is_file() or (folder / SAFE_WEIGHTS_INDEX_NAME).is_file()


@torch.no_grad()
def write_baked_checkpoint(folder: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Bake a checked EmbFuse safetensors folder into `out_dir` without loading its body.

    Only the fused embedding's tensors are read. The body's tensors are byte copies under their base
    names (the wrapper's `<prefix>.` stripped), so they keep their bytes and dtype; the fused matrix is
    computed in row blocks in float32 and stored in the base table's dtype. Memory is the fused matrix
    plus one block of rows, never the body nor the source tables. Writes the weights, `config.json` and, for a model that
    generates, `generation_config.json`; the caller copies the tokenizer.

    Returns:
        The weights files written.

    Raises:
        ValueError: the checkpoint's tensor names are not its base architecture's.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    config_dict = json.loads((folder / "config.json").read_text())
    config = EmbFuseConfig.from_dict(config_dict)
    # The plain model on the meta device, tied as the fused one is: its names, its head, its embed_scale.
    probe = _empty_model(checkpoint_task(folder, config_dict).auto_class, config.base_config)
    probe.tie_weights()  # empty weights are not tied on construction
    embedding, head = probe.get_input_embeddings(), probe.get_output_embeddings()
    head_is_tied = head is not None and head.weight is embedding.weight
    embedding_path, wrapped = _module_path(probe, embedding), f"{type(probe).base_model_prefix}."
    fused_prefix = f"{wrapped}{embedding_path}."

    stored, body, parts = stored_tensors(folder), {}, {}
    for key, tensor in stored.items():
        if key.startswith(fused_prefix):
            parts[key[len(fused_prefix) :]] = tensor
        else:
            body[key.removeprefix(wrapped) if key.startswith(wrapped) else key] = tensor
    for part in [part for part in parts if part != "weight" and not part.startswith(_FUSED_PARTS)]:
        body[f"{embedding_path}.{part}"] = parts.pop(part)
    weight_key = f"{embedding_path}.weight"
    if "weight" not in parts:
        raise ValueError(
            f"{str(folder)!r} has no tensor {fused_prefix}weight (the base table); it is damaged."
        )
    if head_is_tied:
        # The fused model's head is the base table (source 0), not the mixture: the baked head keeps it.
        body[f"{_module_path(probe, head)}.weight"] = parts["weight"]
    _add_tied_copies(probe, body, exclude=weight_key)
    expected = set(probe.state_dict())
    missing, unexpected = sorted(expected - set(body) - {weight_key}), sorted(set(body) - expected)
    if missing or unexpected:
        raise ValueError(
            f"Cannot bake {str(folder)!r} into {type(probe).__name__}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. The checkpoint's tensor names must be `{wrapped}` + its base model's."
        )

    scale = getattr(embedding, "embed_scale", None)
    fused = _fused_table(config, parts, scale)
    written = write_checkpoint(out_dir, body, {weight_key: fused})

    plain_config = _plain_config(config, untie=head_is_tied)
    plain_config.architectures = [type(probe).__name__]
    plain_config.dtype = fused.dtype
    plain_config.save_pretrained(out_dir)
    if probe.can_generate():
        generation_file = folder / GENERATION_CONFIG_NAME
        generation = (
            GenerationConfig.from_pretrained(folder)
            if generation_file.is_file()
            else GenerationConfig.from_model_config(plain_config)
        )
        generation.save_pretrained(out_dir)
    return written


def _module_path(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _add_tied_copies(model: nn.Module, body: dict[str, StoredTensor], exclude: str) -> None:
    """Give every tensor the plain model ties to a stored one (e.g. an MLM decoder bias) that stored copy.

    `save_pretrained` leaves tied duplicates out; once the head is untied, a duplicate the loader no
    longer ties would otherwise load uninitialised.
    """
    groups: dict[int, list[str]] = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        groups.setdefault(id(tensor), []).append(name)
    for names in groups.values():
        present = [name for name in names if name in body]
        for name in names:
            if present and name not in body and name != exclude:
                body[name] = body[present[0]]


def _fused_table(
    config: EmbFuseConfig, parts: dict[str, StoredTensor], scale: torch.Tensor | None
) -> torch.Tensor:
    """The fused `(V, d)` matrix in the base table's dtype, computed a block of rows at a time in float32.

    A token's fused vector depends on that token's rows alone (the module's forward relies on it too), so
    each block is the shipped `MultiSourceEmbedding` built over the block's rows of the base table, the
    source tables and the coverage (read alone from the file) and the shared projections and mixer; its
    `fused_weight()` is the block of the whole matrix. Memory is the result plus one block, never the tables.
    """
    base = parts["weight"]
    num_rows, width = base.shape
    shared = {name: load_stored(tensor) for name, tensor in parts.items() if not _is_row_indexed(name)}
    fused = torch.empty(num_rows, width, dtype=DTYPES[base.dtype])
    # (rows, sources, width) float32 vectors per block: about 32 MB whatever the width.
    num_sources = 1 + sum(name.startswith("source_tables.") for name in parts)
    block = max(1, (8 << 20) // (num_sources * width))
    for start in range(0, num_rows, block):
        stop = min(start + block, num_rows)
        state = {name: load_stored_rows(t, start, stop) for name, t in parts.items() if _is_row_indexed(name)}
        state["weight"] = state["weight"].float()  # so fused_weight() returns float32, rounded once below
        with torch.device("meta"):
            embedding = MultiSourceEmbedding(config, stop - start, width)
        embedding.load_state_dict({**shared, **state}, strict=True, assign=True)
        vectors = embedding.fused_weight(chunk_size=stop - start)
        if scale is not None:
            # The base's embedding module multiplies its table by `embed_scale` (Gemma); the mixture has it.
            vectors = vectors / float(scale)
        fused[start:stop] = vectors.to(fused.dtype)
    return fused


def _is_row_indexed(part: str) -> bool:
    return part in ("weight", "coverage") or part.startswith("source_tables.")


def _check_plain_checkpoint(folder: Path) -> None:
    code_files = sorted(path.name for path in folder.glob("*.py"))
    config = json.loads((folder / "config.json").read_text())
    if code_files or "auto_map" in config or config.get("model_type") == "embfuse":
        raise RuntimeError(
            f"Baking produced a checkpoint that needs remote code (code files {code_files}, auto_map "
            f"{config.get('auto_map')}); this is a bug in hf_embfuse.baking."
        )


__all__ = ["bake", "bake_to_folder"]
