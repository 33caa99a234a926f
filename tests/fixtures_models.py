"""Tiny random base models of several architectures, and EmbFuse models built on them.

Every model here has hidden size 32 and two layers: fast on one CPU thread, yet a real
transformers architecture (BERT-like encoder, GPT-2-like decoder with a tied head, Llama-like decoder).
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
)

from hf_embfuse import SourceSpec
from hf_embfuse.modeling_embfuse import TASKS
from hf_embfuse.wrap import from_base, wrapper_class

VOCAB = 97
HIDDEN = 32

# The library's own task table: task name -> EmbFuse wrapper, and -> the Auto class it wraps.
TASK_EMBFUSE_CLASSES = {task.name: wrapper_class(task) for task in TASKS}
TASK_AUTO_CLASSES = {task.name: task.auto_class for task in TASKS}


def tiny_config(arch: str, vocab_size: int = VOCAB):
    if arch == "bert":
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=HIDDEN,
            n_layer=2,
            n_head=2,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=True,
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}")


def tiny_base(arch: str, task: str = "base", seed: int = 0, vocab_size: int = VOCAB) -> PreTrainedModel:
    """A randomly initialised tiny base model in eval mode."""
    torch.manual_seed(seed)
    config = tiny_config(arch, vocab_size)
    if task in ("sequence-classification", "token-classification"):
        config.num_labels = 3
    return TASK_AUTO_CLASSES[task].from_config(config).eval()


def random_sources(num_rows: int, widths: tuple[int, ...] = (16, HIDDEN), seed: int = 1) -> list[SourceSpec]:
    """Aligned random source tables; source i covers a different random ~70% of the rows."""
    generator = torch.Generator().manual_seed(seed)
    return [
        SourceSpec(
            table=torch.randn(num_rows, width, generator=generator),
            coverage=torch.rand(num_rows, generator=generator) > 0.3,
            info={"name": f"random-{index}", "kind": "test"},
        )
        for index, width in enumerate(widths)
    ]


def tiny_fused(arch: str, task: str = "base", mixing: str = "learned", seed: int = 0, **kwargs):
    """A tiny EmbFuse model over `tiny_base(arch, task)` with two random sources (widths 16 and 32)."""
    base = tiny_base(arch, task, seed=seed)
    sources = random_sources(base.get_input_embeddings().weight.shape[0], seed=seed + 1)
    if mixing == "fixed":
        kwargs.setdefault("fixed_weights", [0.5, 0.25, 0.25])
    return from_base(base, sources, task=task, mixing=mixing, **kwargs).eval()


@pytest.fixture(params=["bert", "gpt2", "llama"])
def arch(request) -> str:
    return request.param
