"""Each runtime value has one owner: what the config says after loading is what the model runs."""

import pytest
import torch

from hf_embfuse import EmbFuseForSequenceClassification, EmbFuseModel
from tests.fixtures_models import VOCAB, tiny_fused


def ids(batch=2, length=9, seed=0):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_fixed_weights_given_to_from_pretrained_are_the_weights_the_model_runs(tmp_path):
    tiny_fused("bert", mixing="fixed", fixed_weights=[0.5, 0.25, 0.25]).save_pretrained(tmp_path)
    overridden = EmbFuseModel.from_pretrained(tmp_path, fixed_weights=[1.0, 0.0, 0.0])
    embedding = overridden.get_input_embeddings()
    x = torch.arange(3, VOCAB)
    with torch.no_grad():
        base_only = embedding.weight[x] * embedding.embed_scale
        assert overridden.config.fixed_weights == [1.0, 0.0, 0.0]
        assert torch.allclose(embedding(x), base_only)
        # Set after loading, too: the config is read on every call.
        overridden.config.fixed_weights = [0.5, 0.25, 0.25]
        assert not torch.allclose(embedding(x), base_only)


def test_fixed_weights_saved_are_the_configs(tmp_path):
    model = tiny_fused("bert", mixing="fixed", fixed_weights=[0.5, 0.25, 0.25])
    model.config.fixed_weights = [1.0, 0.0, 0.0]
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        key = next(key for key in handle.keys() if key.endswith("mixer.fixed_weights"))  # noqa: SIM118
        assert handle.get_tensor(key).tolist() == [1.0, 0.0, 0.0]
    reloaded = EmbFuseModel.from_pretrained(tmp_path)
    assert reloaded.config.fixed_weights == [1.0, 0.0, 0.0]


def test_regularizer_set_after_loading_adds_its_loss(tmp_path):
    tiny_fused("bert", "sequence-classification").save_pretrained(tmp_path)
    model = EmbFuseForSequenceClassification.from_pretrained(tmp_path).eval()
    model.config.regularizer = "entropy"
    model.config.reg_lambda = 0.5
    with torch.no_grad():
        out = model(input_ids=ids(), labels=torch.tensor([0, 1]))
    assert out.regularization_loss > 0


def test_mixing_temperature_set_after_loading_changes_the_weights():
    model = tiny_fused("bert")
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        embedding.mixer.logits.copy_(torch.tensor([1.0, 0.0, -1.0]))
        before = embedding.mean_mixing_weights()
        model.config.mixing_temperature = 10.0
        after = embedding.mean_mixing_weights()
    assert not torch.allclose(before, after)


def test_base_field_set_on_the_config_is_the_base_models():
    model = tiny_fused("gpt2", "causal-lm")
    config = model.config
    config.vocab_size = 123
    assert config.base_config.vocab_size == 123
    model.resize_token_embeddings(110)
    assert config.vocab_size == config.base_config.vocab_size == config.get_text_config().vocab_size == 110
    # A base field the base model's forward reads (GPT-2's classification head reads pad_token_id).
    config.pad_token_id = 7
    assert config.base_config.pad_token_id == 7 and config.to_dict()["pad_token_id"] == 7
    assert "vocab_size" not in config.to_dict()  # one owner: the nested base config


def test_base_fields_round_trip_through_save(tmp_path):
    model = tiny_fused("gpt2", "causal-lm")
    model.config.pad_token_id = 7
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, resid_pdrop=0.0)
    assert loaded.config.pad_token_id == loaded.config.base_config.pad_token_id == 7
    assert loaded.config.base_config.resid_pdrop == 0.0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_resize_without_mean_resizing_initialises_new_rows_as_the_base_does(arch):
    model = tiny_fused(arch, "causal-lm")
    embedding = model.get_input_embeddings()
    old_mean = embedding.weight.detach().mean(dim=0)
    model.resize_token_embeddings(VOCAB + 4, mean_resizing=False)
    new_rows = embedding.weight.detach()[VOCAB:]
    assert not torch.allclose(new_rows[0], old_mean)
    assert not torch.allclose(new_rows[0], new_rows[1])
    assert embedding.coverage[VOCAB:].tolist() == [[True, False, False]] * 4


def test_resize_with_mean_resizing_uses_the_mean():
    model = tiny_fused("llama", "causal-lm")
    embedding = model.get_input_embeddings()
    old_mean = embedding.weight.detach().mean(dim=0)
    model.resize_token_embeddings(VOCAB + 2, mean_resizing=True)
    assert torch.allclose(embedding.weight.detach()[VOCAB:], old_mean.expand(2, -1), atol=1e-4)
