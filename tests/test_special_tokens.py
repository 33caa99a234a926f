"""After a transplant the saved tokenizer and configs give the body the start, end and pad rows it was trained with.

Two pairs mirror the real ones: a Gemma-like body (its tokenizer prepends `<s>`) on a SmolLM2-Instruct-like
target (bos `<|im_start|>`, nothing prepended, a ChatML template); and a SmolLM2-Instruct-like body (nothing
prepended, documents separated by `<|endoftext|>`, bos `<|im_start|>`) on a Gemma-like target that prepends `<s>`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import hf_embfuse
from hf_embfuse.evaluation.bits_per_byte import start_token_id
from hf_embfuse.transfer.special_tokens import added_around, map_special_tokens

from .fixtures_models import tiny_base
from .fixtures_tokenizers import DEFAULT_UNIGRAM_PIECES, make_bpe_tokenizer, make_unigram_tokenizer
from .fresh_process import run_without_hf_embfuse

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROMPT = "The cat"


def gemma_like_body_tokenizer():
    """Unigram whose `tokenizer(text)` prepends `<s>`, as Gemma's always prepends `<bos>`."""
    tokenizer = make_unigram_tokenizer()
    tokenizer.add_bos_token = True
    assert tokenizer(PROMPT).input_ids[0] == tokenizer.bos_token_id
    return tokenizer


def chatml_target_tokenizer():
    """The same pieces under other ids, bos/eos `<|im_start|>`/`<|im_end|>`, nothing prepended, a chat template."""
    tokenizer = make_unigram_tokenizer(tuple(reversed(DEFAULT_UNIGRAM_PIECES)))
    tokenizer.add_special_tokens(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
    )
    tokenizer.chat_template = CHATML
    assert added_around(tokenizer) == ([], [])
    return tokenizer


def smollm2_like_body_tokenizer():
    """GPT-2 BPE plus ChatML: bos `<|im_start|>`, eos/pad `<|im_end|>`, unk `<|endoftext|>`, nothing added."""
    tokenizer = make_bpe_tokenizer()
    tokenizer.add_special_tokens(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def trained_body(tokenizer, *, steps: int = 150) -> LlamaForCausalLM:
    """A tiny Llama whose next token after `PROMPT` is ` walk` with the start token in front and ` dog` without."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    prompt = tokenizer(PROMPT, add_special_tokens=False).input_ids
    walk, dog = (tokenizer(w, add_special_tokens=False).input_ids for w in (" walk", " dog"))
    examples = [[tokenizer.bos_token_id, *prompt, *walk], [*prompt, *dog]]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        for ids in examples:
            ids = torch.tensor([ids])
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval()


def transplant(body, body_tokenizer, target, tmp_path: Path):
    """`fuse(body, [donor], tokenizer=target)`, the donor a tiny model of the target's vocabulary."""
    donor = tmp_path / "donor"
    tiny_base("llama", "base", seed=7, vocab_size=len(target)).save_pretrained(donor)
    target.save_pretrained(donor)
    return hf_embfuse.fuse(
        body,
        [str(donor)],
        task="causal-lm",
        base_tokenizer=body_tokenizer,
        tokenizer=target,
        allow_low_overlap=True,
    )


def greedy_next(model, ids: list[int]) -> int:
    with torch.no_grad():
        return int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())


_CHILD = """
import json, sys, torch, transformers
folder = sys.argv[1]
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
ids = tokenizer(sys.argv[2], return_tensors="pt").input_ids
generated = model.generate(ids, max_new_tokens=1, do_sample=False)
chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) if tokenizer.chat_template else None
print("RESULT" + json.dumps({
    "ids": ids[0].tolist(),
    "next": tokenizer.decode(generated[0, ids.shape[1]:]),
    "tokenizer": {r: getattr(tokenizer, r + "_token_id") for r in ("bos", "eos", "pad")},
    "config": {r: getattr(model.config, r + "_token_id") for r in ("bos", "eos", "pad")},
    "generation": {r: getattr(model.generation_config, r + "_token_id") for r in ("bos", "eos", "pad")},
    "chat": chat,
}))
"""


def _fresh(folder: Path, workdir: Path) -> dict:
    output = run_without_hf_embfuse(_CHILD, str(folder.resolve()), PROMPT, workdir=workdir)
    return json.loads(output.split("RESULT", 1)[1].splitlines()[0])


