"""freeze(): which parts of an EmbFuse model train, and the choice survives save/load."""

import pytest
import torch
from peft import get_peft_model

import hf_embfuse
from hf_embfuse.training import embfuse_lora_config, freeze
from tests.fixtures_models import tiny_fused


def trainable_parts(model):
    embedding = model.get_input_embeddings()
    fused = {id(p) for p in embedding.parameters()} - {id(embedding.weight)}
    return {
        "base": any(p.requires_grad for p in model.parameters() if id(p) not in fused),
        "base_table": embedding.weight.requires_grad,
        "sources": any(p.requires_grad for p in embedding.source_tables),
        "projections": any(p.requires_grad for p in embedding.projections.parameters()),
        "mixer": any(p.requires_grad for p in embedding.mixer.parameters()),
    }


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, dict(base=True, base_table=True, sources=False, projections=True, mixer=True)),
        ({"base": True}, dict(base=False, base_table=False, sources=False, projections=True, mixer=True)),
        (
            {"base": True, "projections": True},
            dict(base=False, base_table=False, sources=False, projections=False, mixer=True),
        ),
        ({"sources": False}, dict(base=True, base_table=True, sources=True, projections=True, mixer=True)),
        ({"mixer": True}, dict(base=True, base_table=True, sources=False, projections=True, mixer=False)),
    ],
)
def test_freeze_flags(flags, expected):
    model = tiny_fused("gpt2", "causal-lm", mixing="gated")
    assert freeze(model, **flags) is model
    assert trainable_parts(model) == expected
    # A tied LM head shares the base table: it follows `base`.
    assert model.lm_head.weight.requires_grad == expected["base_table"]


def test_only_the_mixture_trains_after_freezing_the_base():
    model = freeze(tiny_fused("bert", "sequence-classification").train(), base=True)
    embedding = model.get_input_embeddings()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randint(3, 90, (4, 6))
    model(input_ids=x, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    optimizer.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert "bert.bert.embeddings.word_embeddings.mixer.logits" in moved
    assert moved <= {
        name for name, _ in model.named_parameters() if ".mixer." in name or ".projections." in name
    }
    assert embedding.weight.grad is None


def test_fixed_mixing_keeps_the_unused_logits_frozen():
    model = freeze(tiny_fused("bert", mixing="fixed"), mixer=False)
    assert not model.get_input_embeddings().mixer.logits.requires_grad


def test_source_and_projection_choices_survive_save_and_load(tmp_path):
    model = freeze(tiny_fused("bert"), sources=False, projections=True)
    assert model.config.train_sources and not model.config.train_projections
    model.save_pretrained(tmp_path)
    loaded = hf_embfuse.EmbFuseModel.from_pretrained(tmp_path)
    parts = trainable_parts(loaded)
    assert parts["sources"] and not parts["projections"]


def test_freeze_refuses_a_peft_model():
    fused = tiny_fused("bert")
    with pytest.raises(ValueError, match="before `get_peft_model`"):
        freeze(get_peft_model(fused, embfuse_lora_config(fused)), base=True)


def test_freeze_refuses_a_plain_model():
    from tests.fixtures_models import tiny_base

    with pytest.raises(ValueError, match="not an EmbFuse model"):
        freeze(tiny_base("bert"))
