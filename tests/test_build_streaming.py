"""`build_to_folder` streams the base's body: only the tables it changes are read, every other tensor of the
output is the base's own, byte for byte and in its dtype, and memory grows with the tables, not the body."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

import hf_embfuse
from hf_embfuse.build import build_to_folder
from hf_embfuse.recipe import Recipe, SourceConfig, Transport, VocabularyConfig
from tests.fixtures_tokenizers import make_bpe_tokenizer, make_unigram_tokenizer
from tests.memory_ceiling import peak_rise

CASES = {
    "llama tied bf16": ("llama", True, torch.bfloat16, None),
    "llama untied fp32, sharded": ("llama", False, torch.float32, "40KB"),
    "qwen2 attention biases bf16, sharded": ("qwen2", False, torch.bfloat16, "40KB"),
}


def _config(kind: str, vocab: int, tied: bool, hidden: int = 32, layers: int = 2, intermediate: int = 64):
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=0,
    )
    return LlamaConfig(**common) if kind == "llama" else Qwen2Config(**common)


def _base_folder(folder: Path, kind: str, tied: bool, dtype: torch.dtype, shard: str | None, **shape) -> Path:
    tokenizer = make_bpe_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(kind, len(tokenizer), tied, **shape)).to(dtype)
    if kind == "qwen2":  # make the attention biases non-zero, so a lost bias shows
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.data.normal_()
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    tokenizer.save_pretrained(folder)
    return folder


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            out.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118 (not iterable)
    return out


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("target", ["plain", "transplant"])
def test_body_tensors_are_the_base_bytes_in_its_dtype(tmp_path, case, target):
    kind, tied, dtype, shard = CASES[case]
    base = _base_folder(tmp_path / "base", kind, tied, dtype, shard)
    assert (shard is None) == (not (base / "model.safetensors.index.json").exists())
    donor = _base_folder(tmp_path / "donor", "llama", False, torch.float32, None)
    vocabulary = None
    if target == "transplant":
        make_unigram_tokenizer().save_pretrained(tmp_path / "target")
        vocabulary = VocabularyConfig(tokenizer=tmp_path / "target", allow_low_overlap=True)
    recipe = Recipe(
        base=str(base),
        task="causal-lm",
        sources=[SourceConfig(path=donor, projection=Transport(k=3))],
        vocabulary=vocabulary,
    )
    out = tmp_path / "fused"
    build_to_folder(recipe, out)

    base_tensors, fused = _tensors(base), _tensors(out)
    prefix = "model."  # the wrapper holds the causal LM under the base's own prefix
    changed = {"model.embed_tokens.weight", "lm_head.weight"}
    body = [key for key in base_tensors if key not in changed]
    assert body, "the base has a body"
    for key in body:
        out_tensor = fused[prefix + key]
        assert out_tensor.dtype == base_tensors[key].dtype, key
        assert torch.equal(out_tensor, base_tensors[key]), key
    # The input table stays in the base's dtype; on a plain build it is the base's own.
    table = fused["model.model.embed_tokens.weight"]
    assert table.dtype == dtype
    if target == "plain":
        assert torch.equal(table, base_tensors["model.embed_tokens.weight"])
    else:
        assert table.shape[0] == len(make_unigram_tokenizer())

    # It loads, and computes what the same build in memory computes.
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    in_memory = hf_embfuse.build.fuse_recipe(recipe).model.eval()
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        expected, got = in_memory(input_ids=ids).logits, loaded(input_ids=ids).logits
    torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=0)


def test_a_build_does_not_hold_the_body(tmp_path):
    """A base with a ~250 MB body and small tables: the build's peak rises by far less than the body."""
    base = _base_folder(
        tmp_path / "base", "llama", False, torch.float32, "50MB", hidden=256, layers=24, intermediate=3072
    )
    body = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    assert body > 200e6
    make_unigram_tokenizer().save_pretrained(tmp_path / "target")
    setup = f"""
from hf_embfuse.build import build_to_folder
from hf_embfuse.recipe import Recipe, SourceConfig, Transport, VocabularyConfig
recipe = Recipe(base={str(base)!r}, task="causal-lm",
                vocabulary={{"tokenizer": {str(tmp_path / "target")!r}, "allow_low_overlap": True}})
"""
    rise = peak_rise(f"build_to_folder(recipe, {str(tmp_path / 'fused')!r})", setup)
    assert (tmp_path / "fused" / "config.json").is_file()
    assert rise < body / 3, f"peak rose by {rise / 1e6:.0f} MB for a {body / 1e6:.0f} MB body"


def test_a_head_the_base_lacks_is_initialised_once_and_as_in_memory(tmp_path):
    """A classifier the base checkpoint has no tensor for is made by the build from `seed`: two streamed builds
    write the same one, and it is the one `fuse()` makes in memory."""
    from hf_embfuse import fuse
    from tests.fixtures_models import tiny_base

    tokenizer = make_bpe_tokenizer()
    tiny_base("llama", "base", vocab_size=len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    recipe = Recipe(
        base=str(tmp_path / "base"),
        task="sequence-classification",
        num_labels=3,
        vocabulary=VocabularyConfig(added_tokens=[" catdog"]),
    )
    first = build_to_folder(recipe, tmp_path / "a")
    assert "model.score.weight" in _tensors(tmp_path / "a")
    second = build_to_folder(recipe, tmp_path / "b")
    in_memory = fuse(recipe.base, recipe).model
    assert torch.equal(first.model.score.weight, second.model.score.weight)
    assert torch.equal(first.model.score.weight, in_memory.score.weight)
