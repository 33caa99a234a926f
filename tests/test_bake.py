"""Bake: an EmbFuse model becomes a plain checkpoint of its base architecture with the same outputs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

import hf_embfuse
from hf_embfuse.atomic import OutputExistsError
from hf_embfuse.baking import bake, bake_to_folder
from hf_embfuse.checkpoint_stream import load_stored, stored_tensors
from hf_embfuse.cli import main
from hf_embfuse.training import embfuse_lora_config
from tests.fixtures_models import VOCAB, random_sources, tiny_base, tiny_fused

CASES = {
    "bert": ("sequence-classification", AutoModelForSequenceClassification),
    "gpt2": ("causal-lm", AutoModelForCausalLM),
    "llama": ("causal-lm", AutoModelForCausalLM),
}


def ids(batch=2, length=9, seed=0):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def mixed(model):
    """Move the mixing parameters off their initial values, so that every source really counts."""
    mixer = model.get_input_embeddings().mixer
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        mixer.logits.copy_(torch.randn(mixer.logits.shape, generator=generator))
        if mixer.gate is not None:
            mixer.gate.copy_(0.3 * torch.randn(mixer.gate.shape, generator=generator))
    return model


def output_of(model, x):
    with torch.no_grad():
        out = model(input_ids=x)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w3"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w3", pad_token="w0")


@pytest.mark.parametrize("mixing", ["fixed", "learned", "gated"])
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_baked_folder_is_plain_and_equals_the_fused_model(tmp_path, arch, mixing):
    task, auto_class = CASES[arch]
    fused = mixed(tiny_fused(arch, task, mixing=mixing))
    fused.save_pretrained(tmp_path / "fused")
    out = bake_to_folder(tmp_path / "fused", tmp_path / "baked")

    assert out == tmp_path / "baked"
    assert list(out.glob("*.py")) == []
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == arch
    baked = auto_class.from_pretrained(out).eval()  # no trust_remote_code
    assert type(baked).__module__.startswith("transformers.models.")
    x = ids()
    assert torch.allclose(output_of(baked, x), output_of(fused, x), atol=1e-5, rtol=0)
    if task == "causal-lm":
        prompt = ids(1, 5, seed=1)
        kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(baked.generate(prompt, **kwargs), fused.generate(prompt, **kwargs))
    # Only the two fused folders: no staging folder left beside them.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baked", "fused"]


def test_tied_head_keeps_the_original_base_table(tmp_path):
    fused = mixed(tiny_fused("gpt2", "causal-lm", mixing="gated"))
    base_table = fused.base_model.transformer.wte.weight.detach().clone()
    baked = bake(fused)
    assert baked.config.tie_word_embeddings is False
    assert baked.lm_head.weight is not baked.transformer.wte.weight
    assert torch.equal(baked.lm_head.weight, base_table)
    assert torch.allclose(baked.transformer.wte.weight, fused.get_input_embeddings().fused_weight())
    baked.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded.lm_head.weight, base_table)
    assert not torch.equal(reloaded.transformer.wte.weight, base_table)


def test_baked_model_owns_its_tensors_and_keeps_dtype_and_mode():
    fused = mixed(tiny_fused("llama", "causal-lm")).to(torch.bfloat16).train()
    baked = bake(fused)
    assert baked.training and baked.dtype == torch.bfloat16
    assert baked.lm_head.weight.requires_grad
    before = baked.model.layers[0].self_attn.q_proj.weight.detach().clone()
    with torch.no_grad():
        fused.base_model.model.layers[0].self_attn.q_proj.weight.add_(1.0)
    assert torch.equal(baked.model.layers[0].self_attn.q_proj.weight, before)


def test_scaled_embedding_of_gemma3_is_divided_out():
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    )
    base = Gemma3ForCausalLM(config).eval()
    assert float(base.get_input_embeddings().embed_scale) != 1.0
    fused = mixed(hf_embfuse.from_base(base, random_sources(VOCAB), mixing="gated")).eval()
    baked = bake(fused).eval()
    x = ids()
    assert torch.allclose(output_of(baked, x), output_of(fused, x), atol=1e-5, rtol=0)


def test_bake_accepts_the_checkpoints_own_remote_code_classes(tmp_path):
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    fused = mixed(tiny_fused("bert", "sequence-classification", mixing="gated"))
    fused.save_pretrained(tmp_path / "fused")
    remote_class = get_class_from_dynamic_module(
        "modeling_embfuse.EmbFuseForSequenceClassification", str(tmp_path / "fused")
    )
    assert remote_class is not hf_embfuse.EmbFuseForSequenceClassification
    remote = remote_class.from_pretrained(tmp_path / "fused").eval()
    x = ids()
    assert torch.allclose(output_of(bake(remote).eval(), x), output_of(fused, x), atol=1e-5, rtol=0)


def test_tokenizer_files_are_copied(tmp_path):
    fused = tiny_fused("bert")
    fused.save_pretrained(tmp_path / "fused")
    tiny_tokenizer().save_pretrained(tmp_path / "fused")
    bake_to_folder(tmp_path / "fused", tmp_path / "baked")
    assert (tmp_path / "baked" / "tokenizer.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "baked")
    assert tokenizer("w5 w17 zzz")["input_ids"] == [5, 17, 3]
    assert type(AutoModel.from_pretrained(tmp_path / "baked")).__name__ == "BertModel"


def test_baked_folders_load_in_a_process_that_cannot_import_hf_embfuse(tmp_path):
    x = ids()
    expected = {}
    for arch in ("bert", "llama"):
        task, auto_class = CASES[arch]
        fused = mixed(tiny_fused(arch, task, mixing="gated"))
        bake_to_folder(fused, tmp_path / arch)
        expected[arch] = (auto_class.__name__, output_of(fused, x))
    torch.save(x, tmp_path / "x.pt")
    child = (
        "import sys, torch, transformers\n"
        "sys.modules['hf_embfuse'] = None\n"
        "x = torch.load(sys.argv[2])\n"
        "for arch, auto in [a.split(':') for a in sys.argv[3:]]:\n"
        "    model = getattr(transformers, auto).from_pretrained(f'{sys.argv[1]}/{arch}').eval()\n"
        "    with torch.no_grad():\n"
        "        torch.save(model(input_ids=x).logits, f'{sys.argv[1]}/{arch}.out.pt')\n"
    )
    arguments = [f"{arch}:{auto}" for arch, (auto, _) in expected.items()]
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path), str(tmp_path / "x.pt"), *arguments],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for arch, (_, want) in expected.items():
        assert torch.allclose(torch.load(tmp_path / f"{arch}.out.pt"), want, atol=1e-5, rtol=0)


def write_plain_checkpoint(folder):
    tiny_base("bert").save_pretrained(folder)


def write_adapter(folder):
    fused = tiny_fused("bert")
    get_peft_model(fused, embfuse_lora_config(fused)).save_pretrained(folder)


def write_config_without_weights(folder):
    tiny_fused("bert").config.save_pretrained(folder)


def write_bad_json(folder):
    folder.mkdir()
    (folder / "config.json").write_text("{not json")


def write_file(path):
    path.write_text("hello")


def write_nothing(folder):
    pass


@pytest.mark.parametrize(
    ("make_source", "error", "message"),
    [
        (write_nothing, FileNotFoundError, "does not exist; expected a folder written by hf-embfuse"),
        (write_file, ValueError, "is a file; expected a folder written by hf-embfuse"),
        (write_plain_checkpoint, ValueError, "holds a 'bert' checkpoint, not an embfuse one"),
        (write_adapter, ValueError, "is a PEFT adapter, not a full checkpoint"),
        (write_config_without_weights, FileNotFoundError, "has a config.json but no weights"),
        (write_bad_json, ValueError, "is not valid JSON"),
    ],
)
def test_bad_sources_are_refused_by_name_and_leave_nothing(tmp_path, make_source, error, message):
    source = tmp_path / "source"
    make_source(source)
    before = listing(tmp_path)
    with pytest.raises(error, match=message) as caught:
        bake_to_folder(source, tmp_path / "out")
    assert str(source) in str(caught.value)
    assert listing(tmp_path) == before


def test_existing_output_needs_overwrite_and_the_source_is_never_the_output(tmp_path):
    fused = tiny_fused("bert")
    fused.save_pretrained(tmp_path / "fused")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="pass overwrite=True"):
        bake_to_folder(tmp_path / "fused", tmp_path / "out")
    bake_to_folder(tmp_path / "fused", tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "old.txt").exists() and (tmp_path / "out" / "config.json").is_file()
    with pytest.raises(ValueError, match="is the EmbFuse checkpoint being baked"):
        bake_to_folder(tmp_path / "fused", tmp_path / "fused", overwrite=True)
    assert (tmp_path / "fused" / "modeling_embfuse.py").is_file()


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    fused = tiny_fused("bert")

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        bake_to_folder(fused, tmp_path / "out")
    assert listing(tmp_path) == []


def test_models_that_cannot_be_baked_are_refused():
    fused = tiny_fused("bert")
    with pytest.raises(ValueError, match=r"merge_and_unload\(\)"):
        bake(get_peft_model(fused, embfuse_lora_config(fused)))
    with pytest.raises(ValueError, match="needs an EmbFuse model"):
        bake(tiny_base("bert"))


def test_bake_command(tmp_path, capsys):
    tiny_fused("llama", "causal-lm").save_pretrained(tmp_path / "fused")
    assert main(["bake", str(tmp_path / "fused"), "--out", str(tmp_path / "baked")]) == 0
    assert "loads without trust_remote_code" in capsys.readouterr().out
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "baked")).__name__ == "LlamaForCausalLM"


def test_top_level_bake_stays_callable_after_the_submodule_is_imported():
    import importlib
    import types

    module = importlib.import_module("hf_embfuse.baking")  # as the CLI does
    assert isinstance(hf_embfuse.bake, types.FunctionType) and hf_embfuse.bake is module.bake
    assert type(module) is types.ModuleType and not callable(module)
    assert hf_embfuse.bake_to_folder is bake_to_folder
    baked = hf_embfuse.bake(tiny_fused("bert"))
    assert type(baked).__name__ == "BertModel"


def _stored_equal(left, right) -> bool:
    return (
        left.dtype == right.dtype
        and left.shape == right.shape
        and torch.equal(load_stored(left), load_stored(right))
    )


@pytest.mark.parametrize(
    ("arch", "task", "dtype"),
    [
        ("llama", "causal-lm", torch.bfloat16),
        ("gpt2", "causal-lm", torch.float32),
        ("bert", "masked-lm", torch.float32),
    ],
)
def test_baked_body_is_the_fused_folders_bytes(tmp_path, arch, task, dtype):
    fused = mixed(tiny_fused(arch, task, mixing="gated")).to(dtype)
    fused.save_pretrained(tmp_path / "fused", max_shard_size="30KB")  # sharded, with an index
    bake_to_folder(tmp_path / "fused", tmp_path / "baked")

    source, baked = stored_tensors(tmp_path / "fused"), stored_tensors(tmp_path / "baked")
    prefix = f"{fused.base_model_prefix}."
    inner = fused.base_model
    table_key = next(k for k, v in inner.named_parameters() if v is inner.get_input_embeddings().weight)
    head = inner.get_output_embeddings()
    head_key = next((f"{name}.weight" for name, module in inner.named_modules() if module is head), None)
    tied = head is not None and head.weight is inner.get_input_embeddings().weight
    body = [key for key in baked if key not in (table_key, head_key if tied else None)]
    assert body and set(baked) <= set(inner.state_dict())  # the base model's names, no fused parts
    for key in body:
        original = source.get(prefix + key)
        if original is None:  # a tied duplicate save_pretrained left out (the MLM decoder's bias)
            assert key == "cls.predictions.decoder.bias"
            original = source[prefix + "cls.predictions.bias"]
        assert _stored_equal(baked[key], original), key
    weight = load_stored(baked[table_key.removesuffix(".weight") + ".weight"])
    assert weight.dtype == dtype
    assert torch.equal(weight, fused.get_input_embeddings().fused_weight().to(dtype))
    if tied:
        assert _stored_equal(baked[head_key], source[prefix + table_key])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "baked") if task == "causal-lm" else None
    if loaded is not None:
        assert loaded.dtype == dtype


def test_baking_a_large_body_holds_far_less_than_it(tmp_path):
    from transformers import LlamaConfig

    from tests.memory_ceiling import peak_rise

    # 2 layers at hidden 1024 and intermediate 4096 in float32: a 125 MB body under a 97-row vocabulary.
    # (tests/test_checkpoint_stream.py shows that the same measure sees a body that is loaded.)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    torch.manual_seed(0)
    big = hf_embfuse.from_base(AutoModelForCausalLM.from_config(config), random_sources(VOCAB, (16, 64)))
    body_bytes = sum(
        t.numel() * t.element_size() for k, t in big.state_dict().items() if "embed_tokens" not in k
    )
    big.save_pretrained(tmp_path / "big")
    del big
    tiny_fused("llama", "causal-lm").save_pretrained(tmp_path / "tiny")
    # The warm-up bake imports and builds everything the measured one uses, so only the work counts.
    setup = (
        "from hf_embfuse.baking import bake_to_folder\n"
        f"bake_to_folder({str(tmp_path / 'tiny')!r}, {str(tmp_path / 'warm')!r}, overwrite=True)\n"
    )
    try:
        rise = peak_rise(f"bake_to_folder({str(tmp_path / 'big')!r}, {str(tmp_path / 'baked')!r})", setup)
        assert rise < body_bytes / 3, (
            f"peak rose {rise / 2**20:.0f} MiB for a {body_bytes / 2**20:.0f} MiB body"
        )
        baked = stored_tensors(tmp_path / "baked")
        assert baked["model.layers.1.mlp.down_proj.weight"].nbytes == 4096 * 1024 * 4
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
