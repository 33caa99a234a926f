"""hf_embfuse: fuse the input embeddings of several pretrained models into one learnable table.

Importing the package registers the `embfuse` model type with `AutoConfig` and every `AutoModel*`
class the wrappers provide, and marks each wrapper for `register_for_auto_class`, so that
`save_pretrained` writes the two code files and an `auto_map` naming every wrapper.
"""

from transformers import AutoConfig

from . import modeling_embfuse
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
from .wrap import SourceSpec, from_base

__version__ = "0.1.0"


def _register() -> None:
    AutoConfig.register(EmbFuseConfig.model_type, EmbFuseConfig, exist_ok=True)
    EmbFuseConfig.register_for_auto_class()
    # The task table lives in the shipped modeling file, which needs it to build models.
    for task in modeling_embfuse.TASKS:
        model_class = getattr(modeling_embfuse, task.wrapper)
        task.auto_class.register(EmbFuseConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(task.auto_class.__name__)


_register()

# Not lazy: once anything imports the submodule `hf_embfuse.bake`, Python sets the package attribute
# `bake` to that module, and a lazily resolved `hf_embfuse.bake(model)` would stop being callable.
from .bake import bake  # noqa: E402

# Heavier entry points load on first use, so `import hf_embfuse` (needed to register) stays light.
_LAZY = {
    "fuse": ("build", "fuse"),
    "FuseResult": ("build", "FuseResult"),
    "align_source": ("alignment", "align_source"),
    "read_source": ("sources", "read_source"),
    "load_recipe": ("recipe", "load_recipe"),
    "push_to_hub": ("hub", "push_to_hub"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module 'hf_embfuse' has no attribute {name!r}")


__all__ = [
    "FORMAT_VERSION",
    "EmbFuseConfig",
    "EmbFuseForCausalLM",
    "EmbFuseForMaskedLM",
    "EmbFuseForSequenceClassification",
    "EmbFuseForTokenClassification",
    "EmbFuseModel",
    "EmbFusePreTrainedModel",
    "FuseResult",
    "MultiSourceEmbedding",
    "SourceSpec",
    "align_source",
    "bake",
    "from_base",
    "fuse",
    "load_recipe",
    "push_to_hub",
    "read_source",
]