def test_the_saved_transplant_prepends_the_bodys_start_row_and_predicts_the_bodys_next_token(tmp_path):
    body_tokenizer, target = gemma_like_body_tokenizer(), chatml_target_tokenizer()
    body = trained_body(body_tokenizer)
    own_next = body_tokenizer.decode(greedy_next(body, body_tokenizer(PROMPT).input_ids))
    without_start = body_tokenizer.decode(
        greedy_next(body, body_tokenizer(PROMPT, add_special_tokens=False).input_ids)
    )
    assert (own_next.strip(), without_start.strip()) == (
        "walk",
        "dog",
    )  # the start token decides the next token
    caller_ids = target(PROMPT).input_ids

    result = transplant(body, body_tokenizer, target, tmp_path)
    assert target(PROMPT).input_ids == caller_ids  # the caller's tokenizer is not changed
    special = result.transfer["special_tokens"]
    assert special["prepend_start"] is True and special["append_end"] is False
    assert (special["bos"]["token"], special["bos"]["body_token"]) == ("<|im_start|>", "<s>")
    assert [m["token"] for m in special["chat_markers"]] == ["<|im_start|>", "<|im_end|>"]
    folder = tmp_path / "transplant"
    result.save_pretrained(folder)

    child = _fresh(folder, tmp_path / "child")
    start = target.convert_tokens_to_ids("<|im_start|>")
    assert start_token_id(result.tokenizer) == start
    assert child["ids"] == [start, *target(PROMPT, add_special_tokens=False).input_ids]
    assert child["next"].strip() == own_next.strip()
    end = target.convert_tokens_to_ids("<|im_end|>")
    # pad: the target's `<pad>` holds the body's pad row (same string); its own `<|im_end|>` holds the body's eos row
    expected = {"bos": start, "eos": end, "pad": target.convert_tokens_to_ids("<pad>")}
    assert child["tokenizer"] == child["config"] == child["generation"] == expected
    assert (
        child["chat"] == "<|im_start|>user\nhi<|im_end|>\n"
    )  # the target's template survives, start not doubled


def test_a_body_that_prepends_nothing_gets_nothing_prepended_and_bos_names_its_document_start_row(tmp_path):
    body_tokenizer, target = smollm2_like_body_tokenizer(), make_unigram_tokenizer()
    target.add_bos_token = True  # Gemma's always prepends `<bos>`: here the row of the body's `<|im_start|>`
    torch.manual_seed(0)
    body = trained_body(body_tokenizer, steps=1)
    result = transplant(body, body_tokenizer, target, tmp_path)
    special = result.transfer["special_tokens"]
    assert special["prepend_start"] is False
    # The body's documents start after `<|endoftext|>` (its unk); the target token on that row is `<unk>`.
    assert special["bos"] == {
        "role": "bos",
        "token": "<unk>",
        "id": target.unk_token_id,
        "body_token": "<|endoftext|>",
        "body_id": 0,
        "how": "moved",
    }
    assert (
        target.bos_token == "<s>" and target(PROMPT).input_ids[0] == target.bos_token_id
    )  # caller's unchanged
    folder = tmp_path / "transplant"
    result.save_pretrained(folder)

    assert start_token_id(result.tokenizer) == target.unk_token_id  # `eval --text` scores from that row too
    child = _fresh(folder, tmp_path / "child")
    assert child["ids"] == target(PROMPT, add_special_tokens=False).input_ids
    expected = {"bos": target.unk_token_id, "eos": target.eos_token_id, "pad": target.pad_token_id}
    assert child["tokenizer"] == child["config"] == child["generation"] == expected
    # the input row of the new bos is the body's `<|endoftext|>` row
    rows = result.model.get_input_embeddings().fused_weight()
    torch.testing.assert_close(rows[target.unk_token_id], body.get_input_embeddings().weight[0])


@pytest.mark.parametrize("role_token", ["<s>", None])
def test_a_start_row_no_target_token_holds_is_added_under_the_bodys_own_string(role_token):
    """A target without a bos role or a token on the body's start row gets the body's start token added."""
    body_tokenizer = gemma_like_body_tokenizer()
    target = make_bpe_tokenizer()  # `<|endoftext|>` is bos: matched to the body's `<s>` by role
    if role_token is None:
        target.bos_token = None
    special, rows_tokenizer = map_special_tokens(target, body_tokenizer)
    if role_token is None:
        assert special.roles["bos"].how == "added" and special.roles["bos"].token == "<s>"
        assert len(rows_tokenizer) == len(target) + 1 and "<s>" not in target.get_vocab()
        saved = special.with_roles(rows_tokenizer)
        assert saved(PROMPT).input_ids[0] == saved.bos_token_id == rows_tokenizer.convert_tokens_to_ids("<s>")
    else:
        assert special.roles["bos"].token == "<|endoftext|>" and special.roles["bos"].how == "kept"
        assert rows_tokenizer(PROMPT).input_ids[0] == target.convert_tokens_to_ids("<|endoftext|>")
