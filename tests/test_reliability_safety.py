"""Nothing unsafe runs: no unpickling unless asked for, no checkpoint code unless asked for, no dynamic
code or network in the files shipped inside checkpoints, and a saved checkpoint never reads its sources.

Extends tests/test_remote_code.py (shipped files import only torch/transformers/stdlib) and the
reader tests (pickle weights refused without allow_pickle; a tokenizer that needs custom code names
trust_remote_code=True).
"""

from __future__ import annotations

import ast
import builtins
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification

import hf_embfuse
from hf_embfuse.checkpoint_folder import content_hash
from hf_embfuse.cli import main
from tests.fixtures_sources import save_tiny_checkpoint
from tests.reliability_helpers import GLOVE_WORDS, tiny_recipe

pytestmark = pytest.mark.timeout(300)

IDS = torch.tensor([[2, 8, 9, 10, 11, 3]])


class Tripwire:
    """Replaces functions that must not run; records each call (a broad `except` in the code under test
    cannot hide it) and raises."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, targets: list[tuple[object, str]]) -> None:
        self.calls: list[str] = []
        for owner, name in targets:
            monkeypatch.setattr(owner, name, self._trap(f"{getattr(owner, '__name__', owner)}.{name}"))

    def _trap(self, label: str):
        def trap(*args, **kwargs):
            self.calls.append(label)
            raise AssertionError(f"{label} was called")

        return trap


UNPICKLERS = [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]


def _recipe_with_npy(folder: Path) -> Path:
    """The tiny four-source recipe plus a `.npy` + vocabulary source: every reader but `.bin`."""
    recipe = tiny_recipe(folder)
    np.save(
        folder / "glove.npy",
        np.random.default_rng(0).standard_normal((len(GLOVE_WORDS), 6)).astype(np.float32),
    )
    (folder / "glove.vocab").write_text("\n".join(GLOVE_WORDS) + "\n")
    data = yaml.safe_load(recipe.read_text())
    data["sources"].append({"path": str(folder / "glove.npy"), "projection": "transport", "transport_k": 3})
    recipe.write_text(yaml.safe_dump(data))
    return recipe


def test_no_unpickling_while_building_loading_inspecting_and_baking(tmp_path, monkeypatch, capsys):
    recipe = _recipe_with_npy(tmp_path / "src")
    monkeypatch.setenv("HF_EMBFUSE_CACHE", str(tmp_path / "cache"))
    tripwire = Tripwire(monkeypatch, UNPICKLERS)
    out = tmp_path / "out"
    assert main(["build", str(recipe), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["sources"][5]["kind"] == "vectors"
    model = hf_embfuse.EmbFuseForSequenceClassification.from_pretrained(out).eval()
    remote = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, remote(input_ids=IDS).logits)
    assert main(["inspect", str(out)]) == 0
    assert main(["bake", str(out), "--out", str(tmp_path / "baked")]) == 0
    assert tripwire.calls == []


def _pickle_checkpoint(folder: Path, state: dict) -> None:
    save_tiny_checkpoint(folder, "gpt2")
    for file in folder.glob("*.safetensors"):
        file.unlink()
    torch.save(state, folder / "pytorch_model.bin")


class _WritesAMarker:
    """Unpickling this object calls `open(marker, "w")`: what a malicious pickle does, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _build(recipe_folder: Path, base: Path, source: dict, out: Path) -> int:
    recipe = recipe_folder / "pickle.yaml"
    recipe.write_text(yaml.safe_dump({"base": str(base), "sources": [source]}))
    return main(["build", str(recipe), "--out", str(out), "--no-progress"])


