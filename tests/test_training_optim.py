"""Optimizer parameter groups: the mixer gets its own learning rate and no weight decay."""

import pytest
import torch
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from hf_embfuse.training import (
    MIXER_LR_RATIO,
    EmbFuseTrainer,
    create_embfuse_optimizer,
    embfuse_lora_config,
    mixing_parameter_groups,
)
from tests.fixtures_models import tiny_fused
from tests.fixtures_training import TinyTask, tiny_training_args


def groups_by_name(groups):
    return {group["name"]: group for group in groups}


def ids_of(parameters):
    return {id(p) for p in parameters}


@pytest.mark.parametrize(
    ("mixer_lr", "projection_lr", "want_mixer", "want_projections"),
    [
        (None, None, MIXER_LR_RATIO * 1e-4, 1e-4),
        (3e-2, 5e-4, 3e-2, 5e-4),
    ],
)
def test_groups_get_their_learning_rates(mixer_lr, projection_lr, want_mixer, want_projections):
    model = tiny_fused("bert", "sequence-classification", mixing="gated")
    groups = groups_by_name(
        mixing_parameter_groups(
            model, lr=1e-4, mixer_lr=mixer_lr, projection_lr=projection_lr, weight_decay=0.1
        )
    )
    embedding = model.get_input_embeddings()
    assert ids_of(groups["mixer"]["params"]) == ids_of([embedding.mixer.logits, embedding.mixer.gate])
    assert groups["mixer"]["lr"] == pytest.approx(want_mixer)
    assert groups["mixer"]["weight_decay"] == 0.0
    assert ids_of(groups["projections"]["params"]) == ids_of(embedding.projections.parameters())
    assert groups["projections"]["lr"] == pytest.approx(want_projections)
    assert groups["projections"]["weight_decay"] == 0.0
    assert "sources" not in groups  # frozen by default: left out, not an empty group
    assert groups["decay"]["weight_decay"] == 0.1
    decayed = {id(p) for p in groups["decay"]["params"]}
    assert id(model.base_model.bert.encoder.layer[0].attention.self.query.weight) in decayed
    assert id(model.base_model.bert.encoder.layer[0].attention.self.query.bias) not in decayed
    # Every trainable parameter exactly once, and no frozen one.
    listed = [id(p) for group in groups.values() for p in group["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    # The base groups come first: the Trainer logs group 0's learning rate.
    assert next(iter(groups)) == "decay"


def test_trainable_sources_get_a_group_and_bad_rates_are_refused():
    model = tiny_fused("llama", "causal-lm", train_sources=True)
    groups = groups_by_name(mixing_parameter_groups(model, lr=1e-3))
    assert ids_of(groups["sources"]["params"]) == ids_of(model.get_input_embeddings().source_tables)
    assert groups["sources"]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="mixer_lr=-1"):
        mixing_parameter_groups(model, lr=1e-3, mixer_lr=-1)


def test_groups_work_through_trainer_optimizer_cls_and_kwargs(tmp_path):
    model = tiny_fused("bert", "sequence-classification")
    groups = mixing_parameter_groups(model, lr=1e-3, mixer_lr=4e-2)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to=[], use_cpu=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=TinyTask(),
        optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": groups}),
    )
    optimizer = trainer.create_optimizer()
    assert {group["name"]: group["lr"] for group in optimizer.param_groups}["mixer"] == 4e-2


@pytest.mark.parametrize(
    ("optim", "optimizer_class"), [("adamw_torch", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_embfuse_trainer_uses_the_groups_with_the_optimizer_args_name(tmp_path, optim, optimizer_class):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=2e-4,
        optim=optim,
        report_to=[],
        use_cpu=True,
        weight_decay=0.01,
    )
    trainer = EmbFuseTrainer(
        model=tiny_fused("bert", "sequence-classification"),
        args=args,
        train_dataset=TinyTask(),
        mixer_lr=1e-2,
        projection_lr=1e-3,
    )
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is optimizer_class
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"decay": 2e-4, "no_decay": 2e-4, "projections": 1e-3, "mixer": pytest.approx(1e-2)}


def test_groups_under_peft_hold_the_lora_weights_and_the_mixer_copy():
    fused = tiny_fused("bert", "sequence-classification")
    model = get_peft_model(fused, embfuse_lora_config(fused))
    groups = groups_by_name(mixing_parameter_groups(model, lr=1e-3))
    mixer = model.get_input_embeddings().mixer
    assert ids_of(groups["mixer"]["params"]) == {id(mixer.modules_to_save["default"].logits)}
    lora = {id(p) for name, p in model.named_parameters() if "lora_" in name}
    assert lora and lora <= ids_of(groups["decay"]["params"]) | ids_of(groups["no_decay"]["params"])


def largest_move_of_mixer_and_base(tmp_path, mixer_lr_ratio):
    """Train 5 plain-Trainer steps with `create_embfuse_optimizer`; how far the mixer and the head moved."""
    model = tiny_fused("bert", "sequence-classification")
    args = tiny_training_args(tmp_path, steps=5, learning_rate=1e-3)
    optimizer = create_embfuse_optimizer(
        model, torch.optim.AdamW, args.learning_rate, mixer_lr_ratio=mixer_lr_ratio
    )
    trainer = Trainer(model=model, args=args, train_dataset=TinyTask(), optimizers=(optimizer, None))
    mixer, head = model.get_input_embeddings().mixer.logits, model.classifier.weight
    before = mixer.detach().clone(), head.detach().clone()
    trainer.train()
    # The Trainer used this optimizer (Accelerate wraps it), with its own schedule over our groups.
    assert getattr(trainer.optimizer, "optimizer", trainer.optimizer) is optimizer
    assert {g["name"]: g["initial_lr"] for g in optimizer.param_groups}["mixer"] == pytest.approx(
        mixer_lr_ratio * 1e-3
    )
    return (mixer - before[0]).abs().max().item(), (head - before[1]).abs().max().item()


def test_plain_trainer_with_create_embfuse_optimizer_trains_the_mixer_at_the_higher_rate(tmp_path):
    # Adam moves each parameter by about its learning rate per step, whatever the gradient's size.
    mixer_moved, head_moved = largest_move_of_mixer_and_base(tmp_path / "ratio20", MIXER_LR_RATIO)
    assert mixer_moved > 5 * head_moved > 0
    mixer_moved, head_moved = largest_move_of_mixer_and_base(tmp_path / "ratio1", 1.0)
    assert mixer_moved < 2 * head_moved


def test_create_embfuse_optimizer_passes_optimizer_arguments_and_refuses_a_bad_ratio():
    model = tiny_fused("bert", "sequence-classification")
    optimizer = create_embfuse_optimizer(model, torch.optim.SGD, 1e-2, momentum=0.9, projection_lr=1e-3)
    assert {g["name"]: (g["lr"], g["momentum"]) for g in optimizer.param_groups} == {
        "decay": (1e-2, 0.9),
        "no_decay": (1e-2, 0.9),
        "projections": (1e-3, 0.9),
        "mixer": (pytest.approx(MIXER_LR_RATIO * 1e-2), 0.9),
    }
    with pytest.raises(ValueError, match="mixer_lr_ratio must be > 0; got 0"):
        create_embfuse_optimizer(model, torch.optim.SGD, 1e-2, mixer_lr_ratio=0)
