"""Vocabulary transfer on tiny in-memory tokenizers: the model gets the target's vocabulary and tokenizer.

WordPiece -> BPE (an MLM with a tied decoder and its bias), BPE -> Unigram (tied and untied LM heads),
and added tokens. Each saved folder reloads in a fresh process without hf_embfuse, with the target's
tokenizer, and generates; baked equals fused.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hf_embfuse
from hf_embfuse.baking import bake
from tests.fixtures_models import tiny_base
from tests.fixtures_tokenizers import (
    DEFAULT_UNIGRAM_PIECES,
    make_bpe_tokenizer,
    make_unigram_tokenizer,
    make_wordpiece_tokenizer,
)
from tests.fresh_process import REPO

TEXT = "the cat play hello"

CHILD = r"""
import json, os, sys
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != REPO]
sys.modules["hf_embfuse"] = None  # any `import hf_embfuse` now raises ImportError
import torch, transformers
from safetensors.torch import save_file
folder, auto_class, text, out = sys.argv[1:5]
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)  # no remote code for the tokenizer
model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True).eval()
assert "hf_embfuse" not in type(model).__module__
ids = tokenizer(text, return_tensors="pt").input_ids
result = {"ids": ids.contiguous()}
with torch.no_grad():
    result["logits"] = model(input_ids=ids).logits.contiguous()
    if auto_class == "AutoModelForCausalLM":
        result["generated"] = model.generate(ids, max_new_tokens=4, do_sample=False).contiguous()
