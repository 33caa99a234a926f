"""EmbFuse models: a base transformers model whose input embedding mixes several token-aligned tables.

This file is copied into every saved checkpoint and runs under `trust_remote_code`: it imports only
`torch`, `transformers`, the standard library and `configuration_embfuse`.

Layout. An `EmbFuse*` model *adopts* the submodules of the wrapped `AutoModel*` instead of nesting it,
so its parameter names are exactly the base model's (`bert.embeddings.word_embeddings.weight`, ...),
plus the source tables, projections and mixer under the embedding module. Hence base-model prefixes,
tied LM heads and cross-class loading work as they do for the base architecture, and baking is a
matter of replacing one tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

# HF attributes that describe the wrapped architecture; mirrored on the wrapper so that loading,
# tying, device maps and caches behave as they do for the base model.
_MIRRORED_ATTRIBUTES = (
    "base_model_prefix",
    "main_input_name",
    "_no_split_modules",
    "_skip_keys_device_placement",
    "_keep_in_fp32_modules",
    "_keep_in_fp32_modules_strict",
    "_keys_to_ignore_on_load_missing",
    "_keys_to_ignore_on_load_unexpected",
    "_keys_to_ignore_on_save",
    "_is_stateful",
)


@dataclass
class SourceSpec:
    """One source table, already aligned to the base vocabulary, for `EmbFuse*.from_base`.

    Args:
        table: `(V_base, d_i)` rows indexed by *base* token id.
        coverage: `(V_base,)` bool, which rows this source has; all rows when `None`.
        projection: `"identity"` (needs `d_i` equal to the base width), `"linear"`, or `"auto"`
            (identity at equal width unless an initial map is given, else linear).
        projection_weight: initial `(d_base, d_i)` map into the base space (identity-like when `None`).
        projection_bias: initial `(d_base,)` bias (zero when `None`).
        info: provenance kept in the config (`name`, `kind`, `revision`, `alignment`, ...).
    """

    table: torch.Tensor
    coverage: torch.Tensor | None = None
    projection: str = "auto"
    projection_weight: torch.Tensor | None = None
    projection_bias: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


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
    each projected vector, so the weights depend on the token but on nothing else.
    """

    def __init__(self, config: EmbFuseConfig, embedding_dim: int) -> None:
        super().__init__()
        self.mode = config.mixing
        self.temperature = float(config.mixing_temperature)
        num_sources = config.num_sources
        weights = config.fixed_weights or [1.0 / num_sources] * num_sources
        weights = torch.tensor(weights, dtype=torch.float32)
        # Fixed weights are applied as given (renormalised over the covering sources), never via a softmax,
        # so that [1, 0, ...] reproduces the base exactly.
        self.register_buffer("fixed_weights", weights, persistent=True)
        self.logits = nn.Parameter(torch.log(weights.clamp_min(1e-6)) * self.temperature)
        self.gate = nn.Parameter(torch.zeros(num_sources, embedding_dim)) if self.mode == "gated" else None

    def forward(self, projected: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
        """Mixing weights `(N, K)` for projected vectors `(N, K, d)` and their coverage `(N, K)`."""
        covered_any = coverage.any(dim=-1, keepdim=True)
        if self.mode == "fixed":
            weights = self.fixed_weights.to(projected.device, projected.dtype) * coverage
            total = weights.sum(dim=-1, keepdim=True)
            # A token covered only by zero-weight sources falls back to a plain average of those sources.
            uniform = coverage / coverage.sum(dim=-1, keepdim=True).clamp_min(1)
            return torch.where(total > 0, weights / total.clamp_min(1e-30), uniform)
        scores = self.logits.to(projected.dtype).expand(coverage.shape)
        if self.gate is not None:
            scores = scores + torch.einsum("nkd,kd->nk", projected, self.gate.to(projected.dtype))
        # Extreme logits over a small temperature overflow to ±inf, and inf - inf is NaN in the softmax.
        largest = torch.finfo(scores.dtype).max
        scores = (scores / self.temperature).clamp(-largest, largest).masked_fill(~coverage, float("-inf"))
        # Rows no source covers would be all -inf; give them zero weights instead of NaN.
        weights = torch.softmax(scores.masked_fill(~covered_any, 0.0), dim=-1)
        return weights * covered_any


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
        self.embed_scale = float(config.embed_scale)
        self.regularizer = config.regularizer
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
        self.last_regularization: torch.Tensor | None = None
        self.apply_trainability(config)

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
        weights = self.mixer(projected, self.coverage[ids])
        fused = torch.einsum("nk,nkd->nd", weights, projected) if self.num_sources > 1 else projected[:, 0]
        return fused * self.embed_scale, weights, projected

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Every quantity depends on the token id only, so compute it once per distinct id in the batch.
        unique_ids, inverse = torch.unique(input_ids.reshape(-1), return_inverse=True)
        fused, weights, projected = self.mix(unique_ids)
        if self.regularizer != "none":
            self.last_regularization = self._regularization(fused, weights, projected)
        out = fused.to(self.weight.dtype)[inverse]
        return out.view(*input_ids.shape, self.embedding_dim)

    def _regularization(
        self, fused: torch.Tensor, weights: torch.Tensor, projected: torch.Tensor
    ) -> torch.Tensor:
        if self.regularizer == "anchor":
            return (fused - projected[:, 0] * self.embed_scale).pow(2).mean()
        # entropy: low when each token relies on few sources
        return -(weights * weights.clamp_min(1e-12).log()).sum(dim=-1).mean()

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
    def resize_rows(self, new_num_embeddings: int) -> None:
        """Grow or shrink the vocabulary; new rows are covered by the base table only (mean-initialised)."""
        old = self.num_embeddings
        keep = min(old, new_num_embeddings)
        extra = new_num_embeddings - keep

        def resized(tensor: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor[:keep], fill.expand(extra, *tensor.shape[1:]).to(tensor.dtype)])

        base_mean = self.weight[:old].float().mean(dim=0)
        self.weight = nn.Parameter(
            resized(self.weight.data, base_mean), requires_grad=self.weight.requires_grad
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


_TASK_AUTO_CLASSES = {
    "EmbFuseModel": AutoModel,
    "EmbFuseForSequenceClassification": AutoModelForSequenceClassification,
    "EmbFuseForTokenClassification": AutoModelForTokenClassification,
    "EmbFuseForMaskedLM": AutoModelForMaskedLM,
    "EmbFuseForCausalLM": AutoModelForCausalLM,
}


class EmbFusePreTrainedModel(PreTrainedModel):
    """Base class of the EmbFuse wrappers: adopts an `AutoModel*` and swaps in a `MultiSourceEmbedding`."""

    config_class = EmbFuseConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def __init__(
        self,
        config: EmbFuseConfig,
        base_model: PreTrainedModel | None = None,
        sources: list[SourceSpec] | None = None,
    ) -> None:
        super().__init__(config)
        if config.base_config is None:
            raise ValueError(
                f"{type(self).__name__} needs `config.base_config`, the wrapped model's config. Build models with "
                "`EmbFuse*.from_base(...)` or `hf_embfuse.fuse(...)`, or pass `EmbFuseConfig(base_config=...)`."
            )
        inner = base_model
        if inner is None:
            inner = _TASK_AUTO_CLASSES[type(self).__name__].from_config(config.base_config)
        config.base_config = inner.config
        object.__setattr__(self, "_inner", inner)  # not a submodule: its children are adopted below
        old = inner.get_input_embeddings()
        if isinstance(old, MultiSourceEmbedding):
            raise ValueError("The base model already has a MultiSourceEmbedding; wrap a plain base model.")
        if not hasattr(old, "weight") or old.weight.ndim != 2:
            raise ValueError(f"The base model's input embedding ({type(old).__name__}) has no 2-D `weight`.")
        embedding = MultiSourceEmbedding(
            config,
            num_embeddings=old.weight.shape[0],
            embedding_dim=old.weight.shape[1],
            padding_idx=getattr(old, "padding_idx", None),
            base_weight=old.weight,
        )
        if sources is not None:
            _load_sources(embedding, sources)
        inner.set_input_embeddings(embedding)
        self._adopt_children()
        for name in _MIRRORED_ATTRIBUTES:
            if getattr(inner, name, None) is not None:
                setattr(self, name, getattr(inner, name))
        self._no_split_modules = [*(inner._no_split_modules or []), "MultiSourceEmbedding"]
        tied = getattr(inner, "all_tied_weights_keys", None) or {}
        self._tied_weights_keys = dict(tied) or None
        if base_model is not None:
            # Everything is given (pretrained base, aligned sources): initialisation must not touch it.
            for module in self.modules():
                module._is_hf_initialized = True
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        model = super().from_pretrained(*args, **kwargs)
        # Loading replaces parameters and forgets which were frozen; the config remembers.
        embedding = model.get_input_embeddings() if isinstance(model, EmbFusePreTrainedModel) else None
        if isinstance(embedding, MultiSourceEmbedding):
            embedding.apply_trainability(model.config)
        return model

    def _adopt_children(self) -> None:
        for name, child in self._inner.named_children():
            self.add_module(name, child)
        for name, param in self._inner.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in self._inner.named_buffers(recurse=False):
            self.register_buffer(name, buffer, persistent=name not in self._inner._non_persistent_buffers_set)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (MultiSourceEmbedding, Mixer, SourceProjection)):
            return  # initialised in their constructors; real values come from sources or checkpoints
        self._inner._init_weights(module)

    def train(self, mode: bool = True) -> EmbFusePreTrainedModel:
        super().train(mode)
        self._inner.training = mode
        return self

    @property
    def embfuse_embedding(self) -> MultiSourceEmbedding:
        return self.get_input_embeddings()

    def get_input_embeddings(self) -> nn.Module:
        return self._inner.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self._inner.set_input_embeddings(value)
        self._adopt_children()

    def get_output_embeddings(self) -> nn.Module | None:
        return self._inner.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self._inner.set_output_embeddings(value)
        self._adopt_children()

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Module:
        """Resize the vocabulary. New rows are covered by the base table only; every source drops out there."""
        embedding = self.embfuse_embedding
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embedding
        new_num_tokens = embedding.num_embeddings if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        output = self.get_output_embeddings()
        tied = output is not None and output.weight is embedding.weight
        embedding.resize_rows(new_num_tokens)
        if output is not None and not tied:
            self.set_output_embeddings(
                self._inner._get_resized_lm_head(output, new_num_tokens, mean_resizing=mean_resizing)
            )
        self.config.base_config.get_text_config().vocab_size = new_num_tokens
        self.tie_weights()
        return embedding

    def forward(self, **inputs: Any) -> Any:
        return_dict = inputs.pop("return_dict", None)
        inputs = {key: value for key, value in inputs.items() if value is not None}
        outputs = self._inner(**inputs, return_dict=True)
        regularization = self.embfuse_embedding.last_regularization
        self.embfuse_embedding.last_regularization = None
        if regularization is not None:
            outputs["regularization_loss"] = regularization
            if outputs.get("loss") is not None:
                outputs["loss"] = outputs["loss"] + self.config.reg_lambda * regularization
        return outputs if return_dict is not False else outputs.to_tuple()

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        # One folder serves every Auto class: list all wrappers, not only the saved one.
        if self._auto_class is not None:
            self.config.auto_map = {
                "AutoConfig": "configuration_embfuse.EmbFuseConfig",
                **{cls.__name__: f"modeling_embfuse.{name}" for name, cls in _TASK_AUTO_CLASSES.items()},
            }
        return super().save_pretrained(*args, **kwargs)

    @classmethod
    def from_base(
        cls,
        base_model_or_path: PreTrainedModel | str,
        sources: list[SourceSpec] | tuple[SourceSpec, ...] = (),
        *,
        mixing: str = "learned",
        base_model_kwargs: dict[str, Any] | None = None,
        **config_kwargs: Any,
    ) -> EmbFusePreTrainedModel:
        """Wrap a base model (or load it from `base_model_or_path`) and mix in already-aligned `sources`.

        The base model's own table becomes source 0 (identity map); `sources` follow in order. A model
        passed in is wrapped in place (its modules are reused, not copied). `config_kwargs` go to
        `EmbFuseConfig` (`fixed_weights`, `mixing_temperature`, `regularizer`, `reg_lambda`, ...).
        """
        base = base_model_or_path
        if isinstance(base, str):
            base = _TASK_AUTO_CLASSES[cls.__name__].from_pretrained(base, **(base_model_kwargs or {}))
        if not isinstance(base, PreTrainedModel):
            raise ValueError(
                f"`base_model_or_path` must be a PreTrainedModel or a path, got {type(base).__name__}."
            )
        old = base.get_input_embeddings()
        num_rows, width = old.weight.shape
        sources = list(sources)
        entries = [{"name": base.name_or_path or type(base).__name__, "kind": "base", "width": int(width)}]
        for index, spec in enumerate(sources, start=1):
            _validate_source(index, spec, num_rows, width)
            projection = spec.projection
            if projection == "auto":
                same_width = spec.table.shape[1] == width
                projection = "identity" if same_width and spec.projection_weight is None else "linear"
            entries.append({**spec.info, "width": int(spec.table.shape[1]), "projection": projection})
        entries[0]["projection"] = "identity"
        embed_scale = getattr(old, "embed_scale", 1.0)
        config_kwargs.setdefault("embed_scale", float(embed_scale))
        config_kwargs.setdefault("base_model_name_or_path", base.name_or_path or None)
        config = EmbFuseConfig(base_config=base.config, sources=entries, mixing=mixing, **config_kwargs)
        config.architectures = [cls.__name__]
        model = cls(config, base_model=base, sources=sources)
        return model.to(old.weight.device)


