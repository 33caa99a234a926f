"""LoRA on the base's attention with the mixer in modules_to_save: small adapters that round-trip."""

import re
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import hf_embfuse
from hf_embfuse.modeling_embfuse import TASKS
from hf_embfuse.training import embfuse_lora_config, find_attention_modules, infer_task_type
from tests.fixtures_models import HIDDEN, VOCAB, random_sources, tiny_base, tiny_fused

# Big enough that a source table (V × 16 floats = 32 KiB) dwarfs a rank-4 adapter of a hidden-32 model.
VOCAB_BIG = 512
CASES = {
    "bert": (
        "sequence-classification",
        AutoModelForSequenceClassification,
        hf_embfuse.EmbFuseForSequenceClassification,
    ),
    "gpt2": ("causal-lm", AutoModelForCausalLM, hf_embfuse.EmbFuseForCausalLM),
    "llama": ("causal-lm", AutoModelForCausalLM, hf_embfuse.EmbFuseForCausalLM),
}


def fused_model(arch, mixing="gated"):
    task, _, _ = CASES[arch]
    base = tiny_base(arch, task, vocab_size=VOCAB_BIG)
    model = hf_embfuse.from_base(base, random_sources(VOCAB_BIG), mixing=mixing).eval()
    if mixing == "gated":
        torch.nn.init.normal_(model.get_input_embeddings().mixer.gate, std=0.3)
    return model


def ids(batch=3, length=8, seed=0):
    return torch.randint(3, VOCAB_BIG, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def train_steps(model, steps=3, lr=5e-2):
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        x = ids(seed=step)
        causal = "CausalLM" in type(model.get_base_model()).__name__
        labels = x if causal else torch.tensor([0, 1, 2])
        model(input_ids=x, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize(
    ("arch", "targets"),
    [
        ("bert", ["attention.output.dense", "key", "query", "value"]),
        ("gpt2", ["attn.c_proj", "c_attn"]),
        ("llama", ["k_proj", "o_proj", "q_proj", "v_proj"]),
    ],
)
def test_attention_modules_are_found_without_the_mlp_or_the_projections(arch, targets):
    model = tiny_fused(arch, CASES[arch][0])
    assert find_attention_modules(model) == targets
    config = embfuse_lora_config(model)
    assert set(config.target_modules) == set(targets)
    assert config.modules_to_save == ["mixer"]
    assert config.fan_in_fan_out == (arch == "gpt2")  # GPT-2's Conv1D stores weights transposed
    assert config.task_type == infer_task_type(model)


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.name)
def test_task_type_comes_from_the_task_table_also_through_peft_and_ddp_wrappers(task):
    model = tiny_fused("llama" if task.name == "causal-lm" else "bert", task.name)
    assert infer_task_type(model) == task.peft_task_type
    config = embfuse_lora_config(model)
    assert config.task_type == task.peft_task_type
    peft_model = get_peft_model(model, config)
    # DataParallel stands in for DDP: the same `.module` wrapper, and it needs no process group.
    assert (
        infer_task_type(peft_model)
        == infer_task_type(torch.nn.DataParallel(peft_model))
        == task.peft_task_type
    )


def test_lora_config_takes_peft_argument_names():
    model = tiny_fused("bert", "sequence-classification")
    config = embfuse_lora_config(
        model, r=4, lora_alpha=32, lora_dropout=0.1, use_rslora=True, bias="lora_only", task_type="SEQ_CLS"
    )
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 32, 0.1)
    assert config.use_rslora and config.bias == "lora_only"  # any other LoraConfig field passes through
    with pytest.raises(TypeError, match=r"alpha= -> lora_alpha=, dropout= -> lora_dropout="):
        embfuse_lora_config(model, alpha=16, dropout=0.1)