save_file(result, out)
json.dump({"vocab": tokenizer.get_vocab(), "eos": tokenizer.eos_token_id}, open(out + ".json", "w"))
"""


def _in_fresh_process(folder: Path, auto_class: str, workdir: Path) -> tuple[dict, dict]:
    out = str(workdir.resolve() / "child.safetensors")
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            f"REPO = {str(REPO)!r}\n" + CHILD,
            str(folder.resolve()),
            auto_class,
            TEXT,
            out,
        ],
        cwd=workdir,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return load_file(out), json.loads(Path(out + ".json").read_text())


def _donor(tmp_path: Path, tokenizer, arch: str, seed: int = 7) -> str:
    """A tiny model of `tokenizer`'s vocabulary saved with it: the donor that owns the target tokenizer."""
    folder = tmp_path / f"donor-{arch}"
    tiny_base(arch, "base", seed=seed, vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


CASES = {
    # name: (base arch, task, base tokenizer, target tokenizer, donor arch, auto class, output_head)
    "wordpiece->bpe (masked-lm, tied decoder + bias, untied by default)": (
        "bert",
        "masked-lm",
        make_wordpiece_tokenizer,
        make_bpe_tokenizer,
        "gpt2",
        "AutoModelForMaskedLM",
        "auto",
    ),
    "bpe->unigram (tied head kept tied)": (
        "gpt2",
        "causal-lm",
        make_bpe_tokenizer,
        make_unigram_tokenizer,
        "llama",
        "AutoModelForCausalLM",
        "tied",
    ),
    "bpe->unigram (untied head)": (
        "llama",
        "causal-lm",
        make_bpe_tokenizer,
        make_unigram_tokenizer,
        "gpt2",
        "AutoModelForCausalLM",
        "auto",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_transfer_reloads_in_a_fresh_process_with_the_target_tokenizer_and_bakes(case, tmp_path):
    arch, task, base_factory, target_factory, donor_arch, auto_class, head = CASES[case]
    base_tokenizer, target = base_factory(), target_factory()
    base = tiny_base(arch, task, vocab_size=len(base_tokenizer))
    donor = _donor(tmp_path, target, donor_arch)
    result = hf_embfuse.fuse(
        base,
        [{"path": donor}],
        task=task,
        base_tokenizer=base_tokenizer,
        tokenizer="source:1",
        allow_low_overlap=True,
        output_head=head,
    )
    model = result.model.eval()
    assert result.tokenizer.get_vocab() == target.get_vocab()
    assert model.get_input_embeddings().num_embeddings == len(target) == model.config.vocab_size
    assert model.get_output_embeddings().weight.shape[0] == len(target)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (head == "tied") == (result.transfer["head"] == "tied")
    if arch != "llama" and head == "auto":
        # A tied base head is untied and rebuilt as the mixture: at build time, the fused input table.
        torch.testing.assert_close(
            model.get_output_embeddings().weight, model.get_input_embeddings().fused_weight()
        )
    for role in ("pad", "bos", "eos"):
        assert getattr(model.config.base_config, f"{role}_token_id") == getattr(target, f"{role}_token_id")
    rows = result.transfer["rows"]
    assert set(rows) == {"base", Path(donor).name}
    assert result.transfer["tokenizer"] == f"source:1 ({Path(donor).name})"
    assert rows["base"]["matched"] > 0 and rows[Path(donor).name]["transported"] > 0

    folder = tmp_path / "fused"
    result.save_pretrained(folder)
    child, files = _in_fresh_process(folder, auto_class, tmp_path)
    assert files["vocab"] == target.get_vocab()
    ids = target(TEXT, return_tensors="pt").input_ids
    torch.testing.assert_close(child["ids"], ids)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        torch.testing.assert_close(child["logits"], logits, atol=1e-5, rtol=1e-5)
        baked = bake(model).eval()
        torch.testing.assert_close(baked(input_ids=ids).logits, logits, atol=1e-5, rtol=1e-5)
    if auto_class == "AutoModelForCausalLM":
        expected = model.generate(ids, max_new_tokens=4, do_sample=False)
        torch.testing.assert_close(child["generated"], expected)
        assert child["generated"].shape[1] > ids.shape[1]


def test_rows_follow_the_piece_rules_and_the_head_is_rebuilt_from_the_base_head(tmp_path):
    """Base weight 1: copied rows are the base's own, new input rows the mean of the base's pieces,
    new rows of an untied head the base head's first piece."""
    base_tokenizer = make_bpe_tokenizer()
    target = make_unigram_tokenizer((*DEFAULT_UNIGRAM_PIECES, "▁catdog"))
    base = tiny_base("llama", "causal-lm", vocab_size=len(base_tokenizer))
    old_input = base.get_input_embeddings().weight.detach().clone()
    old_head = base.get_output_embeddings().weight.detach().clone()
    donor = _donor(tmp_path, target, "gpt2")
    model = hf_embfuse.fuse(
        base,
        [{"path": donor, "weight": 0.0}],
        task="causal-lm",
        mixing="fixed",
        base_weight=1.0,
        base_tokenizer=base_tokenizer,
        tokenizer="source:1",
        allow_low_overlap=True,
        output_pieces="first",
    ).model
    fused = model.get_input_embeddings().fused_weight()
    head = model.get_output_embeddings().weight.detach()
    copied = target.convert_tokens_to_ids("▁cat")
    torch.testing.assert_close(fused[copied], old_input[base_tokenizer.convert_tokens_to_ids("Ġcat")])
    torch.testing.assert_close(head[copied], old_head[base_tokenizer.convert_tokens_to_ids("Ġcat")])
    # "▁catdog" is no base token: the base tokenizer cuts " catdog" into pieces.
    new = target.convert_tokens_to_ids("▁catdog")
    pieces = base_tokenizer(" catdog", add_special_tokens=False).input_ids
    assert len(pieces) > 1
    torch.testing.assert_close(fused[new], old_input[pieces].mean(0))
    torch.testing.assert_close(head[new], old_head[pieces[0]])


def test_output_pieces_none_leaves_the_heads_new_rows_to_the_donor(tmp_path):
    """`output_pieces="none"`: the rebuilt head's rows the base lacks are the donor's rows alone (for a tied base
    the donor's output rows are its input rows in the base space), while the input rows still mix the base's
    pieces in; rows the base has stay the base's."""
    base_tokenizer = make_bpe_tokenizer()
    target = make_unigram_tokenizer((*DEFAULT_UNIGRAM_PIECES, "▁catdog"))
    base = tiny_base("gpt2", "causal-lm", vocab_size=len(base_tokenizer))
    old_head = base.get_output_embeddings().weight.detach().clone()
    model = hf_embfuse.fuse(
        base,
        [{"path": _donor(tmp_path, target, "llama"), "transport_k": 4}],
        task="causal-lm",
        mixing="fixed",
        base_tokenizer=base_tokenizer,
        tokenizer="source:1",
        allow_low_overlap=True,
        output_pieces="none",
    ).model
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings().weight.detach()
    assert head.data_ptr() != embedding.weight.data_ptr()  # untied and rebuilt
    new, copied = target.convert_tokens_to_ids("▁catdog"), target.convert_tokens_to_ids("▁cat")
    donor_row = embedding.source_tables[0][new].detach()
    assert donor_row.abs().sum() > 0
    torch.testing.assert_close(head[new], donor_row)
    assert not torch.allclose(embedding.fused_weight()[new], donor_row)  # the input row mixes in the pieces
    assert torch.equal(head[copied], old_head[base_tokenizer.convert_tokens_to_ids("Ġcat")])


@pytest.mark.parametrize("projection", ["transport", "omp"])
def test_donors_fill_only_the_rows_the_base_lacks_and_leave_its_own_rows_exact(tmp_path, projection):
    """Whatever the mixing weights, a target row the base has one to one reads the base's own input row and
    head row (the added-tokens case: every old token is exactly as before); `donor_rows="all"` mixes the
    donor in there too. A row the base lacks mixes in the donor, and moving the mixer moves it."""
    base_tokenizer = make_bpe_tokenizer()
    base = tiny_base("llama", "causal-lm", vocab_size=len(base_tokenizer))
    old_input = base.get_input_embeddings().weight.detach().clone()
    old_head = base.get_output_embeddings().weight.detach().clone()
    donor = _donor(tmp_path, base_tokenizer, "gpt2")

    def build(donor_rows: str):
        return hf_embfuse.fuse(
            copy.deepcopy(base),
            [{"path": donor, "projection": projection, "transport_k": 4}],
            task="causal-lm",
            base_weight=0.2,
            base_tokenizer=base_tokenizer,
            added_tokens=[" catdog"],
            donor_rows=donor_rows,
        )

    result = build("new")
    model, tokenizer = result.model, result.tokenizer
    embedding = model.get_input_embeddings()
    # Every old token but the reserved placeholder (`<|reserved_special_token_0|>`: nobody's row, so filled).
    own = _own_rows(base, base_tokenizer, tokenizer)
    old = own.nonzero().squeeze(1)
    assert old.tolist() == [
        i
        for i in range(len(base_tokenizer))
        if i != base_tokenizer.convert_tokens_to_ids("<|reserved_special_token_0|>")
    ]
    new = tokenizer.convert_tokens_to_ids(" catdog")
    assert new == len(base_tokenizer)
    assert torch.equal(embedding.fused_weight()[old], old_input[old])
    assert torch.equal(model.get_output_embeddings().weight.detach()[old], old_head[old])
    assert not embedding.coverage[old, 1].any() and bool(embedding.coverage[new, 1])
    before = embedding.fused_weight()[new].clone()
    with torch.no_grad():
        embedding.mixer.logits += torch.tensor([2.0, -2.0])
    assert not torch.allclose(embedding.fused_weight()[new], before)
    assert torch.equal(embedding.fused_weight()[old], old_input[old])

    everywhere = build("all").model
    assert not torch.allclose(everywhere.get_input_embeddings().fused_weight()[old], old_input[old])


def test_omp_donor_builds_and_reports_its_rows(tmp_path):
    base_tokenizer, target = make_bpe_tokenizer(), make_unigram_tokenizer()
    base = tiny_base("gpt2", "causal-lm", vocab_size=len(base_tokenizer))
    donor = _donor(tmp_path, target, "llama")
    result = hf_embfuse.fuse(
        base,
        [{"path": donor, "projection": "omp", "transport_k": 4}],
        task="causal-lm",
        base_tokenizer=base_tokenizer,
        tokenizer="source:1",
        allow_low_overlap=True,
    )
    assert result.reports[0].projection["method"] == "omp"
    assert (
        result.transfer["rows"][Path(donor).name]["transported"] == result.reports[0].projection["rows"] > 0
    )
    table = result.model.get_input_embeddings().source_tables[0]
    assert torch.isfinite(table).all() and table.abs().sum() > 0


def test_added_tokens_extend_the_base_vocabulary_and_existing_ones_are_not_duplicated(tmp_path):
    base_tokenizer = make_bpe_tokenizer()
    base = tiny_base("gpt2", "causal-lm", vocab_size=len(base_tokenizer))
    result = hf_embfuse.fuse(
        base,
        [{"path": _donor(tmp_path, base_tokenizer, "llama")}],
        task="causal-lm",
        base_tokenizer=base_tokenizer,
        added_tokens=[
            "playing",
            "<|endoftext|>",
            {"content": "<|im_start|>", "role": "additional"},
            "playing",
        ],
    )
    added = result.transfer["added_tokens"]
    assert added["added"] == ["playing", "<|im_start|>"] and added["existing"] == ["<|endoftext|>"]
    tokenizer = result.tokenizer
    assert len(tokenizer) == len(base_tokenizer) + 2
    assert len(base_tokenizer) == 309  # the caller's tokenizer is left as it was
    assert "<|im_start|>" in tokenizer.all_special_tokens
    model = result.model
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    # The new word is the mean of its base pieces (base weight 0.5 mixes in the donor's transported rows).
    new = tokenizer.convert_tokens_to_ids("playing")
    assert tokenizer("playing", add_special_tokens=False).input_ids == [new]
    coverage = model.get_input_embeddings().coverage
    assert bool(coverage[new, 0])
    # An old token keeps its id.
    assert tokenizer.convert_tokens_to_ids("Ġcat") == base_tokenizer.convert_tokens_to_ids("Ġcat")
    folder = tmp_path / "fused"
    result.save_pretrained(folder)
    child, files = _in_fresh_process(folder, "AutoModelForCausalLM", tmp_path)
    assert files["vocab"] == tokenizer.get_vocab()
    assert child["generated"].shape[1] > child["ids"].shape[1]


def test_a_tokenizer_object_is_a_target_and_the_base_model_without_a_head_gets_its_vocabulary(tmp_path):
    """`fuse(tokenizer=<tokenizer>)`: a target given as an object, for a bare encoder (no LM head); the donor is
    another model (here one of the base's vocabulary), aligned onto the target like the base."""
    base_tokenizer, target = make_wordpiece_tokenizer(), make_unigram_tokenizer()
    base = tiny_base("bert", "base", vocab_size=len(base_tokenizer))
    donor = _donor(tmp_path, make_bpe_tokenizer(), "gpt2")
    result = hf_embfuse.fuse(
        base, [donor], base_tokenizer=base_tokenizer, tokenizer=target, allow_low_overlap=True
    )
    model = result.model.eval()
    assert result.tokenizer is target and result.transfer["head"] is None
    assert model.get_input_embeddings().num_embeddings == len(target)
    ids = target(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
    assert hidden.shape == (1, ids.shape[1], 32) and torch.isfinite(hidden).all()
    assert model.config.base_config.pad_token_id == target.pad_token_id


def test_bake_to_folder_writes_the_new_vocabulary_and_tokenizer(tmp_path):
    """A plain checkpoint: the target's vocabulary, its tokenizer files, loadable without remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_embfuse.baking import bake_to_folder

    base_tokenizer, target = make_bpe_tokenizer(), make_unigram_tokenizer()
    base = tiny_base("gpt2", "causal-lm", vocab_size=len(base_tokenizer))
    result = hf_embfuse.fuse(
        base,
        [_donor(tmp_path, target, "llama")],
        task="causal-lm",
        base_tokenizer=base_tokenizer,
        tokenizer="source:1",
        allow_low_overlap=True,
    )
    result.save_pretrained(tmp_path / "fused")
    baked_dir = bake_to_folder(tmp_path / "fused", tmp_path / "baked")
    tokenizer = AutoTokenizer.from_pretrained(baked_dir)
    baked = AutoModelForCausalLM.from_pretrained(baked_dir).eval()
    assert tokenizer.get_vocab() == target.get_vocab() and baked.config.vocab_size == len(target)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(
            baked(input_ids=ids).logits, result.model.eval()(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )


def _own_rows(base, base_tokenizer, tokenizer) -> torch.Tensor:
    """Target rows the base has as one row of its own: matched one to one, or a special token matched by role."""
    from hf_embfuse.alignment import align_source
    from hf_embfuse.sources import SourceTable

    table = SourceTable(
        name="base", kind="base", weight=base.get_input_embeddings().weight.detach(), tokenizer=base_tokenizer
    )
    aligned = align_source(tokenizer, table, min_coverage=0.0, allow_low_coverage=True)
    return aligned.anchor_mask | aligned.outcome_mask("special")
