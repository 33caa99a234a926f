"""Checkpoints load anywhere with trust_remote_code, through every Auto class, without hf_embfuse."""

import ast
import json
from pathlib import Path

import pytest
import torch

import hf_embfuse
from hf_embfuse.modeling_embfuse import TASKS
from tests.fixtures_models import VOCAB, tiny_fused
from tests.fresh_process import load_in_fresh_process

SHIPPED = ["configuration_embfuse.py", "modeling_embfuse.py"]
CASES = [
    ("bert", "sequence-classification", "AutoModelForSequenceClassification", "bert"),
    ("gpt2", "causal-lm", "AutoModelForCausalLM", "transformer"),
    ("llama", "causal-lm", "AutoModelForCausalLM", "model"),
]


def test_checkpoints_load_in_a_fresh_process_without_hf_embfuse(tmp_path):
    """Three architectures, each through AutoModel and through its task's Auto class, all in one child."""
    requests, expected = [], []
    input_ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    for arch, task, auto_class, backbone in CASES:
        fused = tiny_fused(arch, task, mixing="gated")
        torch.nn.init.normal_(fused.get_input_embeddings().mixer.gate, std=0.3)
        folder = tmp_path / arch
        fused.save_pretrained(folder)
        assert sorted(p.name for p in folder.glob("*.py")) == SHIPPED
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert set(auto_map) == {"AutoConfig", *(task.auto_class.__name__ for task in TASKS)}
        with torch.no_grad():
            expected.append(fused(input_ids=input_ids).logits)
            expected.append(getattr(fused.base_model, backbone)(input_ids=input_ids).last_hidden_state)
        requests += [(folder, auto_class, input_ids), (folder, "AutoModel", input_ids)]
    outputs = load_in_fresh_process(requests, tmp_path / "child")
    for got, want in zip(outputs, expected, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-6, rtol=0)


def test_child_really_cannot_import_hf_embfuse(tmp_path):
    """The isolation itself: a folder without the code files fails to load in the same child setup."""
    fused = tiny_fused("bert")
    fused.save_pretrained(tmp_path / "model")
    for name in SHIPPED:
        (tmp_path / "model" / name).unlink()
    with pytest.raises(RuntimeError, match="child process failed"):
        load_in_fresh_process([(tmp_path / "model", "AutoModel", torch.tensor([[5]]))], tmp_path / "child")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_import_only_torch_transformers_stdlib_and_each_other(name):
    import sys

    source = (Path(hf_embfuse.__file__).parent / name).read_text()
    allowed_roots = {"torch", "transformers"} | set(sys.stdlib_module_names)
    siblings = {Path(s).stem for s in SHIPPED}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: must be a sibling shipped file
                assert node.module in siblings, f"{name} imports .{node.module}"
                continue
            roots = [(node.module or "").split(".")[0]]
        else:
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                "exec",
                "eval",
                "__import__",
            ):
                raise AssertionError(f"{name} calls {node.func.id}")
            continue
        for root in roots:
            assert root in allowed_roots, f"{name} imports {root}"


def test_relative_work_folder(tmp_path, monkeypatch):
    """`make demo` passes a relative folder; the child runs inside it, so paths must be made absolute."""
    fused = tiny_fused("bert")
    fused.save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    input_ids = torch.tensor([[5, 6, 7]])
    (got,) = load_in_fresh_process([(Path("model"), "AutoModel", input_ids)], Path("child"))
    with torch.no_grad():
        assert torch.allclose(got, fused(input_ids=input_ids).last_hidden_state, atol=1e-6)
