"""MultiSourceEmbedding and the EmbFuse* wrappers, on tiny models of three architectures."""

import pytest
import torch
from accelerate import init_empty_weights

import hf_embfuse
from hf_embfuse import EmbFuseConfig, MultiSourceEmbedding, SourceSpec
from tests.fixtures_models import (
    HIDDEN,
    VOCAB,
    random_sources,
    tiny_base,
    tiny_fused,
)

TASK_OF_ARCH = {"bert": "sequence-classification", "gpt2": "causal-lm", "llama": "causal-lm"}


def ids(batch=2, length=9, seed=0):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def output_of(model, input_ids):
    out = model(input_ids=input_ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_fixed_one_hot_reproduces_the_base_exactly(arch):
    task = TASK_OF_ARCH[arch]
    base = tiny_base(arch, task)
    x = ids()
    with torch.no_grad():
        expected = output_of(base, x)
    sources = random_sources(VOCAB)
    fused = hf_embfuse.from_base(base, sources, mixing="fixed", fixed_weights=[1.0, 0.0, 0.0])
    with torch.no_grad():
        assert torch.equal(output_of(fused.eval(), x), expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generate_with_one_hot_weights_matches_the_base(arch):
    base = tiny_base(arch, "causal-lm")
    prompt = ids(1, 5)
    expected = base.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    fused = hf_embfuse.from_base(base, random_sources(VOCAB), mixing="fixed", fixed_weights=[1, 0, 0])
    got = fused.eval().generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(got, expected)
    # The KV cache is used: a cached generation equals an uncached one.
    uncached = fused.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(got, uncached)


def test_token_covered_by_one_source_gets_exactly_its_projected_vector():
    base = tiny_base("bert")
    table = torch.randn(VOCAB, 16)
    coverage = torch.zeros(VOCAB, dtype=torch.bool)
    coverage[7] = True
    fused = hf_embfuse.from_base(base, [SourceSpec(table=table, coverage=coverage)], mixing="learned")
    embedding = fused.get_input_embeddings()
    embedding.coverage[7, 0] = False  # token 7: only source 1 has it
    with torch.no_grad():
        got = embedding(torch.tensor([[7, 8]]))
        projection = embedding.projections[0]
        assert torch.allclose(got[0, 0], projection(table[7]), atol=0, rtol=0)
        assert torch.equal(got[0, 1], embedding.weight[8])  # token 8: only the base has it


def test_uncovered_source_drops_out_instead_of_pulling_to_zero():
    base = tiny_base("bert")
    table = torch.zeros(VOCAB, HIDDEN)  # a source that "has" zeros would halve the vector if it were mixed in
    fused = hf_embfuse.from_base(
        base, [SourceSpec(table=table, coverage=torch.zeros(VOCAB, dtype=torch.bool))], mixing="learned"
    )
    embedding = fused.get_input_embeddings()
    with torch.no_grad():
        assert torch.equal(embedding(torch.tensor([[5]]))[0, 0], embedding.weight[5])


def test_padding_row_is_the_base_row_and_gets_no_gradient():
    fused = tiny_fused("bert")
    embedding = fused.get_input_embeddings()
    assert embedding.padding_idx == 0
    out = embedding(torch.tensor([[0, 5]]))
    assert torch.equal(out[0, 0], embedding.weight[0])
    out.sum().backward()
    assert torch.count_nonzero(embedding.weight.grad[0]) == 0
    assert torch.count_nonzero(embedding.weight.grad[5]) > 0


@pytest.mark.parametrize("mixing", ["fixed", "learned", "gated"])
def test_fused_weight_equals_the_per_token_forward(mixing):
    fused = tiny_fused("llama", "causal-lm", mixing=mixing)
    embedding = fused.get_input_embeddings()
    if mixing == "gated":
        torch.nn.init.normal_(embedding.mixer.gate, std=0.5)
    every_id = torch.arange(VOCAB).view(1, -1)
    with torch.no_grad():
        assert torch.allclose(embedding.fused_weight(chunk_size=10), embedding(every_id)[0], atol=1e-6)
    weights = embedding.mean_mixing_weights()
    assert weights.shape == (3,) and torch.isclose(weights.sum(), torch.tensor(1.0))


def test_forward_gathers_only_batch_rows():
    """The projection runs on the distinct ids of the batch, never on the whole vocabulary."""
    fused = tiny_fused("bert")
    embedding = fused.get_input_embeddings()
    seen = []
    embedding.projections[0].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    embedding(torch.tensor([[4, 4, 5, 6, 4]]))
    assert seen == [3]


@pytest.mark.parametrize("mixing", ["learned", "gated"])
def test_mixing_parameters_receive_gradients(mixing):
    fused = tiny_fused("bert", "sequence-classification", mixing=mixing).train()
    loss = fused(input_ids=ids(), labels=torch.tensor([0, 2])).loss
    loss.backward()
    mixer = fused.get_input_embeddings().mixer
    assert mixer.logits.grad is not None and torch.count_nonzero(mixer.logits.grad) > 0
    if mixing == "gated":
        assert torch.count_nonzero(mixer.gate.grad) > 0
    # frozen by default: the aligned source tables
    assert all(table.grad is None for table in fused.get_input_embeddings().source_tables)


@pytest.mark.parametrize("regularizer", ["anchor", "entropy"])
def test_regularizer_is_added_to_the_loss_and_reported(regularizer):
    x, labels = ids(), torch.tensor([0, 1])
    plain = tiny_fused("bert", "sequence-classification")
    regularized = tiny_fused("bert", "sequence-classification", regularizer=regularizer, reg_lambda=0.5)
    with torch.no_grad():
        out_plain = plain(input_ids=x, labels=labels)
        out = regularized(input_ids=x, labels=labels)
    assert "regularization_loss" not in out_plain
    assert out.regularization_loss > 0
    assert torch.allclose(out.loss, out_plain.loss + 0.5 * out.regularization_loss)


def test_bf16_and_autocast():
    fused = tiny_fused("llama", "causal-lm", mixing="gated")
    x = ids()
    with torch.no_grad():
        reference = fused(input_ids=x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = fused(input_ids=x).logits
        embedding = fused.get_input_embeddings()
        assert embedding(x).dtype == torch.float32
        fused.to(torch.bfloat16)
        assert embedding(x).dtype == torch.bfloat16
        half = fused(input_ids=x).logits
    for out in (autocast, half):
        assert torch.isfinite(out).all()
        assert torch.nn.functional.cosine_similarity(out.float().flatten(), reference.flatten(), dim=0) > 0.99


def test_bf16_source_storage_is_projected_in_fp32():
    base = tiny_base("bert")
    table = torch.full((VOCAB, 16), 3.0e4)  # fp16-sized values whose products overflow in fp16
    fused = hf_embfuse.from_base(base, [SourceSpec(table=table, projection="linear")], source_dtype="float16")
    embedding = fused.get_input_embeddings()
    assert embedding.source_tables[0].dtype == torch.float16
    with torch.no_grad():
        embedding.projections[0].weight.fill_(1.0)
        assert torch.isfinite(embedding(torch.tensor([[5]]))).all()


def test_tied_head_stays_tied_to_the_base_table_without_duplication(tmp_path):
    fused = tiny_fused("gpt2", "causal-lm")
    # The base model is the submodule under its own prefix: `transformer` (a GPT2LMHeadModel) for GPT-2.
    assert fused.base_model is fused.transformer
    assert fused.base_model.lm_head.weight is fused.base_model.transformer.wte.weight
    assert fused.all_tied_weights_keys == {"transformer.lm_head.weight": "transformer.transformer.wte.weight"}
    fused.save_pretrained(tmp_path)
    from safetensors import safe_open

    keys = set(safe_open(tmp_path / "model.safetensors", "pt").keys())
    assert "transformer.transformer.wte.weight" in keys and "transformer.lm_head.weight" not in keys
    loaded = hf_embfuse.EmbFuseForCausalLM.from_pretrained(tmp_path)
    assert loaded.base_model.lm_head.weight is loaded.base_model.transformer.wte.weight


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_resize_token_embeddings_covers_new_rows_by_the_base_only(arch):
    fused = tiny_fused(arch, "causal-lm")
    before = fused(input_ids=ids()).logits
    fused.resize_token_embeddings(VOCAB + 5)
    embedding = fused.get_input_embeddings()
    assert embedding.weight.shape[0] == VOCAB + 5
    assert all(table.shape[0] == VOCAB + 5 for table in embedding.source_tables)
    assert embedding.coverage[VOCAB:].tolist() == [[True, False, False]] * 5
    assert fused.get_output_embeddings().weight.shape[0] == VOCAB + 5
    assert fused.config.base_config.vocab_size == VOCAB + 5
    if arch == "gpt2":
        assert fused.get_output_embeddings().weight is embedding.weight
    after = fused(input_ids=ids()).logits
    assert torch.allclose(after[..., :VOCAB], before, atol=1e-6)
    assert fused(input_ids=torch.tensor([[VOCAB + 4]])).logits.shape[-1] == VOCAB + 5


def test_gradient_checkpointing_with_input_require_grads():
    fused = tiny_fused("llama", "causal-lm").train()
    fused.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    fused.enable_input_require_grads()
    for parameter in fused.parameters():
        parameter.requires_grad_(False)
    mixer = fused.get_input_embeddings().mixer
    mixer.logits.requires_grad_(True)
    layer = fused.base_model.model.layers[0].self_attn.q_proj.weight
    layer.requires_grad_(True)
    x = ids()
    fused(input_ids=x, labels=x).loss.backward()
    assert layer.grad is not None and torch.count_nonzero(layer.grad) > 0
    assert mixer.logits.grad is not None


def test_init_empty_weights_builds_on_meta():
    fused = tiny_fused("bert")
    with init_empty_weights():
        empty = hf_embfuse.EmbFuseModel(EmbFuseConfig.from_dict(fused.config.to_dict()))
    embedding = empty.get_input_embeddings()
    assert isinstance(embedding, MultiSourceEmbedding)
    assert embedding.weight.device.type == "meta"
    assert [p.shape for p in embedding.source_tables] == [
        p.shape for p in fused.get_input_embeddings().source_tables
    ]


def test_device_map_auto_load_equals_plain_load(tmp_path):
    fused = tiny_fused("llama", "causal-lm", mixing="gated")
    fused.save_pretrained(tmp_path)
    plain = hf_embfuse.EmbFuseForCausalLM.from_pretrained(tmp_path)
    mapped = hf_embfuse.EmbFuseForCausalLM.from_pretrained(tmp_path, device_map="auto")
    assert {p.device.type for p in mapped.parameters()} == {"cpu"}
    x = ids()
    with torch.no_grad():
        assert torch.equal(mapped(input_ids=x).logits, plain(input_ids=x).logits)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SourceSpec(table=torch.randn(VOCAB - 1, 16)), "has 96 rows but the base embedding has 97"),
        (SourceSpec(table=torch.full((VOCAB, 16), float("nan"))), "rows with NaN/Inf"),
        (
            SourceSpec(table=torch.randn(VOCAB, 16).index_fill_(0, torch.tensor([3]), float("inf"))),
            "first: row 3",
        ),
        (SourceSpec(table=torch.randn(VOCAB, 16), projection="identity"), "Use projection='linear'"),
        (
            SourceSpec(table=torch.randn(VOCAB, 16), coverage=torch.ones(5, dtype=torch.bool)),
            "`coverage` must",
        ),
        (SourceSpec(table=torch.randn(VOCAB)), "must be a 2-D tensor"),
    ],
)
def test_bad_source_tables_are_refused(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hf_embfuse.from_base(tiny_base("bert"), [spec])


def test_config_with_identity_projection_at_other_width_is_refused():
    fused = tiny_fused("bert")
    config = EmbFuseConfig.from_dict(fused.config.to_dict())
    config.sources[1]["projection"] = "identity"  # width 16 into a 32-wide base
    with pytest.raises(ValueError, match=r"projection is 'identity'\. Use projection='linear'"):
        hf_embfuse.EmbFuseModel(config)
