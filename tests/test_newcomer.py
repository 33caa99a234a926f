"""What a newcomer meets: inspect names the vocabulary, eval --text counts only the tokens the user added."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hf_embfuse.cli import main
from hf_embfuse.model_card import build_model_card
from hf_embfuse.wrap import from_base
from tests.fixtures_models import random_sources, tiny_base, tiny_fused
from tests.fixtures_tokenizers import make_bpe_tokenizer

TARGET = "/models/gemma-3-270m/tokenizer"


def transplanted_folder(folder, added: list[str]):
    """A causal LM folder as a transplant onto `TARGET` writes it: the target's record in the base entry.

    The tokenizer has two non-special added tokens of its own ("\\n\\n\\n", "zebra"); the build added `added`.
    """
    tokenizer = make_bpe_tokenizer()
    tokenizer.add_tokens(["\n\n\n", "zebra"])
    model = from_base(
        tiny_base("llama", "causal-lm", vocab_size=len(tokenizer)), random_sources(len(tokenizer))
    )
    model.config.sources[0]["target"] = {
        "tokenizer": TARGET,
        "size": len(tokenizer),
        "added_tokens": {"added": added, "existing": [], "roles": {}},
        "special_tokens": None,
    }
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("added", "expected"), [([], None), (["zebra"], "lines with the 1 added tokens: 2")])
def test_eval_text_counts_only_the_tokens_the_build_added(tmp_path, capsys, added, expected):
    folder = transplanted_folder(tmp_path / "model", added)
    text = tmp_path / "lines.txt"
    text.write_text("the zebra walked\n\n\n\nthe cat\na zebra in Paris\n", encoding="utf-8")
    out = tmp_path / "report.json"
    assert main(["eval", str(folder), "--text", str(text), "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    if expected is None:
        assert "added tokens" not in printed and "added_token_lines" not in report
    else:
        assert expected in printed and report["added_token_lines"]["added_tokens"] == 1


def test_inspect_names_the_target_vocabulary_and_its_source(tmp_path, capsys):
    folder = transplanted_folder(tmp_path / "model", ["zebra"])
    assert main(["inspect", str(folder)]) == 0
    printed = capsys.readouterr().out
    size = len(make_bpe_tokenizer()) + 2
    assert (
        f"vocabulary: {TARGET} + 1 added tokens ({size:,} tokens), transferred onto the base model" in printed
    )
    assert main(["inspect", str(folder), "--json"]) == 0
    vocabulary = json.loads(capsys.readouterr().out)["vocabulary"]
    assert vocabulary == {"tokenizer": TARGET, "size": size, "added_tokens": ["zebra"]}


def test_inspect_says_the_vocabulary_is_the_bases_own(tmp_path, capsys):
    tiny_fused("bert").save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    assert "vocabulary: the base model's own (97 tokens)" in capsys.readouterr().out


# A clean child: the tokenizer with remote code trusted, then (hf_embfuse imported) without it.
TOKENIZER_CHILD = """
import sys
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
import hf_embfuse
AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=False)
print("loaded")
"""


def test_loading_the_tokenizer_as_the_card_says_prints_no_model_type_warning(tmp_path):
    folder = transplanted_folder(tmp_path / "model", [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", TOKENIZER_CHILD, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0 and "loaded" in result.stdout, result.stderr
    assert "You are using a model of type" not in result.stderr
    card = build_model_card(json.loads((folder / "config.json").read_text()))
    assert 'AutoTokenizer.from_pretrained("path/to/checkpoint", trust_remote_code=True)' in card.text
