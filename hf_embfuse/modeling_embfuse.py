"""EmbFuse models: a base transformers model whose input embedding mixes several token-aligned tables.

This file is copied into every saved checkpoint and runs under `trust_remote_code`: it imports only
`torch`, `transformers`, the standard library and `configuration_embfuse`.

Layout (format 2). An `EmbFuse*` model is an ordinary composite model: it holds the wrapped `AutoModel*`
as a registered submodule named by the base architecture's own `base_model_prefix` (`bert`, `transformer`,
`model`, ...), and takes that prefix as its own. Keys are `<prefix>.<base key>`, plus the source tables,
projections and mixer under the embedding module; so a fused checkpoint relates to another task's as a
base checkpoint relates to its heads, and transformers' own prefix handling does cross-class loading.
Whatever PEFT, Accelerate or a user swaps in on the base model is what runs, because the base model's
own `forward` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.utils import logging

from .configuration_embfuse import EmbFuseConfig

logger = logging.get_logger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 for half-precision tensors (whose sums overflow or lose digits), float64 kept as is."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


class SourceProjection(nn.Linear):
    """Linear map of one source's rows into the base embedding space; computed in fp32 (or float64)."""

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(rows, self.weight)
        return F.linear(rows.to(dtype), self.weight.to(dtype), self.bias.to(dtype))

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        self.weight.zero_()
        size = min(self.weight.shape)
        self.weight[:size, :size] = torch.eye(size, dtype=self.weight.dtype, device=self.weight.device)
        self.bias.zero_()


