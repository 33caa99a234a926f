"""One rank of the multi-process tests (tests/test_ddp_training.py); launched by `accelerate launch`.

Usage: ddp_worker.py OUT_DIR SCENARIO
  train            every rank builds the same tiny fused model and trains a few steps with EmbFuseTrainer
  mismatch-config  rank 1 uses another mixing temperature (same tensor shapes: DDP alone would not notice);
                   plain Trainer + MixingWeightsCallback, which checks in on_train_begin
  mismatch-shape   rank 1 uses gated mixing (an extra tensor: DDP would fail inside torch without our check);
                   EmbFuseTrainer, which checks in train() before DDP wraps the model
  heal             `hf_embfuse.training.heal` unchanged on a tiny transplanted causal LM (under FSDP when the
                   launcher says so); global batch 4 (split_batches: each rank gets 2 of the same 4 lines a
                   single process would see); each rank writes every parameter after the heal
Each rank writes its mixer before/after training to OUT_DIR/rank<r>.safetensors, or the error it
raised to OUT_DIR/rank<r>.error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save_file  # noqa: E402
from transformers import Trainer  # noqa: E402

from hf_embfuse.training import EmbFuseTrainer, MixingWeightsCallback  # noqa: E402
from tests.fixtures_models import tiny_fused  # noqa: E402
from tests.fixtures_training import TinyTask, tiny_training_args  # noqa: E402

HEAL_LINES = ["the cat walked to Paris.", "hello New York", "the dog is happy", "a café in Paris"] * 4


def tiny_transplant(tokenizer):
    """A tiny fused causal LM over `tokenizer`'s vocabulary, the same on every rank and in the test process."""
    from hf_embfuse.wrap import from_base
    from tests.fixtures_models import random_sources, tiny_base

    base = tiny_base("llama", "causal-lm", vocab_size=len(tokenizer))
    return from_base(base, random_sources(len(tokenizer)), task="causal-lm", mixing="learned")


def heal_tiny(out_dir: Path, **training_args):
    """The heal every rank runs (and the test runs in one process with the same global batch)."""
    from hf_embfuse.training import heal
    from tests.fixtures_tokenizers import make_bpe_tokenizer

    tokenizer = make_bpe_tokenizer()
    return heal(
        tiny_transplant(tokenizer),
        tokenizer,
        HEAL_LINES,
        HEAL_LINES[:2],
        out_dir=out_dir,
        minutes=None,
        max_steps=3,
        learning_rate=1e-2,
        batch_size=4,
        eval_every=0,
        show_progress=False,
        training_args={"accelerator_config": {"split_batches": True}, **training_args},
    )


def main(out_dir: Path, scenario: str) -> int:
    if scenario == "heal":
        model, _ = heal_tiny(out_dir / "trainer", ddp_backend="gloo")
        state = {
            name: tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            for name, tensor in model.state_dict().items()
        }
        rank = torch.distributed.get_rank()
        save_file(
            {k: v.detach().clone().contiguous() for k, v in state.items()},
            out_dir / f"rank{rank}.safetensors",
        )
        return 0
    # TrainingArguments sets up torch.distributed (gloo on CPU) from the launcher's environment.
    args = tiny_training_args(
        out_dir / "trainer", per_device_train_batch_size=4, ddp_backend="gloo", dataloader_num_workers=0
    )
    rank = args.process_index
    assert args.world_size == 2, f"expected 2 processes, got {args.world_size}"
    kwargs = {"mixing": "learned"}
    if rank == 1 and scenario == "mismatch-config":
        kwargs["mixing_temperature"] = 2.0
    if rank == 1 and scenario == "mismatch-shape":
        kwargs["mixing"] = "gated"
    model = tiny_fused("bert", "sequence-classification", seed=0, **kwargs).train()
    mixer = model.get_input_embeddings().mixer
    before = {f"before.{k}": v.detach().clone() for k, v in mixer.state_dict().items()}
    if scenario == "mismatch-config":
        trainer = Trainer(
            model=model, args=args, train_dataset=TinyTask(), callbacks=[MixingWeightsCallback()]
        )
    else:
        trainer = EmbFuseTrainer(model=model, args=args, train_dataset=TinyTask(), mixer_lr=5e-2)
    try:
        trainer.train()
    except ValueError as error:
        (out_dir / f"rank{rank}.error").write_text(str(error))
        return 3
    after = {f"after.{k}": v.detach().clone().contiguous() for k, v in mixer.state_dict().items()}
    save_file({**before, **after}, out_dir / f"rank{rank}.safetensors")
    return 0


if __name__ == "__main__":
    code = main(Path(sys.argv[1]), sys.argv[2])
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(code)  # skip slow interpreter teardown of the worker
