"""Check that every process of a distributed run built the same EmbFuse model.

DDP only compares parameter shapes, and only when it wraps the model: two ranks that disagree on, say,
the mixing temperature, the regulariser or the fixed weights train silently different models whose
gradients get averaged. One all-gather of a small description per rank catches that, with a message
that names the rank and the field.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from ._modules import find_fused_embedding

# Config keys that say nothing about the model's computation (paths, versions, bookkeeping).
_IGNORED_KEYS = {
    "_name_or_path",
    "transformers_version",
    "_commit_hash",
    "auto_map",
    "architectures",
    "dtype",
}


def embfuse_fingerprint(model: nn.Module) -> dict[str, Any]:
    """A JSON-able description of what an EmbFuse model computes: its config and its embedding's tensor shapes.

    Args:
        model: an EmbFuse model, or a PEFT/DDP wrapper around one.
    """
    _, embedding = find_fused_embedding(model)
    config = getattr(model, "config", None)
    described = {}
    if config is not None:
        described = {
            key: value for key, value in sorted(config.to_dict().items()) if key not in _IGNORED_KEYS
        }
    for name, tensor in embedding.state_dict().items():
        described[f"shape of {name}"] = list(tensor.shape)
    return json.loads(json.dumps(described, sort_keys=True, default=str))


def check_config_consistency(model: nn.Module, group: Any = None) -> None:
    """Raise on every rank if the ranks of the current `torch.distributed` run built different EmbFuse models.

    A no-op outside a distributed run (or with one process). Call it on every rank, before training (it is
    a collective); `EmbFuseTrainer.train` and `MixingWeightsCallback` do.

    Args:
        model: the EmbFuse model (or a wrapper around one) this rank is about to train.
        group: the process group to check (default: the world).

    Raises:
        ValueError: naming the first rank whose model differs from rank 0's, and the differing fields.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world_size = torch.distributed.get_world_size(group)
    if world_size < 2:
        return
    mine = embfuse_fingerprint(model)
    digest = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()
    digests: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(digests, digest, group=group)
    if len(set(digests)) == 1:
        return
    # Only on a mismatch: gather the full descriptions to say what differs.
    described: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(described, mine, group=group)
    reference = described[0]
    for rank, other in enumerate(described[1:], start=1):
        if digests[rank] == digests[0]:
            continue
        fields = sorted(key for key in set(reference) | set(other) if reference.get(key) != other.get(key))
        details = "; ".join(
            f"{key}: rank 0 has {_short(reference.get(key))}, rank {rank} has {_short(other.get(key))}"
            for key in fields[:5]
        )
        raise ValueError(
            f"The EmbFuse model on rank {rank} differs from rank 0's ({details}). Every process of a distributed "
            "run must build the same model: load it from one checkpoint or recipe, with the same arguments, on "
            "every rank."
        )


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
