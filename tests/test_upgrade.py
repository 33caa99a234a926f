"""Format-1 checkpoints (keys without the wrapper's prefix) are refused with the upgrade command, which works."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_embfuse
from hf_embfuse.cli import main
from tests.fixtures_models import VOCAB, tiny_fused

CASES = [("bert", "sequence-classification"), ("gpt2", "causal-lm"), ("llama", "causal-lm")]


def as_format_1(fused, folder):
    """What format 1 wrote: the base model's own keys (no wrapper prefix), `format_version` 1."""
    fused.save_pretrained(folder)
    prefix = fused.base_model_prefix + "."
    state = load_file(folder / "model.safetensors")
    save_file({key.removeprefix(prefix): value for key, value in state.items()}, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    (folder / "tokenizer.json").write_text("{}")  # anything else in the folder is carried over
    return folder


@pytest.mark.parametrize(("arch", "task"), CASES)
def test_format_1_is_refused_then_upgraded_in_place(tmp_path, capsys, arch, task):
    fused = tiny_fused(arch, task, mixing="gated")
    torch.nn.init.normal_(fused.get_input_embeddings().mixer.gate, std=0.3)
    folder = as_format_1(fused, tmp_path / "old")
    wrapper = type(fused)
    with pytest.raises(ValueError, match="hf-embfuse upgrade DIR"):
        wrapper.from_pretrained(folder)

    assert main(["upgrade", str(folder)]) == 0
    assert json.loads((folder / "config.json").read_text())["format_version"] == 2
    assert (folder / "tokenizer.json").read_text() == "{}"
    upgraded = wrapper.from_pretrained(folder).eval()
    x = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(upgraded(input_ids=x).logits, fused(input_ids=x).logits)
    if arch == "gpt2":
        assert upgraded.get_output_embeddings().weight is upgraded.get_input_embeddings().weight


def test_upgrade_refuses_a_current_checkpoint_and_writes_nothing(tmp_path, capsys):
    tiny_fused("bert").save_pretrained(tmp_path / "new")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["upgrade", str(tmp_path / "new"), "--out", str(tmp_path / "out")]) == 2
    assert "already in format 2" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_upgrade_to_another_folder_keeps_the_original(tmp_path):
    fused = tiny_fused("bert")
    old = as_format_1(fused, tmp_path / "old")
    assert main(["upgrade", str(old), "--out", str(tmp_path / "new")]) == 0
    assert json.loads((old / "config.json").read_text())["format_version"] == 1
    assert isinstance(hf_embfuse.EmbFuseModel.from_pretrained(tmp_path / "new"), hf_embfuse.EmbFuseModel)
