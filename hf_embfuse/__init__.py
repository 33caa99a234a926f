"""hf_embfuse: fuse the input embeddings of several pretrained models into one learnable table.

Importing the package registers the `embfuse` model type with `AutoConfig` and every `AutoModel*`
class the wrappers provide, and marks each wrapper for `register_for_auto_class`, so that
`save_pretrained` writes the two code files and an `auto_map` naming every wrapper. (The `hf-embfuse`
command registers after parsing its arguments, so that its help needs neither torch nor transformers.)

Everything else (building, baking, publishing, ...) is imported on first use through one table,
`_LAZY`, so `import hf_embfuse` costs only torch, transformers and the shipped modeling file.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _register() -> None:
    """Register the `embfuse` type and every wrapper with transformers' Auto classes (idempotent)."""
    from transformers import AutoConfig

    from . import modeling_embfuse
    from .configuration_embfuse import EmbFuseConfig

    AutoConfig.register(EmbFuseConfig.model_type, EmbFuseConfig, exist_ok=True)
    EmbFuseConfig.register_for_auto_class()
    # The task table lives in the shipped modeling file, which needs it to build models.
    for task in modeling_embfuse.TASKS:
        model_class = getattr(modeling_embfuse, task.wrapper)
        task.auto_class.register(EmbFuseConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(task.auto_class.__name__)


# The `hf-embfuse` command parses its arguments before it imports torch (`--help` answers at once) and
# registers once a command runs; every other import registers now.
if Path((getattr(sys, "argv", None) or [""])[0]).stem != "hf-embfuse":
    from .configuration_embfuse import FORMAT_VERSION, EmbFuseConfig
    from .modeling_embfuse import (
        EmbFuseForCausalLM,
        EmbFuseForMaskedLM,
        EmbFuseForSequenceClassification,
        EmbFuseForTokenClassification,
        EmbFuseModel,
        EmbFusePreTrainedModel,
        MultiSourceEmbedding,
    )

    _register()

# Public name -> (submodule, attribute); attribute None means the submodule itself. No submodule shares a
# public function's name (`bake` lives in `baking`): importing a submodule sets the package attribute of its
# name, which would replace the function.
_LAZY: dict[str, tuple[str, str | None]] = {
    # Imported above, except in the `hf-embfuse` command.
    "FORMAT_VERSION": ("configuration_embfuse", "FORMAT_VERSION"),
    "EmbFuseConfig": ("configuration_embfuse", "EmbFuseConfig"),
    **{
        name: ("modeling_embfuse", name)
        for name in (
            "EmbFuseForCausalLM",
            "EmbFuseForMaskedLM",
            "EmbFuseForSequenceClassification",
            "EmbFuseForTokenClassification",
            "EmbFuseModel",
            "EmbFusePreTrainedModel",
            "MultiSourceEmbedding",
        )
    },
    "bake": ("baking", "bake"),
    "bake_to_folder": ("baking", "bake_to_folder"),
    "load_embfuse_folder": ("checkpoint_folder", "load_embfuse_folder"),
    "SourceSpec": ("wrap", "SourceSpec"),
    "from_base": ("wrap", "from_base"),
    "fuse": ("build", "fuse"),
    "build_to_folder": ("build", "build_to_folder"),
    "FuseResult": ("build", "FuseResult"),
    **{
        name: ("recipe", name)
        for name in (
            "FuseConfig",
            "Recipe",
            "SourceConfig",
            "VocabularyConfig",
            "AddedToken",
            "Identity",
            "Linear",
            "Transport",
            "OMP",
        )
    },
    "align_source": ("alignment", "align_source"),
    "read_source": ("sources", "read_source"),
    "load_recipe": ("recipe", "load_recipe"),
    "push_to_hub": ("hub", "push_to_hub"),
}

if TYPE_CHECKING:
    from .alignment import align_source
    from .baking import bake, bake_to_folder
    from .build import FuseResult, build_to_folder, fuse
    from .checkpoint_folder import load_embfuse_folder
    from .hub import push_to_hub
    from .recipe import (
        OMP,
        AddedToken,
        FuseConfig,
        Identity,
        Linear,
        Recipe,
        SourceConfig,
        Transport,
        VocabularyConfig,
        load_recipe,
    )
    from .sources import read_source
    from .wrap import SourceSpec, from_base


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FORMAT_VERSION",
    "OMP",
    "AddedToken",
    "EmbFuseConfig",
    "EmbFuseForCausalLM",
    "EmbFuseForMaskedLM",
    "EmbFuseForSequenceClassification",
    "EmbFuseForTokenClassification",
    "EmbFuseModel",
    "EmbFusePreTrainedModel",
    "FuseConfig",
    "FuseResult",
    "Identity",
    "Linear",
    "MultiSourceEmbedding",
    "Recipe",
    "SourceConfig",
    "SourceSpec",
    "Transport",
    "VocabularyConfig",
    "align_source",
    "bake",
    "bake_to_folder",
    "build_to_folder",
    "from_base",
    "fuse",
    "load_embfuse_folder",
    "load_recipe",
    "push_to_hub",
    "read_source",
]
