"""Bits per byte: equal to a hand computation, 1.0 against itself, fused folders, added tokens, bad files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hf_embfuse.cli import main
from hf_embfuse.evaluation.bits_per_byte import added_token_ids, read_text_lines, score_lines
from hf_embfuse.evaluation.text_command import load_causal_lm
from hf_embfuse.wrap import from_base
from tests.fixtures_models import random_sources, tiny_base
from tests.fixtures_tokenizers import make_bpe_tokenizer

LINES = [
    "the cat walked to Paris.",
    "hello New York, the dog is happy",
    "a café in Paris",
    "x",
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_bpe_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_base("llama", "causal-lm", vocab_size=len(tokenizer))


def hand_nats(model, ids: list[int]) -> float:
    """NLL in nats of `ids` given the token before each, one unpadded sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = logits.log_softmax(-1)
    return -sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1))


def test_bits_per_byte_equals_a_hand_computation(model, tokenizer):
    bos = tokenizer.bos_token_id
    nats = [
        hand_nats(model, [bos, *tokenizer(line, add_special_tokens=False)["input_ids"]]) for line in LINES
    ]
    expected = sum(nats) / math.log(2) / sum(len(line.encode("utf-8")) for line in LINES)
    assert sum(len(line.encode()) for line in LINES) > sum(len(line) for line in LINES)  # "é" is two bytes
    for batch_tokens in (None, 12):  # one batch, and several with padding
        score = score_lines(model, tokenizer, LINES, batch_tokens=batch_tokens)
        assert score.bits_per_byte == pytest.approx(expected, rel=1e-5)
        assert score.nats.tolist() == pytest.approx(nats, rel=1e-5)
    assert score.num_tokens.tolist() == [
        len(tokenizer(line, add_special_tokens=False)["input_ids"]) for line in LINES
    ]
    assert score.not_round_trip == 0


def test_long_lines_are_scored_in_windows_each_token_once(model, tokenizer):
    line = LINES[1]
    full = [tokenizer.bos_token_id, *tokenizer(line, add_special_tokens=False)["input_ids"]]
    assert len(full) > 8
    # windows of 4 ids overlapping by one: each predicts 3 tokens
    expected = sum(hand_nats(model, full[a : a + 4]) for a in range(0, len(full) - 1, 3))
    score = score_lines(model, tokenizer, [line], max_length=4)
    assert float(score.nats[0]) == pytest.approx(expected, rel=1e-5)
    assert float(score.nats[0]) != pytest.approx(hand_nats(model, full), rel=1e-3)  # context was cut


def test_lines_containing_added_tokens(tokenizer):
    extended = make_bpe_tokenizer()
    extended.add_tokens(["zebra"])
    assert added_token_ids(extended) == [len(tokenizer)]
    model = tiny_base("llama", "causal-lm", vocab_size=len(extended))
    lines = ["the zebra walked", "the cat walked", "a zebra in Paris"]
    score = score_lines(model, extended, lines)
    keep = score.lines_containing(added_token_ids(extended))
    assert keep.tolist() == [True, False, True]
    part = score.subset(keep)
    assert part.num_lines == 2
    assert part.token_loss == pytest.approx(
        float(score.nats[[0, 2]].sum()) / int(score.num_tokens[[0, 2]].sum())
    )


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory, model, tokenizer):
    folder = tmp_path_factory.mktemp("plain")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "dev.txt"
    path.write_text("\n".join(LINES[:3]) + "\n\n", encoding="utf-8")
    return path


