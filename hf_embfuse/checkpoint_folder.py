"""An EmbFuse checkpoint folder: the check (is this one?), loading, content hash and mean mixing weights.

One module serves every command that reads a saved checkpoint (`inspect`, `bake`, `push`, `eval`) and
`hf_embfuse.load_embfuse_folder`, so they accept and refuse the same folders with the same words.
"""

from __future__ import annotations

import hashlib
import json
import os
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from .configuration_embfuse import EmbFuseConfig
from .modeling_embfuse import EmbFuseTask, task_of

EXPECTED = "a folder written by hf-embfuse (config.json with model_type 'embfuse', and the model weights)"
# What `save_pretrained` writes for the weights: one file, shards with their index, or pickles.
WEIGHT_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)


def is_weights_file(name: str) -> bool:
    """Whether a file name is one `save_pretrained` writes model weights to."""
    return any(fnmatch(name, pattern) for pattern in WEIGHT_PATTERNS)


def read_checkpoint_config(folder: str | os.PathLike, not_embfuse_hint: str = "") -> dict[str, Any]:
    """Check that `folder` holds an EmbFuse checkpoint and return its `config.json` as a dict.

    Reads only `config.json` and the folder listing, never the weights.

    Args:
        folder: the folder to check.
        not_embfuse_hint: a sentence appended when the folder holds another model type (what the
            calling command suggests instead).

    Raises:
        FileNotFoundError: the folder, its config.json or its weights are missing.
        ValueError: a file instead of a folder, a PEFT adapter folder, invalid JSON, another model type.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{str(folder)!r} does not exist; expected {EXPECTED}.")
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; expected {EXPECTED}.")
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "adapter_config.json").is_file():
            raise ValueError(
                f"{str(folder)!r} is a PEFT adapter, not a full checkpoint; expected {EXPECTED}. Load the EmbFuse "
                "model with the adapter, `merge_and_unload()`, and `save_pretrained(...)` it first."
            )
        raise FileNotFoundError(f"{str(folder)!r} has no config.json; expected {EXPECTED}.")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(config_file)!r} is not valid JSON ({error}); expected {EXPECTED}.") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != EmbFuseConfig.model_type:
        raise ValueError(
            f"{str(folder)!r} holds a {model_type!r} checkpoint, not an embfuse one; expected {EXPECTED}. "
            + (not_embfuse_hint or "Build one with `hf-embfuse build` or `hf_embfuse.fuse`.")
        )
    if not any(is_weights_file(path.name) for path in folder.iterdir()):
        raise FileNotFoundError(f"{str(folder)!r} has a config.json but no weights; expected {EXPECTED}.")
    return config


def checkpoint_task(folder: str | os.PathLike, config: dict[str, Any]) -> EmbFuseTask:
    """The task whose wrapper loads the checkpoint, from its config's `architectures`."""
    wrapper = (config.get("architectures") or ["EmbFuseModel"])[0]
    try:
        return task_of(wrapper)
    except ValueError as error:
        raise ValueError(f"{str(folder)!r} names architecture {error}") from None


def load_embfuse_folder(folder: str | os.PathLike, not_embfuse_hint: str = "") -> PreTrainedModel:
    """Load an EmbFuse checkpoint folder with this package's wrapper classes, after checking it is one.

    Args:
        folder: the checkpoint folder.
        not_embfuse_hint: what to suggest when the folder holds another model type.

    Raises:
        FileNotFoundError: the folder, its `config.json` or its weights are missing.
        ValueError: the folder is not an EmbFuse checkpoint (a plain model, a PEFT adapter, ...).
    """
    from .wrap import wrapper_class

    folder = Path(folder)
    task = checkpoint_task(folder, read_checkpoint_config(folder, not_embfuse_hint))
    return wrapper_class(task).from_pretrained(folder, dtype="auto")


def content_hash(folder: str | os.PathLike) -> str:
    """SHA-256 over the weights files of a checkpoint (names and bytes), for reproducibility checks."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def mean_mixing_weights(folder: str | os.PathLike, config: EmbFuseConfig | None = None) -> list[float] | None:
    """Mean mixing weight per source (base first, 4 decimals), from the saved embedding module alone.

    Reads only the fused embedding's tensors, never the whole model. `None` when the weights do not hold
    exactly one fused embedding.
    """
    from safetensors import safe_open

    from .modeling_embfuse import MultiSourceEmbedding

    folder = Path(folder)
    config = config if config is not None else EmbFuseConfig.from_pretrained(folder)
    keys = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            keys.update(dict.fromkeys(handle.keys(), path))
    coverage_keys = [key for key in keys if key.endswith(".coverage")]
    if len(coverage_keys) != 1:
        return None
    prefix = coverage_keys[0][: -len("coverage")]
    state = {}
    for key, path in keys.items():
        if key.startswith(prefix):
            with safe_open(path, "pt") as handle:
                state[key[len(prefix) :]] = handle.get_tensor(key)
    num_rows, width = state["weight"].shape
    embedding = MultiSourceEmbedding(config, num_rows, width)
    embedding.load_state_dict(state, strict=False)
    return [round(float(weight), 4) for weight in embedding.mean_mixing_weights()]
