"""set_trainable(): which parts of an EmbFuse model train (True = trains, as in the config), and the choice survives save/load."""

import pytest
import torch
from peft import get_peft_model

import hf_embfuse
from hf_embfuse.training import embfuse_lora_config, set_trainable
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


FRESH = dict(base=True, base_table=True, sources=False, projections=True, mixer=True)


@pytest.mark.parametrize(
    ("flags", "changed"),
    [
        ({}, {}),
        ({"base": False}, dict(base=False, base_table=False)),
        ({"base": False, "projections": False}, dict(base=False, base_table=False, projections=False)),
        ({"sources": True}, dict(sources=True)),
        ({"mixer": False}, dict(mixer=False)),
        ({"base": True, "sources": False, "projections": True, "mixer": True}, {}),
    ],
)
def test_set_trainable_flags(flags, changed):
    model = tiny_fused("gpt2", "causal-lm", mixing="gated")
    assert trainable_parts(model) == FRESH
    assert set_trainable(model, **flags) is model
    assert trainable_parts(model) == {**FRESH, **changed}
    # A tied LM head shares the base table: it follows `base`.
    assert model.lm_head.weight.requires_grad == trainable_parts(model)["base_table"]


def test_a_flag_left_out_leaves_that_part_as_it_was():
    model = set_trainable(tiny_fused("bert"), base=False, sources=True)
    set_trainable(model, mixer=False)
    assert trainable_parts(model) == dict(
        base=False, base_table=False, sources=True, projections=True, mixer=False
    )


def test_only_the_mixture_trains_after_freezing_the_base():
    model = set_trainable(tiny_fused("bert", "sequence-classification").train(), base=False)
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
    model = set_trainable(tiny_fused("bert", mixing="fixed"), mixer=True)
    assert not model.get_input_embeddings().mixer.logits.requires_grad


@pytest.mark.parametrize("trains", [True, False])
def test_flags_mean_what_the_config_means_and_survive_save_and_load(tmp_path, trains):
    model = set_trainable(tiny_fused("bert"), sources=trains, projections=not trains)
    assert model.config.train_sources is trains and model.config.train_projections is (not trains)
    model.save_pretrained(tmp_path)
    parts = trainable_parts(hf_embfuse.EmbFuseModel.from_pretrained(tmp_path))
    assert parts["sources"] is trains and parts["projections"] is (not trains)


def test_set_trainable_refuses_a_flag_that_is_not_a_bool():
    with pytest.raises(
        TypeError, match=r"sources must be True \(trains\), False \(frozen\) or None; got 'yes'"
    ):
        set_trainable(tiny_fused("bert"), sources="yes")


def test_set_trainable_refuses_a_peft_model():
    fused = tiny_fused("bert")
    with pytest.raises(ValueError, match="before `get_peft_model`"):
        set_trainable(get_peft_model(fused, embfuse_lora_config(fused)), base=False)


def test_set_trainable_refuses_a_plain_model():
    from tests.fixtures_models import tiny_base

    with pytest.raises(ValueError, match="not an EmbFuse model"):
        set_trainable(tiny_base("bert"))
