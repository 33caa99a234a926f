"""Reproducible builds: the same recipe, sources and seed give byte-identical output folders.

Volatile by design (documented in README.md, "Reproducible builds"): the source paths kept as provenance in
config.json / embfuse_report.json (they are what the recipe says), and `transformers_version`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from hf_embfuse.checkpoint_folder import content_hash
from hf_embfuse.cli import main
from tests.reliability_helpers import cli_env, file_hashes, run_cli, tiny_recipe

pytestmark = pytest.mark.timeout(300)


def _inspect_hash(folder: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["inspect", str(folder)]) == 0
    shown = capsys.readouterr().out
    match = re.search(r"content hash \(sha256 of weights\): ([0-9a-f]{64})", shown)
    assert match, shown
    return match.group(1)


def test_two_builds_in_different_processes_are_byte_identical(tmp_path, monkeypatch, capsys):
    recipe = tiny_recipe(tmp_path / "sources")
    cache = tmp_path / "cache"
    first, second = tmp_path / "first", tmp_path / "second"

    # First build: in this process, global RNG disturbed, GGUF tokenizer converted (cache empty).
    monkeypatch.setenv("HF_EMBFUSE_CACHE", str(cache))
    torch.manual_seed(12345)
    torch.rand(100)
    assert main(["build", str(recipe), "--out", str(first), "--no-progress"]) == 0
    assert any(cache.rglob("tokenizer.json")), "the GGUF tokenizer should now be cached"

    # Second build: another process, another str-hash seed, the GGUF tokenizer read from the cache.
    env = cli_env(PYTHONHASHSEED="4321", HF_EMBFUSE_CACHE=str(cache))
    result = run_cli("build", str(recipe), "--out", str(second), "--no-progress", env=env)
    assert result.returncode == 0, result.stderr

    hashes = file_hashes(first)
    assert {"model.safetensors", "config.json", "embfuse_report.json", "tokenizer.json"} <= set(hashes)
    assert hashes == file_hashes(second)  # every file, not only the weights
    assert _inspect_hash(first, capsys) == _inspect_hash(second, capsys) == content_hash(first)

    config = (first / "config.json").read_text()
    assert str(first) not in config and str(second) not in config, "the output path must not be recorded"


def test_moving_the_sources_changes_nothing(tmp_path):
    """The checkpoint depends on the sources' bytes, not on where they lie: config.json names them by file
    name, never by this machine's paths."""
    recipe = tiny_recipe(tmp_path / "a")
    assert main(["build", str(recipe), "--out", str(tmp_path / "out-a"), "--no-progress"]) == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = yaml.safe_load(
        (tmp_path / "b" / "recipe.yaml").read_text().replace(str(tmp_path / "a"), str(tmp_path / "b"))
    )
    (tmp_path / "b" / "recipe.yaml").write_text(yaml.safe_dump(moved))
    assert (
        main(
            ["build", str(tmp_path / "b" / "recipe.yaml"), "--out", str(tmp_path / "out-b"), "--no-progress"]
        )
        == 0
    )

    a, b = file_hashes(tmp_path / "out-a"), file_hashes(tmp_path / "out-b")
    assert a["model.safetensors"] == b["model.safetensors"]
    config_a = (tmp_path / "out-a" / "config.json").read_text()
    config_b = (tmp_path / "out-b" / "config.json").read_text()
    assert str(tmp_path) not in config_a
    assert config_a == config_b


def test_the_seed_matters(tmp_path):
    """Not vacuous: another seed (another held-out split for the linear map) gives other weights."""
    recipe = tiny_recipe(tmp_path / "src")
    other = tmp_path / "seed8.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(recipe.read_text()), "seed": 8}))
    assert main(["build", str(recipe), "--out", str(tmp_path / "seed7"), "--no-progress"]) == 0
    assert main(["build", str(other), "--out", str(tmp_path / "seed8"), "--no-progress"]) == 0
    assert content_hash(tmp_path / "seed7") != content_hash(tmp_path / "seed8")
    config = json.loads((tmp_path / "seed8" / "config.json").read_text())
    assert config["sources"][1]["projection"] == "linear"
