"""Find the checkpoint key of a model's input-embedding table, for any architecture.

The architecture itself is asked: it is built from its config on the meta device (no memory, no
weights) and `get_input_embeddings()` names the parameter. That name is then matched against the
checkpoint's keys, which may carry a different prefix (a head class saves `bert.embeddings...`,
the bare model `embeddings...`). Well-known names are the fallback when the architecture cannot
be built (custom code not trusted, an unknown model type, no config).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

# Suffixes of input-embedding keys across the common families, most specific first.
WELL_KNOWN_SUFFIXES = (
    "word_embeddings.weight",  # BERT family, BLOOM, Falcon
    "embed_tokens.weight",  # Llama, Mistral, Qwen, Gemma, BART, OPT
    "wte.weight",  # GPT-2, GPT-J, StarCoder
    "tok_embeddings.weight",  # original Llama / Mistral consolidated
    "shared.weight",  # T5, mT5
    "embed_in.weight",  # GPT-NeoX, Pythia
    "token_embd.weight",  # GGUF naming
    "word_embedding.weight",
    "tok_emb.weight",
)


@dataclass
class ArchitectureHint:
    """What the meta-device model says about its input embedding.

    Attributes:
        names: every name the embedding weight has in the model (tied heads alias it), embedding first.
        prefix: the model's `base_model_prefix`.
        shape: the weight's shape according to the config.
        details: provenance (model class, embedding module class).
    """

    names: list[str]
    prefix: str
    shape: tuple[int, ...]
    details: dict[str, Any] = field(default_factory=dict)


def architecture_hint(
    config: PretrainedConfig, *, trust_remote_code: bool = False
) -> ArchitectureHint | None:
    """Build the architecture on the meta device and ask it for its input embedding.

    Returns:
        The hint, or `None` when the architecture cannot be built here (the caller falls back on names).
    """
    import transformers
    from transformers import AutoModel

    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            if cls is not None:
                model = cls._from_config(config)
            else:
                model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        module = model.get_input_embeddings()
        weight = module.weight
    except Exception as e:  # any failure here only means we fall back on well-known names
        logger.info(
            "Could not build %s on the meta device (%s: %s); matching well-known names.",
            arch,
            type(e).__name__,
            e,
        )
        return None
    finally:
        transformers.logging.set_verbosity(verbosity)
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is weight]
    if not names:
        return None
    details = {"model_class": type(model).__name__, "embedding_class": type(module).__name__}
    return ArchitectureHint(
        names=names, prefix=model.base_model_prefix or "", shape=tuple(weight.shape), details=details
    )


def match_key(hint: ArchitectureHint, keys: Iterable[str]) -> str | None:
    """The checkpoint key holding the weight the hint names, allowing for prefix differences."""
    keys = list(keys)
    keyset = set(keys)
    prefix = f"{hint.prefix}." if hint.prefix else None
    for name in hint.names:
        candidates = [name]
        if prefix:
            candidates.append(name[len(prefix) :] if name.startswith(prefix) else prefix + name)
        for candidate in candidates:
            if candidate in keyset:
                return candidate
    for name in hint.names:
        # One side carries extra leading modules (e.g. a wrapper `model.`): match on the dotted suffix.
        hits = [k for k in keys if k.endswith("." + name) or name.endswith("." + k)]
        if hits:
            return min(hits, key=len)
    # Same module and parameter, different path (e.g. multimodal wrappers renamed between versions).
    tail = ".".join(hint.names[0].split(".")[-2:])
    hits = [k for k in keys if k == tail or k.endswith("." + tail)]
    return hits[0] if len(hits) == 1 else None


def well_known_key(keys: Iterable[str]) -> str | None:
    """The likeliest input-embedding key by name alone, or `None`."""
    keys = list(keys)
    for suffix in WELL_KNOWN_SUFFIXES:
        hits = [k for k in keys if (k == suffix or k.endswith("." + suffix)) and "position" not in k]
        # Encoder-decoder checkpoints may also store the decoder's copy; prefer the shortest key.
        if hits:
            return min(hits, key=lambda k: ("decoder" in k, len(k), k))
    return None
