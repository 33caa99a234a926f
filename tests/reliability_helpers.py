"""Shared pieces of the reliability tests: on-disk recipes of tiny and killably-sized builds, CLI runs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification

from tests.fixtures_sources import random_table, save_tiny_checkpoint, vector_lines, write_tiny_gguf
from tests.fixtures_tokenizers import make_wordpiece_tokenizer

REPO = Path(__file__).resolve().parent.parent
GLOVE_WORDS = ["the", "cat", "sat", "on", "mat", "dog", *[f"w{i}" for i in range(40)]]


def tiny_recipe(folder: Path, **overrides: object) -> Path:
    """A tiny BERT base with four sources, one of each reader and projection: HF (linear), GloVe text
    (transport), GGUF Q8_0 (transport) and the GPT-2 table again at equal width (identity)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_tiny_checkpoint(folder / "base", "bert", "BertForSequenceClassification")
    save_tiny_checkpoint(folder / "gpt2", "gpt2", seed=1)
    glove = folder / "glove.txt"
    glove.write_text("\n".join(vector_lines(GLOVE_WORDS, random_table(len(GLOVE_WORDS), 8))) + "\n")
    write_tiny_gguf(folder / "tiny.gguf")
    recipe = {
        "base": str(folder / "base"),
        "task": "sequence-classification",
        "num_labels": 2,
        "mixing": "gated",
        "seed": 7,
        "sources": [
            {"path": str(folder / "gpt2"), "projection": "linear"},
            {"path": str(glove), "projection": "transport", "transport_k": 3},
            {"path": str(folder / "tiny.gguf"), "projection": "transport", "allow_low_coverage": True},
            {"path": str(folder / "gpt2"), "projection": "identity", "name": "gpt2-identity"},
        ],
        **overrides,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def killable_recipe(folder: Path, vocab: int = 8000, width: int = 64) -> Path:
    """A build big enough to take a second or two and write a few MB, so that it can be killed mid-way:
    a 1-layer BERT over a `vocab`-word WordPiece vocabulary and a static-vector source of those words,
    used twice (transport and linear)."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(vocab)]
    tokenizer = make_wordpiece_tokenizer(words, lowercase=False, specials=specials)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(specials) + vocab,
        hidden_size=width,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    values = np.random.default_rng(0).standard_normal((vocab, 24)).astype(np.float32)
    (folder / "vectors.txt").write_text("\n".join(vector_lines(words, values)) + "\n")
    recipe = {
        "base": str(folder / "base"),
        "task": "sequence-classification",
        "num_labels": 2,
        "sources": [
            {"path": str(folder / "vectors.txt"), "projection": "transport"},
            {"path": str(folder / "vectors.txt"), "projection": "linear", "name": "vectors-linear"},
        ],
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in `folder`, by name."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a child `python -m hf_embfuse.cli`: offline, one thread, this repository first."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def run_cli(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m hf_embfuse.cli ARGV` in a child process; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "hf_embfuse.cli", *argv],
        env=env or cli_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
