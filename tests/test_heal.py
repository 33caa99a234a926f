"""The heal of examples/transplant.py moves only what it is told to train; every other parameter is bit-identical."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from hf_embfuse.evaluation.bits_per_byte import score_lines
from hf_embfuse.evaluation.text_command import load_causal_lm
from hf_embfuse.wrap import from_base
from tests.fixtures_models import random_sources, tiny_base
from tests.fixtures_tokenizers import make_bpe_tokenizer

spec = importlib.util.spec_from_file_location(
    "transplant_example", Path(__file__).parents[1] / "examples" / "transplant.py"
)
transplant = importlib.util.module_from_spec(spec)
spec.loader.exec_module(transplant)

LINES = ["the cat walked to Paris.", "hello New York", "the dog is happy", "a café in Paris", "the cat"] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return make_bpe_tokenizer()


def fused_model(tokenizer, mixing="learned"):
    base = tiny_base("llama", "causal-lm", vocab_size=len(tokenizer))
    kwargs = {"fixed_weights": [0.5, 0.25, 0.25]} if mixing == "fixed" else {}
    return from_base(base, random_sources(len(tokenizer)), task="causal-lm", mixing=mixing, **kwargs)


def run_heal(model, tokenizer, tmp_path, **kwargs):
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    healed, curve = transplant.heal(
        model,
        tokenizer,
        LINES,
        LINES[:3],
        out_dir=tmp_path,
        minutes=None,
        max_steps=3,
        learning_rate=1e-2,
        batch_size=4,
        eval_every=0,
        show_progress=False,
        **kwargs,
    )
    after = dict(healed.named_parameters())
    assert set(after) == set(before)
    changed = {name for name, p in after.items() if not torch.equal(p.detach(), before[name])}
    assert [point["step"] for point in curve] == [0, 3]
    assert curve[-1]["bits_per_byte"] != curve[0]["bits_per_byte"]
    return changed


def test_embedding_heal_of_a_fused_model_moves_only_the_fused_embedding(tokenizer, tmp_path):
    model = fused_model(tokenizer)
    model.config.train_sources = True
    changed = run_heal(model, tokenizer, tmp_path)
    embedding = {
        f"model.model.embed_tokens.{name}" for name, _ in model.get_input_embeddings().named_parameters()
    }
    assert changed <= embedding | {"model.lm_head.weight"}  # the tiny Llama's head is untied
    # the base table, each source table, a projection and the mixer all moved
    assert {
        "model.model.embed_tokens.weight",
        "model.model.embed_tokens.source_tables.0",
        "model.model.embed_tokens.source_tables.1",
        "model.model.embed_tokens.projections.0.weight",
        "model.model.embed_tokens.mixer.logits",
    } <= changed


def test_mixer_heal_moves_only_mixer_and_projections(tokenizer, tmp_path):
    changed = run_heal(fused_model(tokenizer), tokenizer, tmp_path, train="mixer")
    assert changed
    assert all(".mixer." in name or ".projections." in name for name in changed), changed


def test_lora_heal_changes_attention_and_embedding_only(tokenizer, tmp_path):
    changed = run_heal(fused_model(tokenizer, mixing="fixed"), tokenizer, tmp_path, lora=True)
    attention = {name for name in changed if ".self_attn." in name}
    assert attention  # the merged adapters
    assert all(".self_attn." in name or ".embed_tokens." in name or "lm_head" in name for name in changed), (
        changed
    )
    assert not any(".mlp." in name or "norm" in name for name in changed)


def test_plain_model_heal_moves_only_embedding_and_head(tokenizer, tmp_path):
    model = tiny_base("llama", "causal-lm", vocab_size=len(tokenizer))
    changed = run_heal(model, tokenizer, tmp_path)
    assert changed == {"model.embed_tokens.weight", "lm_head.weight"}


def test_mixer_heal_needs_a_fused_model(tokenizer):
    with pytest.raises(ValueError, match="needs an EmbFuse model"):
        transplant.prepare_for_heal(tiny_base("llama", "causal-lm", vocab_size=len(tokenizer)), "mixer")


def test_a_gguf_loaded_model_is_trainable(tokenizer, tmp_path):
    """transformers leaves a GGUF quantizer (or its flag) on dequantised weights; the heal must still train."""
    from transformers.trainer_utils import validate_quantization_for_training

    model = fused_model(tokenizer)
    inner = model.base_model
    inner.is_quantized = True  # as from_pretrained(gguf_file=...) and a folder saved after it leave it
    inner.config.quantization_config = {"quant_method": "gguf"}
    model.is_quantized = True
    with pytest.raises(ValueError, match="purely quantized"):
        validate_quantization_for_training(model)
    changed = run_heal(model, tokenizer, tmp_path)
    assert "model.model.embed_tokens.weight" in changed
    assert "quantization_config" not in inner.config.to_dict()


def test_example_command_writes_the_healed_folder_curve_and_plot(tokenizer, tmp_path, capsys):
    folder = tmp_path / "fused"
    fused_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "healed"
    argv = [str(folder), "--out", str(out), "--text", str(text), "--max-steps", "2", "--eval-lines", "4"]
    assert (
        transplant.main([*argv, "--eval-every", "1", "--start-token", "Ġthe", "--reference", str(folder)])
        == 0
    )
    curve = json.loads((out / "heal_curve.json").read_text())
    assert [point["step"] for point in curve["curve"]] == [0, 1, 2]
    # the reference (here the unhealed folder) is scored with its own start rule on the same held-out lines
    reference = score_lines(*load_causal_lm(folder), LINES[:4]).bits_per_byte
    assert curve["reference"] == pytest.approx(reference, rel=1e-6)
    assert (out / "heal_curve.png").stat().st_size > 1000
    healed, _ = load_causal_lm(out)
    assert type(healed).__name__ == "EmbFuseForCausalLM"
    assert transplant.main([*argv]) == 2  # the output exists
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("chunk", [None, 3])
def test_chunked_loss_equals_the_models_own_loss_and_gradient(tokenizer, chunk):
    from hf_embfuse.training import next_token_log_probs

    model = fused_model(tokenizer).train()
    batch = transplant.LineDataset(tokenizer, LINES[:4]).collate(
        transplant.LineDataset(tokenizer, LINES[:4]).examples
    )
    own = model(**batch).loss  # the model's loss over the full logits (plus λ·Ω, zero by default here)
    own.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    log_probs = next_token_log_probs(model, batch["input_ids"], batch["attention_mask"], chunk=chunk)
    loss = -log_probs.sum() / batch["attention_mask"][:, 1:].sum()
    loss.backward()
    assert loss.item() == pytest.approx(own.item(), rel=1e-5)
    assert log_probs[batch["attention_mask"][:, 1:] == 0].eq(0).all()
    for name, grad in expected.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-6), name


def test_the_training_bar_counts_the_time_budget_and_each_evaluation_shows_progress(
    tokenizer, tmp_path, capsys
):
    transplant.heal(
        fused_model(tokenizer),
        tokenizer,
        LINES,
        LINES[:3],
        out_dir=tmp_path,
        minutes=0.02,
        max_steps=10_000,
        batch_size=4,
        eval_every=0,
        show_progress=True,
    )
    err = capsys.readouterr().err
    assert "heal:" in err and "/1 s" in err  # 0.02 minutes: a bar of 1 second, not of 10,000 steps
    assert "/10000" not in err
    assert err.count("bits per byte") >= 2  # step 0 and the end


def test_example_distill_heal_writes_the_healed_folder(tokenizer, tmp_path, capsys):
    from tests.fixtures_tokenizers import make_unigram_tokenizer

    folder, teacher = tmp_path / "fused", tmp_path / "teacher"
    fused_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    teacher_tokenizer = make_unigram_tokenizer()
    tiny_base("llama", "causal-lm", seed=3, vocab_size=len(teacher_tokenizer)).save_pretrained(teacher)
    teacher_tokenizer.save_pretrained(teacher)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    argv = [str(folder), "--text", str(text), "--max-steps", "2", "--eval-lines", "4", "--loss", "distill"]
    assert transplant.main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "--loss distill needs --teacher" in capsys.readouterr().err
    assert transplant.main([*argv, "--out", str(tmp_path / "b"), "--teacher", str(teacher)]) == 0
    curve = json.loads((tmp_path / "b" / "heal_curve.json").read_text())
    assert [point["step"] for point in curve["curve"]] == [0, 2]
    assert type(load_causal_lm(tmp_path / "b")[0]).__name__ == "EmbFuseForCausalLM"


def test_embedding_heal_keeps_donor_tables_as_built_unless_the_config_trains_them(tokenizer, tmp_path):
    model = fused_model(tokenizer)
    assert model.config.train_sources is False  # the default
    changed = run_heal(model, tokenizer, tmp_path)
    assert not any("source_tables" in name for name in changed), changed
    assert {"model.model.embed_tokens.weight", "model.lm_head.weight"} <= changed