def _validate_source(index: int, spec: SourceSpec, num_rows: int, width: int) -> None:
    name = spec.info.get("name", f"source {index}")
    table = spec.table
    if not isinstance(table, torch.Tensor) or table.ndim != 2:
        raise ValueError(f"Source {index} ({name!r}): `table` must be a 2-D tensor (V_base, d).")
    if table.shape[0] != num_rows:
        raise ValueError(
            f"Source {index} ({name!r}) has {table.shape[0]} rows but the base embedding has {num_rows}. Align it "
            "to the base vocabulary first (`hf_embfuse.align_source` or `hf_embfuse.fuse`)."
        )
    bad_rows = (~torch.isfinite(table.float())).any(dim=1)
    if bad_rows.any():
        raise ValueError(
            f"Source {index} ({name!r}) has {int(bad_rows.sum())} rows with NaN/Inf (first: row "
            f"{int(bad_rows.nonzero()[0])}). Fix the table, or mark those rows uncovered and zero them."
        )
    if spec.coverage is not None and tuple(spec.coverage.shape) != (num_rows,):
        raise ValueError(f"Source {index} ({name!r}): `coverage` must have shape ({num_rows},).")
    if spec.projection not in ("auto", "identity", "linear"):
        raise ValueError(f"Source {index} ({name!r}): `projection` must be 'auto', 'identity' or 'linear'.")
    if spec.projection == "identity" and table.shape[1] != width:
        raise ValueError(
            f"Source {index} ({name!r}) has width {table.shape[1]} but the base has {width}, and its projection is "
            "'identity'. Use projection='linear' (or 'auto') to map it into the base space."
        )
    if spec.projection_weight is not None and tuple(spec.projection_weight.shape) != (width, table.shape[1]):
        raise ValueError(
            f"Source {index} ({name!r}): `projection_weight` must have shape ({width}, {table.shape[1]})."
        )