def test_modules_to_save_projections_and_fixed_mixing():
    config = embfuse_lora_config(tiny_fused("bert"), train_projections=True, modules_to_save=["pooler"])
    # Only the linear projection (source 1, width 16); source 2 (width 32) is an identity with no weights.
    assert config.modules_to_save == ["pooler", "mixer", "projections.0"]
    assert embfuse_lora_config(tiny_fused("bert", mixing="fixed")).modules_to_save == []
    assert set(embfuse_lora_config(tiny_fused("bert"), target_modules=["value"]).target_modules) == {"value"}


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_adapter_is_small_round_trips_and_merges(tmp_path, arch):
    _, auto_class, _ = CASES[arch]
    fused = fused_model(arch)
    fused.save_pretrained(tmp_path / "fused")
    peft_model = get_peft_model(fused, embfuse_lora_config(fused, r=4))
    mixer = peft_model.get_input_embeddings().mixer
    logits_before = mixer.original_module.logits.detach().clone()
    train_steps(peft_model)
    trained = mixer.modules_to_save["default"].logits.detach()
    assert not torch.allclose(trained, logits_before), "the mixer did not learn under LoRA"
    assert torch.equal(mixer.original_module.logits, logits_before)  # the base copy stays put

    peft_model.save_pretrained(tmp_path / "adapter")
    adapter_file = tmp_path / "adapter" / "adapter_model.safetensors"
    with safe_open(adapter_file, "pt") as handle:
        shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}  # noqa: SIM118
    assert any(".mixer.logits" in key for key in shapes) and any(".mixer.gate" in key for key in shapes)
    assert [key for key, shape in shapes.items() if VOCAB_BIG in shape] == []  # no vocabulary-sized table
    one_source_table = VOCAB_BIG * 16 * 4  # the narrowest source table, in bytes
    assert adapter_file.stat().st_size < one_source_table / 2

    x = ids(seed=7)
    expected = logits(peft_model, x)
    reloaded_base = auto_class.from_pretrained(tmp_path / "fused", trust_remote_code=True)
    reloaded = PeftModel.from_pretrained(reloaded_base, tmp_path / "adapter").eval()
    assert torch.equal(logits(reloaded, x), expected)

    merged = reloaded.merge_and_unload()
    assert type(merged).__name__ == type(fused).__name__
    assert torch.allclose(logits(merged, x), expected, atol=1e-5, rtol=0)
    assert torch.equal(merged.get_input_embeddings().mixer.logits, trained)


