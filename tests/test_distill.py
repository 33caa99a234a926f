"""The distillation heal: chunks both tokenizations agree on, a loss that reaches only the student, a gap that shrinks."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from hf_embfuse.training import DistillConfig, DistillTrainer, heal, next_token_log_probs
from hf_embfuse.training.distill import DistillDataset, chunk_log_likelihoods
from tests.fixtures_models import tiny_base
from tests.fixtures_tokenizers import make_bpe_tokenizer, make_unigram_tokenizer

LINES = [
    "the cat walked to Paris.",
    "hello New York",
    "the dog is happy",
    "a café in Paris",
    "the cat is in New York",
] * 4


@pytest.fixture(scope="module")
def tokenizers():
    return make_bpe_tokenizer(), make_unigram_tokenizer()  # student's, teacher's


def models(tokenizers):
    student_tokenizer, teacher_tokenizer = tokenizers
    student = tiny_base("llama", "causal-lm", seed=1, vocab_size=len(student_tokenizer))
    teacher = tiny_base("llama", "causal-lm", seed=2, vocab_size=len(teacher_tokenizer))
    return student, teacher


def test_each_chunk_is_the_same_text_on_both_sides(tokenizers):
    student_tokenizer, teacher_tokenizer = tokenizers
    dataset = DistillDataset(LINES[:5], student_tokenizer, teacher_tokenizer)
    for line, example in zip(LINES[:5], dataset.examples, strict=True):
        texts = []
        for tokenizer, chunks in (
            (student_tokenizer, "student_chunks"),
            (teacher_tokenizer, "teacher_chunks"),
        ):
            offsets = tokenizer(line, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            spans = {}
            for (begin, end), chunk in zip(offsets, example[chunks], strict=True):
                assert chunk >= 0  # nothing is truncated here: every token is in a chunk
                first, last = spans.get(chunk, (begin, end))
                spans[chunk] = (min(first, begin), max(last, end))
            assert sorted(spans) == list(range(example["num_chunks"]))
            texts.append([line[a:b].strip() for a, b in (spans[k] for k in sorted(spans))])
        assert texts[0] == texts[1]
        assert "".join(texts[0]).replace(" ", "") == line.replace(" ", "")
    # the tokenizations differ ("the" is one unigram piece, three BPE ones), so some chunk spans several tokens
    assert any(max(e["student_chunks"]) + 1 < len(e["student_chunks"]) for e in dataset.examples)


def distill_trainer(tokenizers, tmp_path, **config):
    student, teacher = models(tokenizers)
    student.requires_grad_(False)
    for module in (student.get_input_embeddings(), student.get_output_embeddings()):
        module.requires_grad_(True)
    dataset = DistillDataset(LINES, *tokenizers)
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    trainer = DistillTrainer(
        model=student,
        args=args,
        train_dataset=dataset,
        data_collator=dataset.collate,
        teacher=teacher,
        config=DistillConfig(**config),
    )
    return trainer, dataset.collate(dataset.examples[:6])


@pytest.mark.parametrize("chunk_loss", ["bce", "l1"])
def test_the_loss_is_finite_and_trains_the_student_embedding_and_head_only(tokenizers, tmp_path, chunk_loss):
    trainer, batch = distill_trainer(tokenizers, tmp_path, chunk_loss=chunk_loss, lm_weight=0.0)
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    student = trainer.model
    for module in (student.get_input_embeddings(), student.get_output_embeddings()):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())


def test_teacher_is_bf16_where_the_cpu_has_it_and_float32_when_asked(tokenizers, tmp_path):
    trainer, _ = distill_trainer(tokenizers, tmp_path, teacher_dtype="float32")
    assert next(trainer.teacher.parameters()).dtype == torch.float32
    trainer, batch = distill_trainer(tokenizers, tmp_path, teacher_dtype="bfloat16")
    assert next(trainer.teacher.parameters()).dtype == torch.bfloat16
    assert torch.isfinite(trainer.compute_loss(trainer.model, batch))


def test_teacher_cache_gives_the_same_loss(tokenizers, tmp_path):
    trainer, batch = distill_trainer(
        tokenizers, tmp_path, cache_dir=tmp_path / "cache", teacher_dtype="float32"
    )
    first = trainer.compute_loss(trainer.model, batch)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == len(set(batch["keys"]))
    trainer.teacher = None  # a second pass must read the cache, not run the teacher
    assert torch.allclose(trainer.compute_loss(trainer.model, batch), first)


def chunk_gap(student, teacher, batch) -> float:
    with torch.no_grad():
        s = next_token_log_probs(student, batch["input_ids"], batch["attention_mask"])
        t = next_token_log_probs(teacher, batch["teacher_input_ids"], batch["teacher_attention_mask"])
    count = int(batch["num_chunks"].max())
    valid = torch.arange(count)[None, :] < batch["num_chunks"][:, None]
    gap = chunk_log_likelihoods(s, batch["student_chunks"], count) - chunk_log_likelihoods(
        t, batch["teacher_chunks"], count
    )
    return float(gap[valid].abs().mean())


@pytest.mark.parametrize("chunk_loss", ["bce", "l1"])
def test_a_few_steps_shrink_the_chunk_likelihood_gap(tokenizers, tmp_path, chunk_loss):
    student, teacher = models(tokenizers)
    batch = DistillDataset(LINES[:5], *tokenizers).collate(DistillDataset(LINES[:5], *tokenizers).examples)
    before = chunk_gap(student, teacher, batch)
    student, curve = heal(
        student,
        tokenizers[0],
        LINES,
        LINES[:3],
        out_dir=tmp_path,
        loss="distill",
        teacher=teacher,
        teacher_tokenizer=tokenizers[1],
        distill=DistillConfig(lm_weight=0.0, chunk_loss=chunk_loss, teacher_dtype="float32"),
        minutes=None,
        max_steps=15,
        learning_rate=3e-2,
        batch_size=5,
        eval_every=0,
        show_progress=False,
    )
    after = chunk_gap(student, teacher, batch)
    assert after < 0.8 * before, (before, after)
    assert [point["step"] for point in curve] == [0, 15]


def test_distill_needs_a_teacher(tokenizers, tmp_path):
    student, _ = models(tokenizers)
    with pytest.raises(ValueError, match="needs `teacher` and `teacher_tokenizer`"):
        heal(student, tokenizers[0], LINES, LINES[:2], out_dir=tmp_path, loss="distill")
    with pytest.raises(ValueError, match="chunk_loss='kl'"):
        DistillConfig(chunk_loss="kl")