def test_cli_reference_against_itself_gives_ratio_one(
    plain_folder, text_file, tmp_path, capsys, model, tokenizer
):
    out = tmp_path / "bpb.json"
    argv = [
        "eval",
        str(plain_folder),
        "--text",
        str(text_file),
        "--reference",
        str(plain_folder),
        "--out",
        str(out),
    ]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ratio (model / reference bits per byte): 1.0000" in printed
    report = json.loads(out.read_text())
    assert report["ratio"] == pytest.approx(1.0, abs=1e-9)
    assert report["model"]["lines"] == 3  # the blank line is skipped
    expected = score_lines(model, tokenizer, LINES[:3]).bits_per_byte
    assert report["model"]["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
    assert report["model"]["bytes"] == sum(len(line.encode()) for line in LINES[:3])


def test_cli_on_a_fused_folder_with_added_tokens(tmp_path, plain_folder, capsys):
    extended = make_bpe_tokenizer()
    extended.add_tokens(["zebra"])
    base = tiny_base("llama", "causal-lm", vocab_size=len(extended))
    fused = from_base(base, random_sources(len(extended)), task="causal-lm").eval()
    folder = tmp_path / "fused"
    fused.save_pretrained(folder)
    extended.save_pretrained(folder)
    text = tmp_path / "zebra.txt"
    text.write_text("the zebra walked\nthe cat walked\na zebra in Paris\n", encoding="utf-8")
    out = tmp_path / "report.json"
    argv = ["eval", str(folder), "--text", str(text), "--reference", str(plain_folder), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert "lines with the 1 added tokens: 2" in capsys.readouterr().out
    report = json.loads(out.read_text())
    loaded, tokenizer = load_causal_lm(folder)
    assert type(loaded).__name__ == "EmbFuseForCausalLM" and len(tokenizer) == len(extended)
    score = score_lines(fused, extended, read_text_lines(text))
    assert report["model"]["bits_per_byte"] == pytest.approx(score.bits_per_byte, rel=1e-5)
    added = report["added_token_lines"]
    assert added["lines"] == 2
    assert added["model"]["token_loss"] == pytest.approx(
        score.subset([True, False, True]).token_loss, rel=1e-5
    )
    assert added["reference"]["lines"] == 2
    assert report["ratio"] == pytest.approx(score.bits_per_byte / report["reference"]["bits_per_byte"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "has no text"),
        (b"\n  \n\t\n", "has no text"),
        (b"caf\xe9 au lait\n", "is not UTF-8 (byte 0xe9 at offset 3)"),
    ],
)
def test_cli_bad_text_file_is_one_line_exit_2(plain_folder, tmp_path, capsys, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    out = tmp_path / "never.json"
    assert main(["eval", str(plain_folder), "--text", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err and str(path) in err
    assert not out.exists()


def test_cli_missing_text_file_and_wrong_task(plain_folder, tmp_path, capsys, text_file):
    assert main(["eval", str(plain_folder), "--text", str(tmp_path / "nope.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    encoder = tmp_path / "encoder"
    tiny_base("bert").save_pretrained(encoder)
    make_bpe_tokenizer().save_pretrained(encoder)
    capsys.readouterr()  # save_pretrained's own progress bars
    assert main(["eval", str(encoder), "--text", str(text_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a causal language model" in err
    assert main(["eval", str(plain_folder), "--reference", str(plain_folder)]) == 2
    assert "--reference needs --text" in capsys.readouterr().err


def test_dev_text_untag_rejoins_words_and_punctuation():
    from hf_embfuse.evaluation.dev_text import dev_split, untag

    tagged = "Judging/VBG from/IN the/DT Net/NN 's/POS story/NN ,/, 1/2/CD is/VBZ n't/RB 5/CD %/NN ?/."
    assert untag(tagged) == "Judging from the Net's story, 1/2 isn't 5%?"
    lines = [f"line {i}" for i in range(10)]
    train, heldout = dev_split(lines, heldout=3)
    assert len(heldout) == 3 and sorted(train + heldout) == sorted(lines)
    assert dev_split(lines, heldout=3) == (train, heldout)  # fixed seed


def test_start_token_rule():
    from tokenizers import processors

    from hf_embfuse.evaluation.bits_per_byte import start_token_id
    from tests.fixtures_tokenizers import make_unigram_tokenizer

    chat = make_bpe_tokenizer()
    chat.bos_token = "<|reserved_special_token_0|>"  # a chat marker as bos, as SmolLM2-Instruct has
    assert start_token_id(chat) == chat.convert_tokens_to_ids("<|endoftext|>")
    unigram = make_unigram_tokenizer()
    assert start_token_id(unigram) == unigram.bos_token_id  # no <|endoftext|>: bos
    adds_own = make_unigram_tokenizer()
    adds_own.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="</s> $A", special_tokens=[("</s>", adds_own.eos_token_id)]
    )
    assert start_token_id(adds_own) == adds_own.eos_token_id  # what the tokenizer puts first itself


def test_cli_start_token_override(plain_folder, text_file, tmp_path, capsys, model, tokenizer):
    out = tmp_path / "start.json"
    argv = ["eval", str(plain_folder), "--text", str(text_file), "--start-token", "Ġthe", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    report = json.loads(out.read_text())
    expected = score_lines(model, tokenizer, LINES[:3], start_token=tokenizer.convert_tokens_to_ids("Ġthe"))
    assert report["model"]["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-5)
    assert report["model"]["bits_per_byte"] != pytest.approx(
        score_lines(model, tokenizer, LINES[:3]).bits_per_byte
    )
    assert main(["eval", str(plain_folder), "--text", str(text_file), "--start-token", "<nope>"]) == 2
    assert "is not a token" in capsys.readouterr().err
