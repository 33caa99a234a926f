"""A transplanted, baked draft serves its target in speculative decoding (tiny models, in-memory tokenizers).

The draft is a tiny Llama with a byte-level BPE tokenizer, transplanted onto the tokenizer of a tiny Llama
target (SentencePiece-like Unigram) and baked to a plain checkpoint. It must pass `check_draft`, and
`target.generate(assistant_model=draft)` must give exactly the target's own greedy output, with the
acceptance counts of examples/speculative.py. `check_draft` must name each way a draft can differ.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_embfuse
from hf_embfuse.draft import DraftMismatchError, check_draft, draft_report
from tests.fixtures_models import tiny_base
from tests.fixtures_tokenizers import make_bpe_tokenizer, make_unigram_tokenizer
from tests.fresh_process import REPO

PROMPTS = ("the cat play", "hello New York", "The dog walked to Paris")


def _example():
    spec = importlib.util.spec_from_file_location("speculative_example", REPO / "examples" / "speculative.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


speculative = _example()


def _target(tokenizer):
    """A tiny Llama of `tokenizer`'s vocabulary whose config names the tokenizer's special ids."""
    model = tiny_base("llama", "causal-lm", seed=7, vocab_size=len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, name, getattr(tokenizer, name))
        setattr(model.generation_config, name, getattr(tokenizer, name))
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """(baked draft folder, target folder): the base transplanted onto the target's tokenizer, then baked."""
    tmp = tmp_path_factory.mktemp("speculative")
    target_tokenizer = make_unigram_tokenizer()
    _target(target_tokenizer).save_pretrained(tmp / "target")
    target_tokenizer.save_pretrained(tmp / "target")
    base_tokenizer = make_bpe_tokenizer()
    base = tiny_base("llama", "causal-lm", vocab_size=len(base_tokenizer))
    result = hf_embfuse.fuse(
        base,
        [str(tmp / "target")],  # the donor owns the target tokenizer
        task="causal-lm",
        base_tokenizer=base_tokenizer,
        tokenizer="source:1",
        allow_low_overlap=True,
    )
    result.save_pretrained(tmp / "fused")
    return Path(hf_embfuse.bake_to_folder(tmp / "fused", tmp / "draft")), tmp / "target"


def _load(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_a_transplanted_baked_draft_passes_the_vocabulary_check(folders):
    draft_dir, target_dir = folders
    report = check_draft(draft_dir, target_dir)
    assert report.ok, report.problems
    assert report.draft_vocab_size == report.target_vocab_size == len(make_unigram_tokenizer())
    assert not list(draft_dir.glob("*.py"))  # a plain checkpoint: nothing to trust_remote_code


@torch.no_grad()
def test_the_draft_as_assistant_model_keeps_the_targets_greedy_output(folders):
    draft_dir, target_dir = folders
    (draft, _), (target, tokenizer) = _load(draft_dir), _load(target_dir)
    speculative.fix_draft_length(draft, 3)
    alone = speculative.generate_all(target, tokenizer, PROMPTS, 10)
    assisted = speculative.generate_all(target, tokenizer, PROMPTS, 10, {"assistant_model": draft})
    assert assisted.outputs == alone.outputs
    assert assisted.new_tokens == alone.new_tokens > 0
    counts = assisted.acceptance
    assert counts.rounds > 0 and 0 <= counts.accepted <= counts.proposed <= 3 * counts.rounds


@torch.no_grad()
def test_the_target_as_its_own_draft_is_always_accepted(folders):
    """The acceptance counter's check: a draft that is the target proposes only tokens the target keeps."""
    target, tokenizer = _load(folders[1])
    target.generation_config.eos_token_id = None  # no early stop: every round runs its full length
    draft = copy.deepcopy(target)
    speculative.fix_draft_length(draft, 3)
    run = speculative.generate_all(target, tokenizer, PROMPTS, 12, {"assistant_model": draft})
    counts = run.acceptance
    assert counts.proposed > 0 and counts.rate == 1.0
    assert counts.tokens_per_round > 3  # 3 accepted + the target's own token, each round but the last


def _with_start_token(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.convert_tokens_to_ids("<s>"))]
    )
    return tokenizer


def _base_draft(target, tokenizer):
    base_tokenizer = make_bpe_tokenizer()
    return tiny_base("llama", "causal-lm", vocab_size=len(base_tokenizer)), base_tokenizer


def _other_eos(target, tokenizer):
    draft = copy.deepcopy(target)
    draft.config.eos_token_id = 3
    return draft, tokenizer


def _other_bos_role(target, tokenizer):
    draft_tokenizer = copy.deepcopy(tokenizer)
    draft_tokenizer.bos_token = "<pad>"
    return copy.deepcopy(target), draft_tokenizer


MISMATCHES = {
    # name: (how the draft differs from the target, the words of the problems `check_draft` must name)
    "the untransplanted base": (_base_draft, ["vocab_size differs", "vocabularies differ"]),
    "another eos in the config": (_other_eos, ["config eos_token_id differs: draft 3, target 2"]),
    "another token as bos": (_other_bos_role, ["tokenizer bos_token_id differs"]),
    "a tokenizer that adds a start token": (
        lambda target, tokenizer: (copy.deepcopy(target), _with_start_token(tokenizer)),
        ["split"],
    ),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_the_check_names_each_way_a_draft_differs(case):
    make, expected = MISMATCHES[case]
    tokenizer = make_unigram_tokenizer()
    target = _target(tokenizer)
    draft, draft_tokenizer = make(target, tokenizer)
    report = draft_report(draft, target, draft_tokenizer=draft_tokenizer, target_tokenizer=tokenizer)
    assert not report.ok
    for words in expected:
        assert any(words in problem for problem in report.problems), report.problems
    with pytest.raises(DraftMismatchError, match=expected[0]):
        check_draft(draft, target, draft_tokenizer=draft_tokenizer, target_tokenizer=tokenizer)


def test_a_model_without_its_tokenizer_is_refused_by_name():
    tokenizer = make_unigram_tokenizer()
    target = _target(tokenizer)
    with pytest.raises(ValueError, match="pass `draft_tokenizer=`"):
        draft_report(copy.deepcopy(target), target, target_tokenizer=tokenizer)
