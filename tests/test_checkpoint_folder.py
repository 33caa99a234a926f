"""The one checkpoint-folder module: load, content hash, mean mixing weights, and the stored initialization."""

from __future__ import annotations

import json

import torch

import hf_embfuse
from hf_embfuse.checkpoint_folder import content_hash, load_embfuse_folder, mean_mixing_weights
from hf_embfuse.cli import main
from hf_embfuse.evaluation.fused import table_names
from hf_embfuse.wrap import SourceSpec, from_base
from tests.fixtures_models import HIDDEN, VOCAB, tiny_base, tiny_fused


def _made_by_transport_and_linear():
    """Two sources whose provenance (`projection_fit`) disagrees with how they were initialised."""
    generator = torch.Generator().manual_seed(0)
    sources = [
        SourceSpec(
            table=torch.randn(VOCAB, HIDDEN, generator=generator),
            projection="identity",
            initialization="transport",
            info={"name": "moved", "projection_fit": {"method": "procrustes"}},
        ),
        SourceSpec(
            table=torch.randn(VOCAB, 16, generator=generator),
            projection="linear",
            initialization="linear",
            info={"name": "mapped", "projection_fit": {"method": "ridge"}},
        ),
    ]
    return from_base(tiny_base("bert"), sources, mixing="learned").eval()


def test_load_hash_and_mean_weights(tmp_path):
    fused = tiny_fused("bert", "sequence-classification")
    with torch.no_grad():
        fused.get_input_embeddings().mixer.logits.copy_(torch.tensor([2.0, 0.0, -1.0]))
    fused.save_pretrained(tmp_path / "a")
    loaded = load_embfuse_folder(tmp_path / "a")
    assert type(loaded) is hf_embfuse.EmbFuseForSequenceClassification
    assert hf_embfuse.load_embfuse_folder is load_embfuse_folder
    expected = [round(float(w), 4) for w in fused.get_input_embeddings().mean_mixing_weights()]
    assert mean_mixing_weights(tmp_path / "a") == expected and expected[0] > expected[1] > expected[2]
    with torch.no_grad():
        fused.get_input_embeddings().mixer.logits.add_(1e-3)
    fused.save_pretrained(tmp_path / "b")
    assert content_hash(tmp_path / "a") != content_hash(tmp_path / "b")
    fused.save_pretrained(tmp_path / "c")
    assert content_hash(tmp_path / "b") == content_hash(tmp_path / "c")


def test_inspect_and_eval_names_read_the_stored_initialization(tmp_path, capsys):
    fused = _made_by_transport_and_linear()
    fused.save_pretrained(tmp_path / "fused")
    assert main(["inspect", str(tmp_path / "fused"), "--json"]) == 0
    sources = json.loads(capsys.readouterr().out)["sources"]
    assert [s["initialization"] for s in sources] == ["identity", "transport", "linear"]
    assert [s["projection"] for s in sources] == ["identity", "identity", "linear"]
    assert main(["inspect", str(tmp_path / "fused")]) == 0
    table = capsys.readouterr().out
    assert "transport" in table and "procrustes" not in table and "ridge" not in table
    names = table_names(fused.config)
    assert names[1:] == ["moved (transport)", "mapped (linear)"]
