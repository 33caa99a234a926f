"""Public names of models and sources: a Hub id when one is known, else a folder or file name, never a local path.

Names written into a checkpoint (config, report, model card) travel with it to other machines and to the Hub.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

# A reference ending like this names a file (a GGUF model, a vector table), not a Hub repository.
_FILE_SUFFIXES = (
    ".gguf", ".npy", ".npz", ".txt", ".vec", ".bin", ".parquet", ".safetensors", ".pt", ".json", ".gz",
)  # fmt: skip


def hub_id(reference: Any) -> str | None:
    """`reference` if it reads as a Hub model id (`namespace/name`, not a local path or file), else None."""
    if not isinstance(reference, str) or "/" not in reference or os.path.isabs(reference):
        return None
    try:
        validate_repo_id(reference)
    except HFValidationError:
        return None
    if reference.lower().endswith(_FILE_SUFFIXES) or os.path.exists(reference):
        return None
    return reference


def first_hub_id(*references: Any) -> str | None:
    """The first of `references` that is a Hub id."""
    return next((found for found in map(hub_id, references) if found), None)


def local_name(name: str) -> str:
    """`name` unchanged unless it is a local path (absolute, or present here): then its last component."""
    if os.path.isabs(name) or os.path.exists(name) or re.match(r"^[A-Za-z]:[\\/]|^\\\\", name):
        return re.split(r"[\\/]", name.rstrip("\\/"))[-1] or name
    return name


def base_model_name(path_or_id: str | os.PathLike, hub_id_given: str | None = None) -> str:
    """How a checkpoint names its base: the model the user gave, by a Hub id only where one is known.

    In order: `hub_id_given` (a recipe's `base_hub_id`); the path when it is a Hub id; the repository of a folder
    in the Hub cache (`models--org--name/snapshots/...`); a local folder's `_name_or_path` when it names that
    folder (its last part is the folder's name); else the folder's own name. A folder's `_name_or_path` that
    names another model is never used: a fine-tuned or converted copy keeps its parent's id there.
    """
    path = os.fspath(path_or_id)
    return first_hub_id(hub_id_given, path, _cached_repo_id(path), _own_name_or_path(path)) or local_name(
        path
    )


def _cached_repo_id(path: str) -> str | None:
    """`org/name` for a folder inside the Hub cache's `models--org--name` entry, else None."""
    for part in reversed(Path(path).parts):
        if part.startswith("models--") and part.count("--") >= 2:
            return "/".join(part[len("models--") :].split("--", 1))
    return None


def _own_name_or_path(path: str) -> str | None:
    """A folder's `_name_or_path` when it names the folder itself (same last part), else None."""
    name = _config_name_or_path(path)
    if not isinstance(name, str) or not os.path.isdir(path):
        return None
    return name if name.rstrip("/").split("/")[-1] == Path(path).resolve().name else None


def _config_name_or_path(path: str) -> str | None:
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("_name_or_path") if isinstance(config, dict) else None


__all__ = ["base_model_name", "first_hub_id", "hub_id", "local_name"]