@torch.no_grad()
def _load_sources(embedding: MultiSourceEmbedding, sources: list[SourceSpec]) -> None:
    device = embedding.weight.device
    for index, spec in enumerate(sources, start=1):
        table = embedding.source_tables[index - 1]
        table.data = spec.table.detach().to(device=device, dtype=table.dtype, copy=True)
        if spec.coverage is not None:
            embedding.coverage[:, index] = spec.coverage.to(device=device, dtype=torch.bool)
        else:
            embedding.coverage[:, index] = True
        projection = embedding.projections[index - 1]
        if isinstance(projection, SourceProjection):
            if spec.projection_weight is not None:
                projection.weight.copy_(spec.projection_weight)
            if spec.projection_bias is not None:
                projection.bias.copy_(spec.projection_bias)
    if embedding.padding_idx is not None:
        # The padding row stays the base's (usually zero, gradient-free) row.
        embedding.coverage[embedding.padding_idx, 1:] = False


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


class EmbFuseForSequenceClassification(_EncoderTaskModel):
    """`AutoModelForSequenceClassification` with a fused input embedding; adds λ·Ω to the loss."""


class EmbFuseForTokenClassification(_EncoderTaskModel):
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


__all__ = [
    "EmbFuseForCausalLM",
    "EmbFuseForMaskedLM",
    "EmbFuseForSequenceClassification",
    "EmbFuseForTokenClassification",
    "EmbFuseModel",
    "EmbFusePreTrainedModel",
    "Mixer",
    "MultiSourceEmbedding",
    "SourceProjection",
    "SourceSpec",
]
