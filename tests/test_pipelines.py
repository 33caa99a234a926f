"""`transformers.pipeline(task, model=DIR, trust_remote_code=True)` works on fused folders, without hf_embfuse."""

import json

import pytest
import torch
from transformers import pipeline

from hf_embfuse.wrap import from_base
from tests.fixtures_models import random_sources, tiny_base
from tests.fixtures_tokenizers import make_bpe_tokenizer, make_wordpiece_tokenizer
from tests.fresh_process import PROMPT, run_without_hf_embfuse

LABELS = ("negative", "neutral", "positive")
# pipeline task -> (tiny architecture, EmbFuse task, tokenizer factory, input, call arguments)
CASES = {
    "feature-extraction": ("bert", "base", make_wordpiece_tokenizer, "the cat walked", {}),
    "fill-mask": ("bert", "masked-lm", make_wordpiece_tokenizer, "the [MASK] walked", {"top_k": 3}),
    "text-classification": ("bert", "sequence-classification", make_wordpiece_tokenizer, "a happy dog", {}),
    "token-classification": ("bert", "token-classification", make_wordpiece_tokenizer, "hello new york", {}),
    "text-generation": (
        "gpt2",
        "causal-lm",
        make_bpe_tokenizer,
        " the cat",
        {"max_new_tokens": 5, "do_sample": False},
    ),
}

CHILD = r"""
import json, sys
import transformers
from transformers import pipeline
cases = json.loads(sys.argv[1])
results = {}
for task, (folder, text, arguments) in cases.items():
    runner = pipeline(task, model=folder, trust_remote_code=True, device="cpu")
    assert "hf_embfuse" not in type(runner.model).__module__, type(runner.model).__module__
    results[task] = {"model": type(runner.model).__name__, "output": runner(text, **arguments)}
with open(sys.argv[2], "w") as handle:
    json.dump(results, handle, default=float)
"""


def _fused_folder(task_name: str, folder):
    arch, task, make_tokenizer, _, _ = CASES[task_name]
    tokenizer = make_tokenizer()
    base = tiny_base(arch, task, vocab_size=len(tokenizer))
    model = from_base(base, random_sources(len(tokenizer)), task=task, mixing="learned").eval()
    if task.endswith("classification"):  # names a user gives: the pipeline must report them
        model.config.id2label = dict(enumerate(LABELS))
        model.config.label2id = {label: index for index, label in enumerate(LABELS)}
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def _rounded(value):
    """Scores to 4 places (the child and this process run the same model; only float noise may differ)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


def test_every_pipeline_task_runs_on_a_fused_folder_in_a_fresh_process(tmp_path):
    expected, cases = {}, {}
    for task_name, (_, _, _, text, arguments) in CASES.items():
        folder = (tmp_path / task_name).resolve()
        model, tokenizer = _fused_folder(task_name, folder)
        in_process = pipeline(task_name, model=model, tokenizer=tokenizer, device="cpu")
        expected[task_name] = _rounded(json.loads(json.dumps(in_process(text, **arguments), default=float)))
        cases[task_name] = (str(folder), text, arguments)

    result_file = (tmp_path / "results.json").resolve()
    output = run_without_hf_embfuse(CHILD, json.dumps(cases), str(result_file), workdir=tmp_path / "child")
    assert PROMPT not in output
    results = json.loads(result_file.read_text())
    assert {task: r["model"] for task, r in results.items()} == {
        "feature-extraction": "EmbFuseModel",
        "fill-mask": "EmbFuseForMaskedLM",
        "text-classification": "EmbFuseForSequenceClassification",
        "token-classification": "EmbFuseForTokenClassification",
        "text-generation": "EmbFuseForCausalLM",
    }
    for task_name, want in expected.items():
        assert _rounded(results[task_name]["output"]) == want, task_name
    features = torch.tensor(results["feature-extraction"]["output"])
    assert features.shape[-1] == 32 and features.abs().sum() > 0
    assert len(results["fill-mask"]["output"]) == 3
    assert results["text-generation"]["output"][0]["generated_text"].startswith(" the cat")
    assert results["text-classification"]["output"][0]["label"] in LABELS
    assert {item["entity"] for item in results["token-classification"]["output"]} <= set(LABELS)


@pytest.mark.parametrize("task_name", ["text-classification", "fill-mask"])
def test_pipeline_output_follows_the_fused_embedding(task_name, tmp_path):
    """The pipeline runs the mixture: other source tables give other scores."""
    _, _, _, text, arguments = CASES[task_name]
    model, tokenizer = _fused_folder(task_name, tmp_path / "a")
    before = pipeline(task_name, model=str(tmp_path / "a"), trust_remote_code=True, device="cpu")(
        text, **arguments
    )
    with torch.no_grad():
        for table in model.get_input_embeddings().source_tables:
            table.mul_(-3.0)
    model.save_pretrained(tmp_path / "b")
    tokenizer.save_pretrained(tmp_path / "b")
    after = pipeline(task_name, model=str(tmp_path / "b"), trust_remote_code=True, device="cpu")(
        text, **arguments
    )
    assert before != after  # the same weights would give bit-identical scores
