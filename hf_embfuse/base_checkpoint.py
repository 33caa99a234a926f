"""The base model as the build sees it: its config, tokenizer, architecture on the meta device, and the only
three tables the build changes (input table, LM head, output bias), read on their own.

A base is a checkpoint folder (a Hub id resolves to one) or a model already in memory. From a folder of
safetensors nothing else is read: the body's tensors are copied byte for byte into the output by
`checkpoint_stream.write_checkpoint`, so memory grows with the tables, never with the body.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel

from .checkpoint_stream import StoredTensor, load_stored, stored_tensors
from .modeling_embfuse import EmbFuseTask
from .sources._checkpoint import require_path_or_repo_id
from .sources.gguf_model import gguf_base_folder, is_gguf_file

logger = logging.getLogger(__name__)


@dataclass
class BaseCheckpoint:
    """Where the base's tensors come from, and the names of the three the build changes.

    Attributes:
        config: the base model's config (a copy: the build changes its vocabulary fields).
        tokenizer: its tokenizer.
        task: the task whose class wraps it.
        skeleton: the task's model (meta device for a folder; the model itself when one was given).
        folder: the checkpoint folder, when the body can be streamed from its safetensors files.
        stored: the folder's tensors by key (headers only), when streaming.
        model: the model given in memory, or `None`.
        location: where it was loaded from (sentence-transformers files are read there), if anywhere.
    """

    config: PretrainedConfig
    tokenizer: Any
    task: EmbFuseTask
    skeleton: PreTrainedModel
    folder: Path | None = None
    stored: dict[str, StoredTensor] | None = None
    model: PreTrainedModel | None = None
    location: str | None = None

    def __post_init__(self) -> None:
        # Named once, as the base is: the skeleton is later given the target's tables.
        skeleton = self.skeleton
        weight = skeleton.get_input_embeddings().weight
        head = skeleton.get_output_embeddings()
        self.input_name = _name_of(skeleton, weight)
        self.dtype = weight.dtype
        self.width = int(weight.shape[1])
        self.num_rows = int(weight.shape[0])
        self.has_head = head is not None
        self.tied = head is not None and head.weight is weight
        self.head_name = _name_of(skeleton, head.weight) if head is not None else None
        bias = getattr(head, "bias", None) if head is not None else None
        self.bias_name = _name_of(skeleton, bias) if bias is not None else None

    def changed_names(self) -> list[str]:
        """The names of the tensors a build may change: input table, head (untied), head bias."""
        head = None if self.tied else self.head_name
        return [name for name in (self.input_name, head, self.bias_name) if name is not None]

    def tensor(self, name: str) -> torch.Tensor:
        """The skeleton's parameter `name` with its values: the model's own, or read from the checkpoint."""
        if self.model is not None:
            return self.model.get_parameter(name).detach()
        key = self.stored_key(name)
        if key is None:
            raise ValueError(f"The base checkpoint {self.folder} holds no tensor for {name!r}.")
        return load_stored(self.stored[key])

    def input_table(self) -> torch.Tensor:
        return self.tensor(self.input_name)

    def head_table(self) -> torch.Tensor | None:
        """The head's own table (`None` without a head, or when it is tied to the input table)."""
        return None if self.head_name is None or self.tied else self.tensor(self.head_name)

    def head_bias(self) -> torch.Tensor | None:
        return None if self.bias_name is None else self.tensor(self.bias_name)

    def stored_key(self, name: str) -> str | None:
        """The checkpoint key of the skeleton's tensor `name`: the same, or with the base prefix added or dropped
        (a head class saves `bert.embeddings...`, the bare model `embeddings...`)."""
        if self.stored is None:
            return None
        prefix = f"{self.skeleton.base_model_prefix}." if self.skeleton.base_model_prefix else None
        candidates = [name]
        if prefix:
            candidates.append(name[len(prefix) :] if name.startswith(prefix) else prefix + name)
        return next((key for key in candidates if key in self.stored), None)

    def materialised(self, **kwargs: Any) -> PreTrainedModel:
        """The whole base model in memory (for `fuse()` on small bases)."""
        if self.model is not None:
            return self.model
        return _without_remote_code(self.task.auto_class.from_pretrained, str(self.folder), **kwargs)


