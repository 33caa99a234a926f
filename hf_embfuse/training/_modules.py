"""Find the fused embedding and its parts inside any model that holds one.

The model may be one of our `EmbFuse*` classes, the same classes loaded from a checkpoint's own code
(`trust_remote_code=True`, so a different Python class object), a `PeftModel` around either, or a
DDP/FSDP wrapper. Hence matching is by class name and attributes, never by `isinstance`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn
from transformers.modeling_utils import unwrap_model
from transformers.trainer_utils import unwrap_peft_model

from ..model_names import first_hub_id, local_name

EMBEDDING_CLASS_NAME = "MultiSourceEmbedding"


def is_fused_embedding(module: nn.Module) -> bool:
    # Along the MRO: FSDP2's `fully_shard` swaps the class for a subclass (`FSDPMultiSourceEmbedding`).
    named = any(cls.__name__ == EMBEDDING_CLASS_NAME for cls in type(module).__mro__)
    return named and hasattr(module, "fused_weight")


def unwrap(model: nn.Module) -> nn.Module:
    """The EmbFuse model inside DDP/FSDP and PEFT wrappers (transformers' own unwrapping), or `model`."""
    return unwrap_model(unwrap_peft_model(unwrap_model(model)))


def find_fused_embedding(model: nn.Module) -> tuple[str, nn.Module]:
    """Return `(qualified name, module)` of the model's `MultiSourceEmbedding`.

    Raises:
        ValueError: the model has none (it is not an EmbFuse model), or more than one.
    """
    found = [(name, module) for name, module in model.named_modules() if is_fused_embedding(module)]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no MultiSourceEmbedding: it is not an EmbFuse model. Build one with "
            "`hf_embfuse.fuse(...)` or `hf_embfuse.from_base(...)`, or load an embfuse checkpoint."
        )
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise ValueError(
            f"{type(model).__name__} has several MultiSourceEmbedding modules ({names}); expected one."
        )
    return found[0]


def source_names(model: nn.Module, num_sources: int) -> list[str]:
    """Readable, unique names of the sources (the base first), from the EmbFuse config when there is one.

    Named as the model card names them (`hf_embfuse.model_names`): a Hub id or a name as given, a local
    path by its last component. For metric keys and the plot's legend, whitespace becomes `_` and no name
    starts with `_` (matplotlib leaves such labels out of a legend).
    """
    config = getattr(unwrap(model), "config", None)
    entries = getattr(config, "sources", None) or []
    names: list[str] = []
    for index in range(num_sources):
        entry = entries[index] if index < len(entries) else {}
        name = entry.get("name") if isinstance(entry.get("name"), str) else None
        found = name or first_hub_id(entry.get("hub_id"), entry.get("repo_id"))
        name = readable_name(found or "") or ("base" if index == 0 else f"source{index}")
        names.append(name if name not in names else f"{name}-{index}")
    return names


def readable_name(name: str) -> str:
    """`name` as a label: a local path cut to its last component, whitespace as `_`, no leading `_`."""
    return re.sub(r"\s+", "_", local_name(name.strip())).lstrip("_")


@dataclass
class FusedParameters:
    """The parameters of a model, split by role. Each list holds distinct parameters, in model order."""

    mixer: list[nn.Parameter] = field(default_factory=list)
    projections: list[nn.Parameter] = field(default_factory=list)
    sources: list[nn.Parameter] = field(default_factory=list)
    base_table: list[nn.Parameter] = field(default_factory=list)
    base: list[nn.Parameter] = field(default_factory=list)


def split_parameters(model: nn.Module) -> tuple[FusedParameters, dict[int, str]]:
    """Split `model`'s parameters into mixer / projections / source tables / base table / everything else.

    Returns the split and a map from `id(parameter)` to its (first) qualified name. Works on PEFT models:
    the copies PEFT makes of `mixer` (``modules_to_save``) live inside the mixer module and count as mixer.
    """
    _, embedding = find_fused_embedding(model)
    roles: dict[int, str] = {}
    for parameter in embedding.mixer.parameters():
        roles[id(parameter)] = "mixer"
    for parameter in embedding.projections.parameters():
        roles[id(parameter)] = "projections"
    for parameter in embedding.source_tables.parameters():
        roles[id(parameter)] = "sources"
    roles[id(embedding.weight)] = "base_table"
    split = FusedParameters()
    names: dict[int, str] = {}
    for name, parameter in model.named_parameters():
        if id(parameter) in names:
            continue
        names[id(parameter)] = name
        getattr(split, roles.get(id(parameter), "base")).append(parameter)
    return split, names
