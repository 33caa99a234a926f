"""The mixture learns under the plain HF Trainer: mixing parameters get gradients and move."""

import pytest
import torch
from transformers import Trainer, TrainingArguments

from tests.fixtures_models import VOCAB, tiny_fused


class TinyTask(torch.utils.data.Dataset):
    """Label = whether the sequence holds more ids from the upper half of the vocabulary."""

    def __init__(self, size: int = 64, length: int = 8):
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(3, VOCAB, (size, length), generator=generator)
        self.labels = ((self.input_ids > VOCAB // 2).sum(dim=1) > length // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


@pytest.mark.parametrize("mixing", ["learned", "gated"])
def test_mixing_parameters_move_in_20_trainer_steps(tmp_path, mixing):
    model = tiny_fused(
        "bert", "sequence-classification", mixing=mixing, regularizer="entropy", reg_lambda=0.01
    )
    mixer = model.get_input_embeddings().mixer
    before = {name: p.detach().clone() for name, p in mixer.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=20,
        per_device_train_batch_size=8,
        learning_rate=5e-2,
        report_to=[],
        save_strategy="no",
        logging_steps=5,
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=TinyTask())
    trainer.train()
    assert trainer.state.global_step == 20
    for name, parameter in mixer.named_parameters():
        assert not torch.equal(parameter.detach(), before[name]), f"mixer.{name} did not move"
    # the frozen source tables did not
    assert all(not table.requires_grad for table in model.get_input_embeddings().source_tables)
