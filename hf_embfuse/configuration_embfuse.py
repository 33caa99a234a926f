"""EmbFuse configuration.

This file is copied into every saved checkpoint and runs under `trust_remote_code`: it imports only
`transformers` and the standard library.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from transformers import AutoConfig, PretrainedConfig

# Bump when the checkpoint layout changes; a checkpoint written by newer code is refused by older code.
# 1: the wrapper adopted the base model's children (keys were the base's own).
# 2: the wrapper holds the base model as a submodule under the base's `base_model_prefix`.
FORMAT_VERSION = 2
UPGRADE_COMMAND = "hf-embfuse upgrade DIR"

MIXING_MODES = ("fixed", "learned", "gated")
REGULARIZERS = ("none", "anchor", "entropy")
PROJECTIONS = ("identity", "linear")
# How a source's stored table and map were initialised (provenance; the runtime map is `projection`).
INITIALIZATIONS = ("identity", "linear", "transport", "omp")
SOURCE_DTYPES = ("float32", "float16", "bfloat16")
# Fields of the wrapped model that also appear in `to_dict()` (and so at the top of config.json): transformers
# and PEFT read them from the dict (generation defaults, PEFT's tied-embedding check). Values come from the
# base config at the time of the call, never from a copy.
_BASE_FIELDS_IN_DICT = ("tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")


class EmbFuseConfig(PretrainedConfig):
    r"""
    Configuration of an EmbFuse model: a base transformers model whose input embedding is a learnable
    mixture of several token-aligned embedding tables ("sources").

    Args:
        base_config (`dict` or `PretrainedConfig`):
            Config of the wrapped base model (any architecture). Required to build a model.
        sources (`list[dict]`):
            One entry per source table, in order; source 0 is the base model's own table. Each entry needs
            `width` (the table's width) and `projection`, the map applied at run time (`"identity"` or
            `"linear"`). `initialization` says how the stored table and map were made (`"identity"`: copied
            as aligned, `"linear"`: a map fitted on anchors, `"transport"` / `"omp"`: rows rebuilt from base vectors);
            the rest (`name`, `kind`, `revision`, `alignment` summary, ...) is provenance, kept as is.
            Defaults to the base alone.
        mixing (`str`, defaults to `"learned"`):
            `"fixed"` (the weights in `fixed_weights`), `"learned"` (one logit per source) or `"gated"`
            (a per-token gate computed from each projected vector).
        fixed_weights (`list[float]`, *optional*):
            Non-negative weights summing to 1, one per source. Required for `"fixed"`; for the other modes,
            the initial mixing weights (uniform when unset).
        mixing_temperature (`float`, defaults to 1.0):
            Softmax temperature of the mixing weights (named so as not to clash with generation's).
        regularizer (`str`, defaults to `"none"`):
            Ω in `loss = task_loss + reg_lambda * Ω`: `"none"`, `"anchor"` (mean squared distance of the fused
            vectors from the base vectors) or `"entropy"` (mean entropy of the per-token mixing weights).
        reg_lambda (`float`, defaults to 0.0):
            λ, the weight of the regulariser.
        train_sources (`bool`, defaults to `False`):
            Whether the aligned source tables (sources 1..K-1) are trainable.
        train_projections (`bool`, defaults to `True`):
            Whether the linear projections into the base space are trainable.
        source_dtype (`str`, defaults to `"float32"`):
            Storage dtype of the source tables (`"float32"`, `"float16"` or `"bfloat16"`); projections run in fp32.
        embed_scale (`float`, defaults to 1.0):
            Factor applied to the fused vectors, for bases whose embedding module scales its output (e.g. Gemma).
        base_model_name_or_path (`str`, *optional*):
            Where the base came from, as provenance.
        format_version (`int`):
            Checkpoint layout version; loading a newer one than this code knows raises an error.

    Fields of the wrapped model (`vocab_size`, `pad_token_id`, `hidden_dropout_prob`, ...) are read from and written
    to `base_config`, never copied here (labels, which every config holds, are written to both). `fixed_weights`, `mixing_temperature`, `regularizer`, `reg_lambda` and
    `embed_scale` are read by the model on every call: set them on `model.config` (or pass them to
    `from_pretrained`) and the model runs them. A `mixer.fixed_weights` tensor in a checkpoint is written from
    this config and ignored on load.

    Loading a saved folder's tokenizer without `trust_remote_code=True` (and without `import hf_embfuse`) logs
    transformers' "You are using a model of type `embfuse` to instantiate a model of type ``": it reads the
    config first, does not know this type, and falls back to a bare config. The tokenizer is unaffected.
    """

    model_type = "embfuse"
    sub_configs = {"base_config": AutoConfig}

    def __init__(
        self,
        base_config: dict[str, Any] | PretrainedConfig | None = None,
        sources: list[dict[str, Any]] | None = None,
        mixing: str = "learned",
        fixed_weights: list[float] | None = None,
        mixing_temperature: float = 1.0,
        regularizer: str = "none",
        reg_lambda: float = 0.0,
        train_sources: bool = False,
        train_projections: bool = True,
        source_dtype: str = "float32",
        embed_scale: float = 1.0,
        base_model_name_or_path: str | None = None,
        format_version: int = FORMAT_VERSION,
        **kwargs: Any,
    ) -> None:
        if isinstance(base_config, dict):
            base_config = dict(base_config)
            model_type = base_config.pop("model_type", None)
            if model_type is None:
                raise ValueError("`base_config` has no `model_type`; pass the base model's full config dict.")
            base_config = AutoConfig.for_model(model_type, **base_config)
        self.base_config = base_config
        if base_config is not None:
            # Tying, generation and pipelines read these from the top-level config.
            # Our attention setting propagates to the base config: start from the base's own.
            kwargs.setdefault("attn_implementation", getattr(base_config, "_attn_implementation", None))
            kwargs.setdefault("tie_word_embeddings", getattr(base_config, "tie_word_embeddings", False))
            for key in ("pad_token_id", "bos_token_id", "eos_token_id", "is_encoder_decoder"):
                if getattr(base_config, key, None) is not None:
                    kwargs.setdefault(key, getattr(base_config, key))
            if getattr(base_config, "id2label", None) is not None and "id2label" not in kwargs:
                kwargs.setdefault("num_labels", base_config.num_labels)
        if sources is None:
            # A bare `EmbFuseConfig()` (transformers builds one to compute diffs) describes no model yet.
            width = getattr(base_config, "hidden_size", None) if base_config is not None else None
            sources = (
                []
                if width is None
                else [
                    {
                        "name": "base",
                        "kind": "base",
                        "width": width,
                        "projection": "identity",
                        "initialization": "identity",
                    }
                ]
            )
        self.sources = [dict(source) for source in sources]
        self.mixing = mixing
        self.fixed_weights = None if fixed_weights is None else [float(w) for w in fixed_weights]
        self.mixing_temperature = mixing_temperature
        self.regularizer = regularizer
        self.reg_lambda = reg_lambda
        self.train_sources = train_sources
        self.train_projections = train_projections
        self.source_dtype = source_dtype
        self.embed_scale = embed_scale
        self.base_model_name_or_path = base_model_name_or_path
        self.format_version = format_version
        super().__init__(**kwargs)
        self.validate_embfuse()

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    def __setattr__(self, name: str, value: Any) -> None:
        # One owner per field. EmbFuse's own fields and PretrainedConfig's live here; any other field the
        # wrapped model's config has (`vocab_size`, `pad_token_id`, `hidden_dropout_prob`, ...) is written
        # to it, and read back from it by `__getattr__`, so the two configs cannot disagree. Trainer,
        # pipelines, PEFT, generation and `from_pretrained(..., pad_token_id=0)` all set fields this way.
        base_config = self.__dict__.get("base_config")
        owner = None if _is_own_field(type(self), name) else self._base_owner(name)
        if owner is None:
            super().__setattr__(name, value)
        else:
            setattr(owner, name, value)
            if name == "tie_word_embeddings":
                base_config.get_text_config(decoder=True).tie_word_embeddings = value
        # Labels are PretrainedConfig's own fields, and the base model's head reads its own config's.
        if base_config is not None and name in ("id2label", "label2id") and value is not None:
            setattr(base_config, name, dict(value))

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found here: a field of the wrapped model, answered by its config.
        owner = None if name.startswith("_") else self._base_owner(name)
        if owner is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(owner, name)

    def _base_owner(self, name: str) -> PretrainedConfig | None:
        """The wrapped model's config that holds `name`: the base config, else its text config (composite bases)."""
        base_config = self.__dict__.get("base_config")
        if base_config is None:
            return None
        for candidate in (base_config, base_config.get_text_config()):
            if hasattr(candidate, name):
                return candidate
        return None

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if self.base_config is not None:
            for name in _BASE_FIELDS_IN_DICT:
                if getattr(self.base_config, name, None) is not None:
                    output[name] = getattr(self.base_config, name)
        return output

    def validate_embfuse(self) -> None:
        """Raise a `ValueError` naming the first invalid field and its allowed values."""
        if not isinstance(self.format_version, int) or self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"`format_version` is {self.format_version!r}, but this code reads checkpoints up to version "
                f"{FORMAT_VERSION}. Upgrade hf-embfuse, or load the checkpoint with the code files saved beside it "
                "(`trust_remote_code=True`)."
            )
        if self.format_version < FORMAT_VERSION:
            raise ValueError(
                f"This checkpoint is in EmbFuse format {self.format_version}; this code reads format "
                f"{FORMAT_VERSION}. Rewrite it with `{UPGRADE_COMMAND}` (pip install hf-embfuse), or load it with "
                "the code files saved beside it (`trust_remote_code=True`)."
            )
        _check_choice("mixing", self.mixing, MIXING_MODES)
        _check_choice("regularizer", self.regularizer, REGULARIZERS)
        _check_choice("source_dtype", self.source_dtype, SOURCE_DTYPES)
        if not _is_finite_number(self.mixing_temperature) or self.mixing_temperature <= 0:
            raise ValueError(
                f"`mixing_temperature` must be a finite number > 0, got {self.mixing_temperature!r}."
            )
        if not _is_finite_number(self.reg_lambda) or self.reg_lambda < 0:
            raise ValueError(f"`reg_lambda` must be a finite number >= 0, got {self.reg_lambda!r}.")
        if not _is_finite_number(self.embed_scale):
            raise ValueError(f"`embed_scale` must be a finite number, got {self.embed_scale!r}.")
        if not self.sources:
            if self.base_config is not None:
                raise ValueError("`sources` is empty; source 0 must describe the base model's own table.")
            return
        for index, source in enumerate(self.sources):
            width = source.get("width")
            if not isinstance(width, int) or width <= 0:
                raise ValueError(f"`sources[{index}]['width']` must be a positive int, got {width!r}.")
            _check_choice(f"sources[{index}]['projection']", source.get("projection"), PROJECTIONS)
            if source.get("initialization") is not None:
                _check_choice(
                    f"sources[{index}]['initialization']", source["initialization"], INITIALIZATIONS
                )
        if self.sources[0]["projection"] != "identity":
            raise ValueError(
                "`sources[0]` is the base model's own table; its `projection` must be 'identity'."
            )
        if self.mixing == "fixed" and self.fixed_weights is None:
            raise ValueError(
                "`mixing='fixed'` needs `fixed_weights`: one weight per source, >= 0, summing to 1."
            )
        if self.fixed_weights is not None:
            weights = self.fixed_weights
            if len(weights) != self.num_sources:
                raise ValueError(
                    f"`fixed_weights` has {len(weights)} values for {self.num_sources} sources; give one per source."
                )
            if any(not math.isfinite(w) or w < 0 for w in weights):
                raise ValueError(f"`fixed_weights` must be finite and >= 0, got {weights}.")
            if abs(sum(weights) - 1.0) > 1e-4:
                raise ValueError(f"`fixed_weights` must sum to 1, got {weights} (sum {sum(weights):.6g}).")

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        # Generation (caches, vocab size) must see the wrapped model's text config, not ours.
        if self.base_config is None:
            return self
        return self.base_config.get_text_config(*args, **kwargs)


@functools.cache
def _pretrained_config_fields() -> frozenset[str]:
    """EmbFuse's fields, and those every `PretrainedConfig` holds itself (`architectures`, `id2label`, ...)."""
    code = (
        EmbFuseConfig.__init__.__code__
    )  # its keyword parameters, read without `inspect` (shipped-file rule)
    count = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 0x4) + bool(code.co_flags & 0x8)
    parameters = code.co_varnames[1:count]  # after `self`: named, keyword-only, *args and **kwargs
    return frozenset(PretrainedConfig().__dict__) | frozenset(parameters)


def _is_own_field(config_class: type, name: str) -> bool:
    """Whether `name` is stored on the EmbFuse config itself rather than on the wrapped model's config."""
    return (
        name.startswith("_")
        or name in ("base_config", "auto_map")
        or name in _pretrained_config_fields()
        or hasattr(config_class, name)  # class attributes and properties (`model_type`, `num_labels`, ...)
    )


def _check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{field}` must be one of {', '.join(map(repr, allowed))}; got {value!r}.")


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["FORMAT_VERSION", "INITIALIZATIONS", "UPGRADE_COMMAND", "EmbFuseConfig"]
