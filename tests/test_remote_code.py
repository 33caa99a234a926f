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


@pytest.fixture(scope="module")
def fresh_child(tmp_path_factory) -> dict:
    """One child process for this file's fresh loads: three architectures, each through AutoModel and through
    its task's Auto class, plus a folder handed over by a relative path, as `make demo` does. Returns the
    saved folders, what the models computed here, and what the child computed."""
    root = tmp_path_factory.mktemp("remote-code")
    requests, expected, folders = [], [], {}
    input_ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    for arch, task, auto_class, backbone in CASES:
        fused = tiny_fused(arch, task, mixing="gated")
        torch.nn.init.normal_(fused.get_input_embeddings().mixer.gate, std=0.3)
        folders[arch] = root / arch
        fused.save_pretrained(folders[arch])
        with torch.no_grad():
            expected.append(fused(input_ids=input_ids).logits)
            expected.append(getattr(fused.base_model, backbone)(input_ids=input_ids).last_hidden_state)
        requests += [(folders[arch], auto_class, input_ids), (folders[arch], "AutoModel", input_ids)]
    relative = tiny_fused("bert")
    relative.save_pretrained(root / "relative")
    relative_ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        expected.append(relative(input_ids=relative_ids).last_hidden_state)
    # The child runs inside its work folder, so every relative path must be made absolute before it starts.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        outputs = load_in_fresh_process(
            [*requests, (Path("relative"), "AutoModel", relative_ids)], Path("child")
        )
    return {"folders": folders, "expected": expected, "outputs": outputs}


def test_checkpoints_load_in_a_fresh_process_without_hf_embfuse(fresh_child):
    """Three architectures, each through AutoModel and through its task's Auto class, all in one child."""
    for arch, *_ in CASES:
        folder = fresh_child["folders"][arch]
        assert sorted(p.name for p in folder.glob("*.py")) == SHIPPED
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert set(auto_map) == {"AutoConfig", *(entry.auto_class.__name__ for entry in TASKS)}
    pairs = list(zip(fresh_child["outputs"], fresh_child["expected"], strict=True))[: 2 * len(CASES)]
    for got, want in pairs:
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


def test_relative_work_folder(fresh_child):
    """`make demo` passes a relative folder; the child runs inside it, so paths must be made absolute."""
    got, want = fresh_child["outputs"][-1], fresh_child["expected"][-1]
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-6)