def open_base(
    base: str | os.PathLike | PreTrainedModel,
    task: EmbFuseTask,
    *,
    tokenizer: Any = None,
    num_labels: int | None = None,
) -> BaseCheckpoint:
    """The base named by a folder, a Hub id, a `.gguf` file, or a loaded model of the task's class."""
    kwargs = {"num_labels": num_labels} if num_labels else {}
    if isinstance(base, PreTrainedModel):
        if tokenizer is None:
            raise ValueError("A base model given in memory needs its tokenizer: pass `base_tokenizer=`.")
        return BaseCheckpoint(
            copy.deepcopy(base.config), tokenizer, task, base, model=base, location=base.name_or_path or None
        )
    require_path_or_repo_id(base)
    name = os.fspath(base)
    if is_gguf_file(name):
        # A GGUF base is dequantised once and cached as a plain folder, then streamed from there.
        cached, gguf_tokenizer = gguf_base_folder(name, task.auto_class, **kwargs)
        name, tokenizer = str(cached), tokenizer or gguf_tokenizer
    folder = _local_folder(name)
    if tokenizer is None:
        tokenizer = _without_remote_code(AutoTokenizer.from_pretrained, name)
    config = _without_remote_code(AutoConfig.from_pretrained, name, **kwargs)
    try:
        stored = stored_tensors(folder) if folder is not None else None
    except (FileNotFoundError, ValueError) as error:
        logger.info("Not streaming the base from %s (%s); it is loaded whole.", folder, error)
        stored = None
    if stored is None:
        model = _without_remote_code(task.auto_class.from_pretrained, name, **kwargs)
        return BaseCheckpoint(copy.deepcopy(model.config), tokenizer, task, model, model=model, location=name)
    dtype = _stored_dtype(stored)
    with torch.device("meta"):
        skeleton = task.auto_class.from_config(copy.deepcopy(config), dtype=dtype)
    skeleton.tie_weights()  # what loading does: a tied head is the input table, not a tensor of the checkpoint
    checkpoint = BaseCheckpoint(
        config, tokenizer, task, skeleton, folder=folder, stored=stored, location=name
    )
    lacking = [n for n in checkpoint.changed_names() if checkpoint.stored_key(n) is None]
    if lacking:
        # A table the build changes is not in the checkpoint (a head the task adds): loading initialises it.
        logger.info("%s lacks %s; the base is loaded whole.", name, ", ".join(lacking))
        model = _without_remote_code(task.auto_class.from_pretrained, name, **kwargs)
        return BaseCheckpoint(copy.deepcopy(model.config), tokenizer, task, model, model=model, location=name)
    return checkpoint


def _local_folder(name: str) -> Path | None:
    """A local checkpoint folder; a Hub id is loaded whole (transformers fetches and caches its weights)."""
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def _stored_dtype(stored: dict[str, StoredTensor]) -> torch.dtype:
    """The dtype most of the checkpoint's floating tensors are stored in."""
    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    sizes: dict[str, int] = {}
    for tensor in stored.values():
        if tensor.dtype in names:
            sizes[tensor.dtype] = sizes.get(tensor.dtype, 0) + tensor.nbytes
    return names[max(sizes, key=sizes.get)] if sizes else torch.float32


def _name_of(model: torch.nn.Module, tensor: torch.Tensor) -> str:
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if parameter is tensor:
            return name
    raise ValueError(f"{type(model).__name__} does not hold that tensor.")


def _without_remote_code(load: Any, base: str, **kwargs: Any) -> Any:
    """Load the base's tokenizer, config or model with an explicit `trust_remote_code=False`: never run its code,
    and never stop to ask (transformers prompts on a terminal when the argument is left unset)."""
    try:
        return load(base, trust_remote_code=False, **kwargs)
    except OSError as error:
        if Path(base).expanduser().exists():
            raise
        # Not a local path: transformers tried it as a Hub id (offline, not cached, or no such repo).
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"No such file or folder: {base!r}, and no Hub repo of that id could be loaded ({reason})"
        ) from None
    except ValueError as error:
        if "trust_remote_code" not in str(error) and "custom code" not in str(error):
            raise
        raise ValueError(
            f"The base model {base!r} needs its own Python code (auto_map in its config or tokenizer config), which "
            "hf-embfuse does not run: a fused checkpoint wraps a standard transformers architecture. Use a base "
            "model that transformers supports without trust_remote_code."
        ) from None
