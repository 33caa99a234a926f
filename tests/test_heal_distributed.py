"""The heal under `accelerate launch`, two processes on CPU (gloo): unchanged code, one model on both ranks,
the same step as one process taking the same global batch.

Accelerate runs FSDP only on accelerators (its FSDP branch sits under the multi-GPU types), so on CPU the
launcher gives DDP; the loss normalisation this checks (tokens of the global batch, `num_items_in_batch`)
is the same under FSDP.
"""

import torch
from safetensors.torch import load_file

from tests.ddp_worker import heal_tiny, tiny_transplant
from tests.fixtures_tokenizers import make_bpe_tokenizer
from tests.test_ddp_training import launch


def test_two_process_heal_equals_one_process_with_the_same_global_batch(tmp_path):
    result = launch(tmp_path, "heal")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    single, _ = heal_tiny(tmp_path / "single")
    expected = {name: tensor for name, tensor in single.state_dict().items() if tensor.is_floating_point()}
    before = tiny_transplant(make_bpe_tokenizer()).state_dict()
    assert set(expected) <= set(ranks[0]) and set(ranks[0]) == set(ranks[1])
    for name, tensor in expected.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between ranks"
        # The lines differ in length: a per-rank mean loss would not give this (it differed by 2e-3 here).
        assert torch.allclose(ranks[0][name], tensor, atol=1e-6), f"{name}: two processes != one process"
    moved = [name for name in expected if not torch.equal(before[name], expected[name])]
    assert "model.lm_head.weight" in moved and "model.model.embed_tokens.weight" in moved