class Mixer(nn.Module):
    """The mixing parameters, in one small module so PEFT's `modules_to_save=["mixer"]` keeps adapters small.

    `logits` holds one score per source (the seed's ω before the softmax); `gate` (gated mode only) scores
    each projected vector, so the weights depend on the token but on nothing else. The mode is fixed when
    the mixer is built (it decides whether `gate` exists); the fixed weights and the temperature belong to
    the config and are passed in on every call, so the mixer holds no copy of them that could go stale
    (PEFT's `modules_to_save` deep-copies this module).

    The `fixed_weights` buffer keeps its place in the checkpoint for older readers and the format-1
    upgrade, but nothing reads it at run time: `MultiSourceEmbedding` writes the config's weights into it
    whenever it is saved, and a value loaded from a file is ignored.
    """

    def __init__(self, config: EmbFuseConfig, embedding_dim: int) -> None:
        super().__init__()
        self.mode = config.mixing
        num_sources = config.num_sources
        weights = torch.tensor(_fixed_weights(config), dtype=torch.float32)
        self.register_buffer("fixed_weights", weights, persistent=True)
        # The initial logits reproduce the initial weights through the softmax at the initial temperature.
        self.logits = nn.Parameter(torch.log(weights.clamp_min(1e-6)) * float(config.mixing_temperature))
        self.gate = nn.Parameter(torch.zeros(num_sources, embedding_dim)) if self.mode == "gated" else None

    def forward(
        self,
        projected: torch.Tensor,
        coverage: torch.Tensor,
        fixed_weights: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Mixing weights `(N, K)` for projected vectors `(N, K, d)` and their coverage `(N, K)`.

        `fixed_weights` `(K,)` is required in fixed mode; `temperature` divides the logits otherwise.
        """
        covered_any = coverage.any(dim=-1, keepdim=True)
        if self.mode == "fixed":
            if fixed_weights is None:
                raise ValueError(
                    "Fixed mixing needs `fixed_weights`: one weight per source, >= 0, summing to 1."
                )
            # Applied as given (renormalised over the covering sources), never via a softmax, so that
            # [1, 0, ...] reproduces the base exactly.
            weights = fixed_weights.to(projected.device, projected.dtype) * coverage
            total = weights.sum(dim=-1, keepdim=True)
            # A token covered only by zero-weight sources falls back to a plain average of those sources.
            uniform = coverage / coverage.sum(dim=-1, keepdim=True).clamp_min(1)
            return torch.where(total > 0, weights / total.clamp_min(1e-30), uniform)
        scores = self.logits.to(projected.dtype).expand(coverage.shape)
        if self.gate is not None:
            scores = scores + torch.einsum("nkd,kd->nk", projected, self.gate.to(projected.dtype))
        # Extreme logits over a small temperature overflow to ±inf, and inf - inf is NaN in the softmax.
        largest = torch.finfo(scores.dtype).max
        scores = (scores / temperature).clamp(-largest, largest).masked_fill(~coverage, float("-inf"))
        # Rows no source covers would be all -inf; give them zero weights instead of NaN.
        weights = torch.softmax(scores.masked_fill(~covered_any, 0.0), dim=-1)
        return weights * covered_any


def _fixed_weights(config: EmbFuseConfig) -> list[float]:
    """The config's fixed (or initial) mixing weights, uniform when unset; checked against the sources."""
    num_sources = config.num_sources
    weights = config.fixed_weights
    if weights is None:
        return [1.0 / num_sources] * num_sources
    if len(weights) != num_sources:
        raise ValueError(
            f"`config.fixed_weights` has {len(weights)} values for {num_sources} sources; give one per source."
        )
    return [float(weight) for weight in weights]


class MultiSourceEmbedding(nn.Module):
    """Input embedding that mixes K token-aligned tables: `e(t) = scale · Σ_i α_i(t) · P_i(A_i[t])`.

    Source 0 is the base model's own table, stored as `weight` so that tied LM heads and HF code that
    reads `get_input_embeddings().weight` keep working. Sources 1..K-1 are `(V, d_i)` tables in
    `source_tables`, mapped by `projections` into the base width. `coverage[t, i]` says whether source
    i has token t; a source that lacks a token drops out of that token's softmax. Forward gathers only
    the rows of the ids in the batch.
    """

    def __init__(
        self,
        config: EmbFuseConfig,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        base_weight: nn.Parameter | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        # The config is read on every call (scale, fixed weights, temperature, regulariser): one owner, so
        # setting `model.config.regularizer` or loading with `fixed_weights=` changes what runs.
        self.config = config
        if base_weight is None:
            base_weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
            nn.init.normal_(base_weight, std=0.02)
        self.weight = base_weight
        source_dtype = _DTYPES[config.source_dtype]
        tables, projections = [], []
        for index, source in enumerate(config.sources[1:], start=1):
            width = source["width"]
            if source["projection"] == "identity" and width != embedding_dim:
                raise ValueError(
                    f"Source {index} ({source.get('name', '?')!r}) has width {width} but the base embedding has "
                    f"width {embedding_dim}, and its projection is 'identity'. Use projection='linear'."
                )
            tables.append(nn.Parameter(torch.zeros(num_embeddings, width, dtype=source_dtype)))
            if source["projection"] == "identity":
                projections.append(nn.Identity())
            else:
                projection = SourceProjection(width, embedding_dim)
                projection.reset_to_identity()
                projections.append(projection)
        self.source_tables = nn.ParameterList(tables)
        self.projections = nn.ModuleList(projections)
        coverage = torch.zeros(num_embeddings, config.num_sources, dtype=torch.bool)
        coverage[:, 0] = True
        self.register_buffer("coverage", coverage, persistent=True)
        self.mixer = Mixer(config, embedding_dim)
        self.apply_trainability(config)
        self._register_state_dict_hook(_save_configs_fixed_weights)
        # Values come from this constructor, the sources or a checkpoint: the base model's `_init_weights`
        # (which transformers dispatches to everything under the base) must not re-initialise them.
        for module in self.modules():
            module._is_hf_initialized = True

    def apply_trainability(self, config: EmbFuseConfig) -> None:
        """Freeze or unfreeze sources, projections and mixer as the config says (the base table is left alone)."""
        for table in self.source_tables:
            table.requires_grad_(config.train_sources)
        self.projections.requires_grad_(config.train_projections)
        self.mixer.logits.requires_grad_(config.mixing != "fixed")
        if self.mixer.gate is not None:
            self.mixer.gate.requires_grad_(True)

    @property
    def num_sources(self) -> int:
        return 1 + len(self.source_tables)

    @property
    def embed_scale(self) -> float:
        return float(self.config.embed_scale)

    def _fixed_weights_tensor(self) -> torch.Tensor:
        return torch.tensor(_fixed_weights(self.config), dtype=torch.float32, device=self.weight.device)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, sources={self.num_sources}, mixing={self.mixer.mode!r}"

    def _projected(self, ids: torch.Tensor) -> torch.Tensor:
        """`(N, K, d)` in fp32 (float64 for a float64 module): every source's row for each id, in the base space."""
        dtype = _compute_dtype(self.weight)
        vectors = [F.embedding(ids, self.weight, self.padding_idx).to(dtype)]
        with torch.autocast(device_type=ids.device.type, enabled=False):
            for table, projection in zip(self.source_tables, self.projections, strict=True):
                rows = F.embedding(ids, table)
                vectors.append(projection(rows.to(_compute_dtype(rows))).to(dtype))
        return torch.stack(vectors, dim=1)

    def mix(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fused vectors `(N, d)` in fp32, mixing weights `(N, K)` and projected vectors for 1-D `ids`."""
        projected = self._projected(ids)
        fixed = self._fixed_weights_tensor() if self.mixer.mode == "fixed" else None
        temperature = float(self.config.mixing_temperature)
        weights = self.mixer(projected, self.coverage[ids], fixed_weights=fixed, temperature=temperature)
        fused = torch.einsum("nk,nkd->nd", weights, projected) if self.num_sources > 1 else projected[:, 0]
        return fused * self.embed_scale, weights, projected

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Every quantity depends on the token id only, so compute it once per distinct id in the batch.
        unique_ids, inverse = torch.unique(input_ids.reshape(-1), return_inverse=True)
        fused = self.mix(unique_ids)[0].to(self.weight.dtype)[inverse]
        return fused.view(*input_ids.shape, self.embedding_dim)

    def regularization(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Ω over the distinct ids of a batch (`None` when the config asks for no regulariser).

        The wrapper adds `reg_lambda · Ω` to the loss. Computed from the ids, not kept from `forward`: a
        module that remembers its last call breaks under gradient checkpointing and re-entrant calls.
        """
        regularizer = self.config.regularizer
        if regularizer == "none":
            return None
        fused, weights, projected = self.mix(torch.unique(input_ids))
        if regularizer == "anchor":
            return (fused - projected[:, 0] * self.embed_scale).pow(2).mean()
        if regularizer == "entropy":  # low when each token relies on few sources
            return -(weights * weights.clamp_min(1e-12).log()).sum(dim=-1).mean()
        raise ValueError(
            f"`config.regularizer` must be one of 'none', 'anchor', 'entropy'; got {regularizer!r}."
        )

    @torch.no_grad()
    def fused_weight(self, chunk_size: int = 16384) -> torch.Tensor:
        """The full `(V, d)` fused matrix (every mode: the weights depend on the token id only)."""
        device = self.weight.device
        chunks = [
            self.mix(torch.arange(start, min(start + chunk_size, self.num_embeddings), device=device))[0]
            for start in range(0, self.num_embeddings, chunk_size)
        ]
        return torch.cat(chunks).to(self.weight.dtype)

    @torch.no_grad()
    def mean_mixing_weights(self, chunk_size: int = 16384) -> torch.Tensor:
        """Each source's mixing weight averaged over the vocabulary, `(K,)`."""
        total = torch.zeros(self.num_sources, device=self.weight.device)
        for start in range(0, self.num_embeddings, chunk_size):
            ids = torch.arange(start, min(start + chunk_size, self.num_embeddings), device=self.weight.device)
            total += self.mix(ids)[1].sum(dim=0)
        return total / self.num_embeddings

    @torch.no_grad()
    def resize_rows(self, new_num_embeddings: int, new_base_rows: torch.Tensor | None = None) -> None:
        """Grow or shrink the vocabulary; new rows are covered by the base table only.

        Args:
            new_num_embeddings: the new vocabulary size.
            new_base_rows: the base table's new rows, `(new - old, d)`; the mean of the old rows when `None`.
        """
        old = self.num_embeddings
        keep = min(old, new_num_embeddings)
        extra = new_num_embeddings - keep

        def resized(tensor: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor[:keep], fill.expand(extra, *tensor.shape[1:]).to(tensor.dtype)])

        if new_base_rows is None:
            new_base_rows = self.weight[:old].float().mean(dim=0)
        elif tuple(new_base_rows.shape) != (extra, self.embedding_dim):
            raise ValueError(
                f"`new_base_rows` has shape {tuple(new_base_rows.shape)}; expected ({extra}, {self.embedding_dim})."
            )
        self.weight = nn.Parameter(
            resized(self.weight.data, new_base_rows.to(self.weight.device)),
            requires_grad=self.weight.requires_grad,
        )
        for index, table in enumerate(self.source_tables):
            zeros = torch.zeros(table.shape[1], device=table.device)
            self.source_tables[index] = nn.Parameter(
                resized(table.data, zeros), requires_grad=table.requires_grad
            )
        base_only = torch.zeros(self.num_sources, dtype=torch.bool, device=self.coverage.device)
        base_only[0] = True
        self.coverage = resized(self.coverage, base_only)
        self.num_embeddings = new_num_embeddings


def _save_configs_fixed_weights(
    module: MultiSourceEmbedding, state_dict: dict[str, torch.Tensor], prefix: str, local_metadata: Any
) -> None:
    """State-dict hook: the saved `mixer.fixed_weights` is the config's, the one value the model runs."""
    key = f"{prefix}mixer.fixed_weights"
    if key in state_dict:
        saved = state_dict[key]
        state_dict[key] = torch.tensor(_fixed_weights(module.config), dtype=saved.dtype, device=saved.device)


class _FromBaseClass:
    """A class attribute that HF machinery reads on a model, answered with the wrapped base class's value.

    Attention support, gradient checkpointing and the base-model prefix are properties of the base
    architecture, so the wrapper reports the base's own instead of hard-coding them. Read on the class
    (no config to tell the base), it gives transformers' default.
    """

    def __init__(self, default: Any) -> None:
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, model: EmbFusePreTrainedModel | None, owner: type | None = None) -> Any:
        base_class = None if model is None else model._base_class()
        return self.default if base_class is None else getattr(base_class, self.name, self.default)


class EmbFusePreTrainedModel(PreTrainedModel):
    """Base class of the EmbFuse wrappers: holds an `AutoModel*` whose input embedding is a `MultiSourceEmbedding`.

    Args:
        config: the EmbFuse config; `config.base_config` describes the wrapped model.
        base_model: an already built (e.g. pretrained) model of the task's class to wrap in place, as
            `EncoderDecoderModel(encoder=..., decoder=...)` takes its parts; built from the config when `None`.
    """

    config_class = EmbFuseConfig
    base_model_prefix = _FromBaseClass("")
    supports_gradient_checkpointing = _FromBaseClass(False)
    _supports_sdpa = _FromBaseClass(False)
    _supports_flash_attn = _FromBaseClass(False)
    _supports_flex_attn = _FromBaseClass(False)
    _supports_attention_backend = _FromBaseClass(False)
    _can_compile_fullgraph = False  # the fused embedding gathers the batch's distinct ids (dynamic shapes)
    # Added to the base's own, which post_init collects from the submodule: the source tables and the
    # mixer must sit on one device.
    _no_split_modules = ["MultiSourceEmbedding"]

    def __init__(self, config: EmbFuseConfig, base_model: PreTrainedModel | None = None) -> None:
        if config.base_config is None:
            raise ValueError(
                f"{type(self).__name__} needs `config.base_config`, the wrapped model's config. Build models with "
                "`hf_embfuse.from_base(...)` or `hf_embfuse.fuse(...)`, or pass `EmbFuseConfig(base_config=...)`."
            )
        super().__init__(config)
        if base_model is None:
            base_model = task_of(type(self)).auto_class.from_config(config.base_config)
        config.base_config = base_model.config
        old = base_model.get_input_embeddings()
        if isinstance(old, MultiSourceEmbedding):
            raise ValueError("The base model already has a MultiSourceEmbedding; wrap a plain base model.")
        if not hasattr(old, "weight") or old.weight.ndim != 2:
            raise ValueError(f"The base model's input embedding ({type(old).__name__}) has no 2-D `weight`.")
        base_model.set_input_embeddings(
            MultiSourceEmbedding(
                config,
                num_embeddings=old.weight.shape[0],
                embedding_dim=old.weight.shape[1],
                padding_idx=getattr(old, "padding_idx", None),
                base_weight=old.weight,
            )
        )
        self.add_module(self.base_model_prefix, base_model)
        self.post_init()

    def _base_class(self) -> type[PreTrainedModel] | None:
        """The transformers class this wrapper wraps, from the task's Auto class and the base config."""
        config = self.__dict__.get("config")
        base_config = getattr(config, "base_config", None)
        if base_config is None:
            return None
        try:
            classes = task_of(type(self)).auto_class._model_mapping[type(base_config)]
        except (KeyError, ValueError):
            return None  # not a task wrapper, or an architecture transformers has no such class for
        return classes[0] if isinstance(classes, (list, tuple)) else classes

    def _wrapped_model(self) -> PreTrainedModel | None:
        """The base model submodule, or `None` while `__init__` has not added it yet."""
        return self.__dict__.get("_modules", {}).get(self.base_model_prefix)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # Loading makes every parameter trainable; the config remembers which fused parts are frozen.
        embedding = model.get_input_embeddings()
        if isinstance(embedding, MultiSourceEmbedding):
            embedding.apply_trainability(model.config)
            buffer = embedding.mixer.fixed_weights
            if not buffer.is_meta:
                # The file's copy is ignored (the config owns the weights); show the config's in memory too.
                with torch.no_grad():
                    buffer.copy_(torch.tensor(_fixed_weights(embedding.config)))
        return loaded

    def __getattr__(self, name: str) -> Any:
        # PEFT's idiom for a wrapper: an attribute the wrapper lacks is the wrapped model's
        # (`model.classifier`, `model.lm_head`, `model.num_labels`, ...).
        try:
            return super().__getattr__(name)
        except AttributeError:
            base_model = self._wrapped_model()
            if base_model is None:
                raise
            return getattr(base_model, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # `model.classifier = nn.Linear(...)` replaces the head the base model's forward runs, not a
        # new, unused child of the wrapper.
        base_model = self._wrapped_model()
        if isinstance(value, nn.Module) and base_model is not None and name in base_model._modules:
            setattr(base_model, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def embfuse_embedding(self) -> MultiSourceEmbedding:
        return self.get_input_embeddings()

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.base_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.base_model.set_output_embeddings(value)

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Module:
        """Resize the vocabulary. New rows are covered by the base table only; every source drops out there.

        The base table's new rows are the mean of its old rows with `mean_resizing=True`, else initialised as
        the base model initialises an embedding (`_init_weights`), as transformers does.
        """
        embedding = self.embfuse_embedding
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embedding
        new_num_tokens = embedding.num_embeddings if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        output = self.get_output_embeddings()
        tied = output is not None and output.weight is embedding.weight
        new_base_rows = None
        if not mean_resizing and new_num_tokens > embedding.num_embeddings:
            fresh = nn.Embedding(
                new_num_tokens - embedding.num_embeddings,
                embedding.embedding_dim,
                device=embedding.weight.device,
                dtype=embedding.weight.dtype,
            )
            self.base_model._init_weights(fresh)
            new_base_rows = fresh.weight.data
        embedding.resize_rows(new_num_tokens, new_base_rows)
        if output is not None and not tied:
            self.set_output_embeddings(
                self.base_model._get_resized_lm_head(output, new_num_tokens, mean_resizing=mean_resizing)
            )
        self.config.base_config.get_text_config().vocab_size = new_num_tokens
        self.tie_weights()
        return embedding

    def forward(self, **inputs: Any) -> Any:
        return_dict = inputs.pop("return_dict", None)
        inputs = {key: value for key, value in inputs.items() if value is not None}
        outputs = self.base_model(**inputs, return_dict=True)
        embedding = self.get_input_embeddings()
        regularization = None
        # A module swapped in for the fused embedding (by a user or a library) has no regulariser.
        regularizable = callable(getattr(embedding, "regularization", None))
        if regularizable and inputs.get("labels") is not None and inputs.get("input_ids") is not None:
            regularization = embedding.regularization(inputs["input_ids"])
        if regularization is not None and outputs.get("loss") is not None:
            outputs["loss"] = outputs["loss"] + self.config.reg_lambda * regularization
        if return_dict is False:
            return outputs.to_tuple()  # what the base model returns, with λ·Ω in the loss
        if regularization is not None:
            outputs["regularization_loss"] = regularization
        return outputs

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        # One folder serves every Auto class: list all wrappers, not only the saved one.
        if self._auto_class is not None:
            self.config.auto_map = {
                "AutoConfig": "configuration_embfuse.EmbFuseConfig",
                **{task.auto_class.__name__: f"modeling_embfuse.{task.wrapper}" for task in TASKS},
            }
        return super().save_pretrained(*args, **kwargs)


class EmbFuseModel(EmbFusePreTrainedModel):
    """Bare base model (`AutoModel`) with a fused input embedding."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        return super().forward(**_explicit(locals()), **kwargs)


class _EncoderTaskModel(EmbFusePreTrainedModel):
    """The forward signature shared by the encoder task heads (explicit, so the Trainer keeps `labels`)."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        return super().forward(**_explicit(locals()), **kwargs)


class _ClassifierModel(_EncoderTaskModel):
    @property
    def num_labels(self) -> int:
        """The classes of the wrapped head (`BertForSequenceClassification.num_labels`, ...)."""
        return self.base_model.num_labels


class EmbFuseForSequenceClassification(_ClassifierModel):
    """`AutoModelForSequenceClassification` with a fused input embedding; adds λ·Ω to the loss."""


class EmbFuseForTokenClassification(_ClassifierModel):
    """`AutoModelForTokenClassification` with a fused input embedding; adds λ·Ω to the loss."""


class EmbFuseForMaskedLM(_EncoderTaskModel):
    """`AutoModelForMaskedLM` with a fused input embedding; the LM head keeps the base's (tied) table."""


class EmbFuseForCausalLM(EmbFusePreTrainedModel, GenerationMixin):
    """`AutoModelForCausalLM` with a fused input embedding; `generate()` and KV caches work as for the base.

    A tied LM head stays tied to the base table (source 0): the model still predicts the base vocabulary
    from the base's output space, while its inputs are fused.
    """

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        return super().forward(**_explicit(locals()), **kwargs)


def _explicit(arguments: dict[str, Any]) -> dict[str, Any]:
    """The named arguments of a wrapper's `forward` (its `locals()`), minus `self`, `kwargs` and `__class__`."""
    return {key: value for key, value in arguments.items() if key not in ("self", "kwargs", "__class__")}


@dataclass(frozen=True)
class EmbFuseTask:
    """One task, the one place that says how it is named, built, loaded, tagged and adapted.

    Args:
        name: the task's name in recipes and `hf_embfuse.fuse(task=...)`.
        wrapper: the EmbFuse class name in this file.
        auto_class: the transformers Auto class of the wrapped model (and of the wrapper, with remote code).
        pipeline_tag: the Hub pipeline tag (and `transformers.pipeline` task) of such a checkpoint.
        peft_task_type: PEFT's `TaskType` name for LoRA on it.
    """

    name: str
    wrapper: str
    auto_class: type
    pipeline_tag: str
    peft_task_type: str


TASKS = (
    EmbFuseTask("base", "EmbFuseModel", AutoModel, "feature-extraction", "FEATURE_EXTRACTION"),
    EmbFuseTask(
        "sequence-classification",
        "EmbFuseForSequenceClassification",
        AutoModelForSequenceClassification,
        "text-classification",
        "SEQ_CLS",
    ),
    EmbFuseTask(
        "token-classification",
        "EmbFuseForTokenClassification",
        AutoModelForTokenClassification,
        "token-classification",
        "TOKEN_CLS",
    ),
    EmbFuseTask("masked-lm", "EmbFuseForMaskedLM", AutoModelForMaskedLM, "fill-mask", "FEATURE_EXTRACTION"),
    EmbFuseTask("causal-lm", "EmbFuseForCausalLM", AutoModelForCausalLM, "text-generation", "CAUSAL_LM"),
)


def task_of(wrapper: type | str) -> EmbFuseTask:
    """The task of a wrapper class (or a subclass), or of its name.

    Matched by name: the same wrapper loaded from a checkpoint's own code is another class object.
    """
    names = [wrapper] if isinstance(wrapper, str) else [cls.__name__ for cls in wrapper.__mro__]
    for name in names:
        for task in TASKS:
            if task.wrapper == name:
                return task
    expected = ", ".join(task.wrapper for task in TASKS)
    raise ValueError(f"{names[0]!r} is not an EmbFuse wrapper; expected one of {expected}.")


__all__ = [
    "TASKS",
    "EmbFuseForCausalLM",
    "EmbFuseForMaskedLM",
    "EmbFuseForSequenceClassification",
    "EmbFuseForTokenClassification",
    "EmbFuseModel",
    "EmbFusePreTrainedModel",
    "EmbFuseTask",
    "Mixer",
    "MultiSourceEmbedding",
    "SourceProjection",
    "task_of",
]
