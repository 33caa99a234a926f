"""Is this folder a saved EmbFuse checkpoint? One check, shared by `inspect`, `bake` and `push`."""

from __future__ import annotations

import json
import os
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .configuration_embfuse import EmbFuseConfig

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
