"""Bad input to a vocabulary transfer: one clear error naming the input and the fix, nothing left on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf_embfuse.cli import main
from hf_embfuse.recipe import RecipeError, load_recipe
from hf_embfuse.transfer import TargetError, read_added_tokens
from tests.fixtures_models import tiny_base
from tests.fixtures_tokenizers import make_bpe_tokenizer, make_wordpiece_tokenizer


@pytest.fixture
def base_folder(tmp_path: Path) -> Path:
    """A tiny GPT-2-like base with its byte-level BPE tokenizer, saved as a folder (it is its own source too)."""
    tokenizer = make_bpe_tokenizer()
    folder = tmp_path / "base"
    tiny_base("gpt2", "causal-lm", vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _build(
    tmp_path: Path, base: Path, capsys, source: dict | None = None, **fields
) -> tuple[int, str, Path, str]:
    recipe = tmp_path / "recipe.yaml"
    data = {
        "base": str(base),
        "task": "causal-lm",
        "sources": [{"path": str(base), **(source or {})}],
        **fields,
    }
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "out"
    status = main(["build", str(recipe), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    return status, captured.err, out, captured.out


def _assert_refused(status: int, err: str, out: Path, *words: str) -> None:
    assert status == 2
    # One error (progress bars of the base's loading may come before it; a recipe error lists its keys below).
    lines = [line for line in err.splitlines() if line.startswith("hf-embfuse")]
    assert len(lines) == 1 and "Traceback" not in err, err
    message = err[err.index(lines[0]) :]
    for word in words:
        assert word in message, message
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out")]  # no staging folder left


def test_a_missing_target_tokenizer_is_named(tmp_path, base_folder, capsys):
    status, err, out, _printed = _build(
        tmp_path, base_folder, capsys, tokenizer=str(tmp_path / "no-such-tokenizer")
    )
    _assert_refused(status, err, out, "no-such-tokenizer", "not found", "source:N")


def test_a_target_sharing_almost_no_tokens_with_the_base_is_refused_unless_allowed(
    tmp_path, base_folder, capsys
):
    greek = make_wordpiece_tokenizer(["αβγ", "δεζ", "ηθι", "κλμ", "##νξ", "##οπ", "α", "β", "γ", "δ", "##ε"])
    folder = tmp_path / "greek"
    greek.save_pretrained(folder)
    status, err, out, _printed = _build(tmp_path, base_folder, capsys, tokenizer=str(folder))
    _assert_refused(status, err, out, "shares 0.00%", "allow_low_overlap")

    # Allowed, it builds: nothing to transport through (no anchors), so the source's rows are used as they are.
    status, err, out, _printed = _build(
        tmp_path,
        base_folder,
        capsys,
        {"projection": "identity"},
        tokenizer=str(folder),
        allow_low_overlap=True,
    )
    assert status == 0, err
    assert out.is_dir() and (out / "tokenizer.json").is_file()
    # The target is named like a source (its folder's name): no path of this machine in the checkpoint.
    assert json.loads((out / "embfuse_report.json").read_text())["target"]["tokenizer"] == "greek"
    assert str(tmp_path) not in (out / "config.json").read_text()


def test_a_special_token_without_a_role_is_refused(tmp_path, base_folder, capsys):
    status, err, out, _printed = _build(
        tmp_path, base_folder, capsys, added_tokens=[{"content": "<|tool|>", "special": True}]
    )
    _assert_refused(status, err, out, "added_tokens.0", "<|tool|>", "has no role")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"base": "b", "sources": [{"path": "s"}], "added_tokens": [{"content": "<x>", "special": True}]}
        )
    )
    with pytest.raises(RecipeError, match="role"):
        load_recipe(recipe)


def test_added_tokens_file_rules(tmp_path, base_folder, capsys):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("photosynthesis\n\n<|im_start|>\tadditional\n<|endoftext|>\n", encoding="utf-8")
    entries = read_added_tokens(tokens)
    assert [(t.content, t.role) for t in entries] == [
        ("photosynthesis", None),
        ("<|im_start|>", "additional"),
        ("<|endoftext|>", None),
    ]
    bad = tmp_path / "bad.txt"
    bad.write_text("fine\n<|tool|>\tspecial\n", encoding="utf-8")
    with pytest.raises(TargetError, match=r"bad.txt:2: special token '<\|tool\|>' has no role"):
        read_added_tokens(bad)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(TargetError, match="not UTF-8"):
        read_added_tokens(latin1)
    with pytest.raises(TargetError, match="does not exist"):
        read_added_tokens(tmp_path / "missing.txt")

    status, err, out, printed = _build(tmp_path, base_folder, capsys, added_tokens_file=str(bad))
    _assert_refused(status, err, out, "bad.txt:2", "has no role")

    # Tokens the base already has are reported, not added twice.
    status, err, out, printed = _build(tmp_path, base_folder, capsys, added_tokens_file=str(tokens))
    assert status == 0, err
    assert "target vocabulary base + added tokens (311 tokens" in printed
    assert "matched" in printed and "left out" in printed
    report = json.loads((out / "embfuse_report.json").read_text())["target"]
    assert report["added_tokens"]["added"] == ["photosynthesis", "<|im_start|>"]
    assert report["added_tokens"]["existing"] == ["<|endoftext|>"]
    assert report["size"] == len(make_bpe_tokenizer()) + 2
