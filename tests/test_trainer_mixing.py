"""The mixture learns under the plain HF Trainer: mixing parameters get gradients and move."""

import pytest
import torch
from transformers import Trainer

from tests.fixtures_models import tiny_fused
from tests.fixtures_training import TinyTask, tiny_training_args


@pytest.mark.parametrize("mixing", ["learned", "gated"])
def test_mixing_parameters_move_in_20_trainer_steps(tmp_path, mixing):
    model = tiny_fused(
        "bert", "sequence-classification", mixing=mixing, regularizer="entropy", reg_lambda=0.01
    )
    mixer = model.get_input_embeddings().mixer
    before = {name: p.detach().clone() for name, p in mixer.named_parameters()}
    args = tiny_training_args(tmp_path, steps=20, learning_rate=5e-2, logging_steps=5)
    trainer = Trainer(model=model, args=args, train_dataset=TinyTask())
    trainer.train()
    assert trainer.state.global_step == 20
    for name, parameter in mixer.named_parameters():
        assert not torch.equal(parameter.detach(), before[name]), f"mixer.{name} did not move"
    # the frozen source tables did not
    assert all(not table.requires_grad for table in model.get_input_embeddings().source_tables)
