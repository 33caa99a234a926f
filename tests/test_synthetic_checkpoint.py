"""benchmarks/synthetic_checkpoint.py: a random bf16 checkpoint of a given shape that transformers loads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_embfuse.checkpoint_stream import stored_tensors
from tests.fixtures_tokenizers import make_bpe_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from synthetic_checkpoint import STD, Shape, write_synthetic_checkpoint


@pytest.mark.parametrize(
    "shape",
    [Shape(64, 2, 96, 4, 2, tied=True), Shape(64, 2, 96, 4, 2, tied=False, architecture="qwen2")],
    ids=["llama-tied", "qwen2-untied"],
)
def test_synthetic_checkpoint_loads_in_bf16_with_its_tokenizer(tmp_path, shape):
    tokenizer = make_bpe_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    out = write_synthetic_checkpoint(tmp_path / "body", shape, tmp_path / "tokenizer", max_shard_size="40KB")

    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()
    stored = stored_tensors(out)
    assert {tensor.dtype for tensor in stored.values()} == {"BF16"}
    assert ("lm_head.weight" in stored) is not shape.tied
    assert ("model.layers.0.self_attn.q_proj.bias" in stored) is (shape.architecture == "qwen2")
    model = AutoModelForCausalLM.from_pretrained(out)  # dtype from config.json
    assert model.dtype == torch.bfloat16 and type(model).__name__.lower().startswith(shape.architecture)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), shape.hidden)
    assert torch.equal(model.model.norm.weight, torch.ones(shape.hidden, dtype=torch.bfloat16))
    std = model.model.layers[1].mlp.down_proj.weight.float().std().item()
    assert abs(std - STD) < 0.1 * STD
    if shape.tied:
        assert model.lm_head.weight is model.get_input_embeddings().weight
    # Reproducible: the same seed writes the same bytes.
    again = write_synthetic_checkpoint(
        tmp_path / "again", shape, tmp_path / "tokenizer", max_shard_size="40KB"
    )
    for path in sorted(out.glob("*.safetensors")):
        assert path.read_bytes() == (again / path.name).read_bytes()