def test_pickle_only_on_opt_in_and_then_only_weights(tmp_path, monkeypatch, capsys):
    recipe = tiny_recipe(tmp_path / "src")  # for its base model
    base = Path(yaml.safe_load(recipe.read_text())["base"])
    benign, hostile = tmp_path / "benign", tmp_path / "hostile"
    _pickle_checkpoint(benign, {"wte.weight": torch.randn(65, 16)})
    marker = tmp_path / "MARKER"
    _pickle_checkpoint(hostile, {"wte.weight": torch.randn(65, 16), "extra": _WritesAMarker(marker)})

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    # Not opted in: refused before anything is unpickled.
    assert _build(tmp_path, base, {"path": str(benign)}, tmp_path / "o1") == 2
    assert "allow_pickle" in capsys.readouterr().err and calls == []
    # Opted in: read with weights_only=True.
    assert _build(tmp_path, base, {"path": str(benign), "allow_pickle": True}, tmp_path / "o2") == 0
    assert calls and all(weights_only is True for weights_only in calls)
    # Opted in, but the pickle carries code: weights_only refuses it, nothing runs.
    capsys.readouterr()
    assert _build(tmp_path, base, {"path": str(hostile), "allow_pickle": True}, tmp_path / "o3") == 2
    assert "holds more than tensors" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "o3").exists()
    # The hostile file is real: unpickling it without weights_only does run its payload.
    real_load(hostile / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def _add_custom_code(folder: Path, marker: Path) -> None:
    """Make `folder` a checkpoint whose config and tokenizer need its own Python files, each of which appends
    its module name to `marker` when imported."""
    payload = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for module in ("configuration_my", "modeling_my", "tokenization_my"):
        (folder / f"{module}.py").write_text(payload)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="my-custom-arch",
        auto_map={"AutoConfig": "configuration_my.MyConfig", "AutoModel": "modeling_my.MyModel"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.update(
        tokenizer_class="MyTokenizer", auto_map={"AutoTokenizer": ["tokenization_my.MyTokenizer", None]}
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


@pytest.mark.parametrize("where", ["source", "base"])
def test_checkpoint_code_never_runs_and_never_prompts(tmp_path, monkeypatch, capsys, where):
    recipe = tiny_recipe(tmp_path / "src")
    data = yaml.safe_load(recipe.read_text())
    data["sources"] = data["sources"][:1]  # the GPT-2 checkpoint
    marker = tmp_path / "MARKER"
    _add_custom_code(Path(data["base"] if where == "base" else data["sources"][0]["path"]), marker)
    recipe.write_text(yaml.safe_dump(data))
    tripwire = Tripwire(monkeypatch, [(builtins, "input")])  # transformers asks [y/N] when left unset

    assert main(["build", str(recipe), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    expected = "pass trust_remote_code=True" if where == "source" else "needs its own Python code"
    assert expected in error, error
    assert not marker.exists(), marker.read_text()
    assert tripwire.calls == []
    if where == "source":
        # Not vacuous: with the opt-in the same checkpoint's code does run.
        data["sources"][0]["trust_remote_code"] = True
        recipe.write_text(yaml.safe_dump(data))
        main(["build", str(recipe), "--out", str(tmp_path / "out"), "--no-progress"])
        assert marker.exists()


# Imports and calls the files shipped inside checkpoints must never contain: network access, processes,
# dynamic code, deserialisation, Hub access.
BANNED_MODULES = {
    "socket", "ssl", "urllib", "http", "requests", "httpx", "aiohttp", "ftplib", "smtplib", "xmlrpc",
    "subprocess", "multiprocessing", "ctypes", "pickle", "marshal", "shelve", "importlib", "runpy",
    "code", "codeop", "pty", "webbrowser", "huggingface_hub", "os", "sys", "shutil", "tempfile",
}  # fmt: skip
BANNED_CALLS = {"exec", "eval", "compile", "__import__", "breakpoint", "open", "input", "globals", "vars"}
BANNED_ATTRIBUTE_CALLS = {"system", "popen", "spawnv", "execv", "load", "hub", "urlopen", "import_module"}


def _shipped_files(tmp_path: Path) -> list[Path]:
    from tests.fixtures_models import tiny_fused

    tiny_fused("bert").save_pretrained(tmp_path / "ckpt")
    return sorted((tmp_path / "ckpt").glob("*.py"))


def banned_constructs(source: str) -> list[str]:
    """Each banned import, call or name in Python `source`, as `line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import):
            found += [
                f"{line}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            root = (node.module or "").split(".")[0]
            names = {a.name for a in node.names}
            if root in BANNED_MODULES or (root == "torch" and names & {"hub", "load"}):
                found.append(f"{line}: from {node.module} import {sorted(names)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BANNED_CALLS:
            found.append(f"{line}: {node.func.id}()")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in BANNED_ATTRIBUTE_CALLS
        ):
            found.append(f"{line}: .{node.func.attr}()")
        elif isinstance(node, ast.Name) and node.id in {"__builtins__", "__loader__"}:
            found.append(f"{line}: {node.id}")
    return found


def test_shipped_files_have_no_network_process_or_dynamic_code(tmp_path):
    files = _shipped_files(tmp_path)
    assert [f.name for f in files] == ["configuration_embfuse.py", "modeling_embfuse.py"]
    for file in files:
        assert banned_constructs(file.read_text()) == [], file.name


@pytest.mark.parametrize(
    "snippet",
    [
        "import socket",
        "from urllib.request import urlopen",
        "import subprocess as sp",
        "import os",
        "eval('1')",
        "exec('x = 1')",
        "compile('1', 'f', 'eval')",
        "__import__('os')",
        "open('/etc/passwd')",
        "torch.load('x.pt')",
        "torch.hub.load('a', 'b')",
        "from torch import hub",
        "__builtins__['eval']('1')",
    ],
)
def test_the_ast_check_catches_what_it_bans(snippet):
    assert banned_constructs(snippet), snippet


def test_a_saved_checkpoint_never_reads_its_sources(tmp_path, monkeypatch, capsys):
    recipe = tiny_recipe(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["build", str(recipe), "--out", str(out), "--no-progress"]) == 0
    model = hf_embfuse.EmbFuseForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    weights_hash = content_hash(out)

    shutil.move(tmp_path / "src", tmp_path / "moved-away")  # base and every source gone
    tripwire = Tripwire(
        monkeypatch,
        [
            (hf_embfuse.sources, "read_source"),
            (hf_embfuse.build, "read_source"),
            (hf_embfuse.sources.dispatch, "read_hf_source"),
            (hf_embfuse.sources.dispatch, "read_gguf_source"),
            (hf_embfuse.sources.dispatch, "read_vectors_source"),
        ],
    )
    loaded = hf_embfuse.EmbFuseForSequenceClassification.from_pretrained(out).eval()
    remote = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, expected)
        assert torch.equal(remote(input_ids=IDS).logits, expected)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert weights_hash in capsys.readouterr().out
    assert tripwire.calls == []
    # Provenance names the sources by Hub id or file name, never by this machine's paths.
    config = json.loads((out / "config.json").read_text())
    assert all(source["name"] for source in config["sources"])
    assert str(tmp_path) not in (out / "config.json").read_text()
