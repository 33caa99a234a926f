"""The wrapper is an ordinary composite model: the base model is its submodule, and what the base says goes."""

import pytest
import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertForQuestionAnswering,
    BertForSequenceClassification,
)

import hf_embfuse
from tests.fixtures_models import VOCAB, tiny_base, tiny_config, tiny_fused


def ids(seed=0):
    return torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("arch", "prefix"), [("bert", "bert"), ("gpt2", "transformer"), ("llama", "model")])
def test_the_base_model_is_the_one_registered_child(arch, prefix):
    task = "sequence-classification" if arch == "bert" else "causal-lm"
    fused = tiny_fused(arch, task)
    assert fused.base_model_prefix == prefix == type(fused.base_model).base_model_prefix
    assert dict(fused.named_children()) == {prefix: fused.base_model}
    assert fused.get_input_embeddings() is fused.base_model.get_input_embeddings()
    # Every parameter is the base model's, under the prefix: nothing is owned twice.
    assert {f"{prefix}.{name}" for name, _ in fused.base_model.named_parameters()} == {
        name for name, _ in fused.named_parameters()
    }


def test_capabilities_come_from_the_base_class(monkeypatch):
    fused = tiny_fused("bert", "sequence-classification")
    for flag in (
        "_supports_sdpa",
        "_supports_flash_attn",
        "_supports_flex_attn",
        "supports_gradient_checkpointing",
    ):
        assert getattr(fused, flag) == getattr(BertForSequenceClassification, flag)
    assert {"BertLayer", "MultiSourceEmbedding"} <= set(fused._no_split_modules)
    monkeypatch.setattr(BertForSequenceClassification, "_supports_sdpa", False)
    assert fused._supports_sdpa is False
    with pytest.raises(ValueError, match="does not support an attention implementation through"):
        type(fused)(
            fused.config.__class__.from_dict({**fused.config.to_dict(), "attn_implementation": "sdpa"})
        )


def test_the_config_answers_for_the_base():
    fused = tiny_fused("bert", "sequence-classification")
    assert fused.config.vocab_size == VOCAB
    assert fused.config.hidden_size == fused.config.base_config.hidden_size
    assert fused.config.num_labels == fused.num_labels == 3
    with pytest.raises(AttributeError):
        fused.config.no_such_attribute  # noqa: B018


def test_a_head_assigned_on_the_wrapper_is_the_head_that_runs():
    fused = tiny_fused("bert", "sequence-classification")
    head = nn.Linear(fused.config.hidden_size, 3)
    fused.classifier = head
    assert fused.base_model.classifier is head and "classifier" not in dict(fused.named_children())
    with torch.no_grad():
        before = fused(input_ids=ids()).logits
        head.weight.add_(1.0)
        assert not torch.equal(fused(input_ids=ids()).logits, before)


def test_return_dict_false_returns_the_base_models_tuple():
    fused = tiny_fused("bert", "sequence-classification", regularizer="entropy", reg_lambda=0.1)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        as_dict = fused(input_ids=ids(), labels=labels)
        as_tuple = fused(input_ids=ids(), labels=labels, return_dict=False)
        plain = fused.base_model(input_ids=ids(), labels=labels, return_dict=False)
    assert len(as_tuple) == len(plain)  # no extra entry for the regulariser
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    assert torch.allclose(as_dict.loss, plain[0] + 0.1 * as_dict.regularization_loss)


def test_cross_class_loading_both_ways(tmp_path):
    classifier = tiny_fused("bert", "sequence-classification", mixing="gated")
    torch.nn.init.normal_(classifier.get_input_embeddings().mixer.gate, std=0.3)
    classifier.save_pretrained(tmp_path / "cls")
    bare = AutoModel.from_pretrained(tmp_path / "cls")
    assert isinstance(bare, hf_embfuse.EmbFuseModel)
    with torch.no_grad():
        expected = classifier.base_model.bert(input_ids=ids()).last_hidden_state
        assert torch.equal(bare(input_ids=ids()).last_hidden_state, expected)

    bare.save_pretrained(tmp_path / "bare")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bare")
    assert isinstance(again, hf_embfuse.EmbFuseForSequenceClassification)
    with torch.no_grad():
        assert torch.equal(again.base_model.bert(input_ids=ids()).last_hidden_state, expected)
    mixer = again.get_input_embeddings().mixer
    assert torch.equal(mixer.gate, classifier.get_input_embeddings().mixer.gate)


def test_frozen_source_tables_stay_frozen_after_loading(tmp_path):
    fused = tiny_fused("bert", train_sources=False)
    fused.save_pretrained(tmp_path)
    loaded = hf_embfuse.EmbFuseModel.from_pretrained(tmp_path)
    assert not any(table.requires_grad for table in loaded.get_input_embeddings().source_tables)
    assert loaded.get_input_embeddings().mixer.logits.requires_grad


def test_from_base_names_the_class_it_cannot_wrap():
    with pytest.raises(ValueError, match="not the class any EmbFuse task wraps"):
        hf_embfuse.from_base(BertForQuestionAnswering(tiny_config("bert")))
    base = tiny_base("bert", "sequence-classification")
    with pytest.raises(ValueError, match="Unknown task 'regression'"):
        hf_embfuse.from_base(base, task="regression")


def test_untying_the_head_reaches_the_wrapped_config_and_survives_a_reload(tmp_path):
    """What PEFT's merge of a trained `lm_head` does: the wrapper's flag is the one the base loads with."""
    fused = tiny_fused("gpt2", "causal-lm")
    head = fused.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach() + 0.1)
    fused.config.tie_word_embeddings = False
    assert fused.config.base_config.tie_word_embeddings is False
    fused.save_pretrained(tmp_path)
    loaded = hf_embfuse.EmbFuseForCausalLM.from_pretrained(tmp_path)
    assert loaded.get_output_embeddings().weight is not loaded.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids()).logits, fused(input_ids=ids()).logits)


def test_num_labels_given_at_load_time_sizes_the_wrapped_head(tmp_path):
    """Fine-tuning a fused bare model for classification: `from_pretrained(..., num_labels=5)` as for any model."""
    tiny_fused("bert").save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    assert model.num_labels == model.config.num_labels == 5
    with torch.no_grad():
        assert model(input_ids=ids()).logits.shape == (2, 5)