def test_gradient_checkpointing_gives_lora_and_mixer_gradients():
    fused = fused_model("llama")
    # Also makes the embedding's output require grad (`enable_input_require_grads`), which re-entrant
    # checkpointing of a frozen base needs.
    fused.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    peft_model = get_peft_model(fused, embfuse_lora_config(fused, r=4)).train()
    assert peft_model.is_activation_checkpointing
    x = ids()
    peft_model(input_ids=x, labels=x).loss.backward()
    lora_a = [p for name, p in peft_model.named_parameters() if "lora_A" in name]
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert lora_a and all(p.grad is not None for p in lora_a + lora_b)
    assert any(torch.count_nonzero(p.grad) > 0 for p in lora_b)  # B starts at zero; its gradient does not
    mixer_copy = peft_model.get_input_embeddings().mixer.modules_to_save["default"]
    assert mixer_copy.logits.grad is not None and torch.count_nonzero(mixer_copy.gate.grad) > 0
    frozen = [name for name, p in peft_model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen == []


def test_embfuse_trainer_trains_and_logs_a_lora_model(tmp_path):
    from hf_embfuse.training import EmbFuseTrainer
    from tests.fixtures_training import TinyTask, tiny_training_args

    fused = tiny_fused("bert", "sequence-classification", mixing="gated")
    peft_model = get_peft_model(fused, embfuse_lora_config(fused, r=4))
    mixer = peft_model.get_input_embeddings().mixer
    before = mixer.modules_to_save["default"].logits.detach().clone()
    trainer = EmbFuseTrainer(
        model=peft_model, args=tiny_training_args(tmp_path), train_dataset=TinyTask(), mixer_lr=5e-2
    )
    trainer.train()
    assert not torch.equal(mixer.modules_to_save["default"].logits, before)
    assert {group["name"]: group["initial_lr"] for group in trainer.optimizer.param_groups}["mixer"] == 5e-2
    assert any("mixing_std/random-0" in entry for entry in trainer.state.log_history)


def readme_lora_snippet():
    # The README links out; the snippet lives in docs/training.md, "LoRA with PEFT".
    page = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    section = page.split("## LoRA with PEFT", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_lora_snippet_runs_and_calls_nothing_deprecated(tmp_path, monkeypatch, caplog):
    from tests.fixtures_training import TinyTask, tiny_training_args

    tiny_fused("bert", "sequence-classification").save_pretrained(tmp_path / "fused-minilm")
    monkeypatch.chdir(tmp_path)
    code = readme_lora_snippet()
    namespace = {
        "model": tiny_fused("bert", "sequence-classification"),
        "args": tiny_training_args(tmp_path / "out", steps=2),
        "train": TinyTask(),
    }
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        exec(compile(code, "docs/training.md (LoRA with PEFT)", "exec"), namespace)
    messages = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    messages += [record.getMessage() for record in caplog.records]
    deprecated = {name for message in messages for name in re.findall(r"`([\w.]+)` is deprecated", message)}
    called = set(re.findall(r"(\w+)\(", code))
    assert "activation_checkpointing_enable" in called and deprecated & called == set()
    assert type(namespace["merged"]).__name__ == "EmbFuseForSequenceClassification"
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as handle:
        assert any(key.endswith(".classifier.weight") for key in handle.keys())  # noqa: SIM118


# The head PEFT must train, per task type: (PEFT task type, architecture, task, head). GPT-2's LM head is
# tied to the base table (source 0); Llama's is its own.
HEAD_CASES = [
    ("SEQ_CLS", "bert", "sequence-classification", "classifier"),
    ("TOKEN_CLS", "bert", "token-classification", "classifier"),
    ("CAUSAL_LM", "llama", "causal-lm", "lm_head"),
    ("CAUSAL_LM", "gpt2", "causal-lm", "lm_head"),
]
HEAD_IDS = [f"{task_type}-{arch}" for task_type, arch, _, _ in HEAD_CASES]


class HeadTask(torch.utils.data.Dataset):
    """TinyTask's ids with labels of the task's shape: one per sequence, one per token, or the ids (LM)."""

    def __init__(self, task):
        from tests.fixtures_training import TinyTask

        tiny = TinyTask(size=32)
        self.input_ids = tiny.input_ids
        self.labels = {
            "sequence-classification": tiny.labels,
            "token-classification": (tiny.input_ids > VOCAB // 2).long(),
            "causal-lm": tiny.input_ids,
        }[task]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


def peft_with_head(arch, task, head):
    fused = tiny_fused(arch, task)
    config = embfuse_lora_config(fused, r=4, modules_to_save=[head])
    peft_model = get_peft_model(fused, config)
    wrappers = [
        module
        for name, module in peft_model.named_modules()
        if type(module).__name__ == "ModulesToSaveWrapper" and name.split(".")[-1] == head
    ]
    assert len(wrappers) == 1, f"PEFT did not wrap exactly one {head}"
    return peft_model, wrappers[0]


@pytest.mark.parametrize(("task_type", "arch", "task", "head"), HEAD_CASES, ids=HEAD_IDS)
def test_the_heads_trainable_copy_gets_a_gradient(task_type, arch, task, head):
    peft_model, wrapper = peft_with_head(arch, task, head)
    assert peft_model.peft_config["default"].task_type == task_type
    batch = HeadTask(task)[:4]
    peft_model.train()(**batch).loss.backward()
    copy = wrapper.modules_to_save["default"]
    assert copy.weight.requires_grad and copy.weight.grad is not None
    assert torch.count_nonzero(copy.weight.grad) > 0
    assert wrapper.original_module.weight.grad is None  # the frozen original is not what ran


@pytest.mark.parametrize(("task_type", "arch", "task", "head"), HEAD_CASES, ids=HEAD_IDS)
def test_the_head_trains_is_saved_and_merges_to_the_trained_logits(tmp_path, task_type, arch, task, head):
    from transformers import Trainer

    from tests.fixtures_training import tiny_training_args

    peft_model, wrapper = peft_with_head(arch, task, head)
    copy = wrapper.modules_to_save["default"]
    before = copy.weight.detach().clone()
    args = tiny_training_args(tmp_path / "run", steps=20, learning_rate=1e-2, logging_steps=20)
    Trainer(model=peft_model, args=args, train_dataset=HeadTask(task)).train()
    trained = copy.weight.detach().clone()
    assert not torch.allclose(trained, before), f"{head} did not move in 20 Trainer steps"

    peft_model.save_pretrained(tmp_path / "adapter")
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as handle:
        saved = [key for key in handle.keys() if key.endswith(f".{head}.weight")]  # noqa: SIM118
        assert len(saved) == 1 and torch.equal(handle.get_tensor(saved[0]), trained)

    x = HeadTask(task).input_ids[:3]
    expected = logits(peft_model.eval(), x)
    fresh = tiny_fused(arch, task)  # the same seeded model the adapter was trained on
    merged = PeftModel.from_pretrained(fresh, tmp_path / "adapter").merge_and_unload()
    assert type(merged).__name__ == type(fresh).__name__
    assert torch.allclose(logits(merged.eval(), x), expected, atol=1e-5, rtol=0)
    assert torch.equal(getattr(merged, head).weight, trained)


@pytest.mark.parametrize(
    ("arch", "task", "head"),
    [
        ("bert", "sequence-classification", "classifier"),
        ("bert", "token-classification", "classifier"),
        ("llama", "causal-lm", "lm_head"),
    ],
)
def test_a_head_assigned_on_the_wrapper_is_the_one_the_forward_pass_uses(arch, task, head):
    model = tiny_fused(arch, task)
    x = ids(batch=2, length=5) % VOCAB
    old = logits(model, x)
    new = torch.nn.Linear(HIDDEN, old.shape[-1])
    setattr(model, head, new)
    assert getattr(model, head) is new
    with torch.no_grad():
        new.weight.zero_()
        new.bias.copy_(torch.arange(old.shape[-1], dtype=torch.float32))
    assert torch.equal(logits(model, x), new.bias.expand_as(old))  # only the new head's bias is left
    with torch.no_grad():
        new.weight.normal_()
    changed = logits(model, x)
    assert not torch.allclose(changed, new.bias.expand_as(old)) and not torch.allclose(changed, old)
