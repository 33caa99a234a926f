"""EmbFuseConfig: validation names the field and the fix; the nested base config round-trips."""

import math

import pytest
from transformers import AutoConfig

from hf_embfuse import FORMAT_VERSION, EmbFuseConfig, EmbFuseModel
from tests.fixtures_models import HIDDEN, tiny_config

BASE = {"name": "base", "width": HIDDEN, "projection": "identity"}
LINEAR = {"name": "glove", "width": 16, "projection": "linear"}


def make(**kwargs):
    kwargs.setdefault("base_config", tiny_config("bert"))
    kwargs.setdefault("sources", [BASE, LINEAR])
    return EmbFuseConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mixing": "average"}, "`mixing` must be one of 'fixed', 'learned', 'gated'"),
        ({"mixing": "fixed"}, "needs `fixed_weights`"),
        ({"mixing": "fixed", "fixed_weights": [1.5, -0.5]}, "`fixed_weights` must be finite and >= 0"),
        ({"mixing": "fixed", "fixed_weights": [math.nan, 1.0]}, "`fixed_weights` must be finite and >= 0"),
        ({"mixing": "fixed", "fixed_weights": [0.5, 0.2]}, "`fixed_weights` must sum to 1"),
        ({"mixing": "fixed", "fixed_weights": [1.0]}, "one per source"),
        ({"regularizer": "l3"}, "`regularizer` must be one of"),
        ({"reg_lambda": -1.0}, "`reg_lambda` must be a finite number >= 0"),
        ({"mixing_temperature": 0.0}, "`mixing_temperature` must be a finite number > 0"),
        ({"source_dtype": "int8"}, "`source_dtype` must be one of"),
        ({"sources": [BASE, {**LINEAR, "projection": "mlp"}]}, "`sources[1]['projection']` must be one of"),
        ({"sources": [BASE, {**LINEAR, "width": 0}]}, "`sources[1]['width']` must be a positive int"),
        ({"sources": [{**BASE, "projection": "linear"}]}, "its `projection` must be 'identity'"),
        ({"format_version": FORMAT_VERSION + 1}, "Upgrade hf-embfuse"),
    ],
)
def test_invalid_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        make(**kwargs)


def test_newer_checkpoint_is_refused_on_load(tmp_path):
    config = make()
    config.format_version = FORMAT_VERSION + 1  # as written by a future release
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"`format_version` is {FORMAT_VERSION + 1}"):
        EmbFuseConfig.from_pretrained(tmp_path)


def test_missing_base_config_is_a_clear_error():
    with pytest.raises(ValueError, match=r"needs `config.base_config`.*from_base"):
        EmbFuseModel(EmbFuseConfig())


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_round_trip_keeps_base_config_and_provenance(tmp_path, arch):
    alignment = {"counts": {"exact": 10, "uncovered": 2}, "coverage": 0.83}
    config = make(
        base_config=tiny_config(arch),
        sources=[BASE, {**LINEAR, "revision": "abc123", "alignment": alignment}],
        mixing="gated",
        fixed_weights=[0.75, 0.25],
        regularizer="entropy",
        reg_lambda=0.01,
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, EmbFuseConfig)
    assert type(loaded.base_config) is type(config.base_config)
    assert loaded.base_config.to_dict() == config.base_config.to_dict()
    assert loaded.sources[1]["alignment"] == alignment
    assert loaded.sources[1]["revision"] == "abc123"
    assert (loaded.mixing, loaded.fixed_weights, loaded.regularizer, loaded.reg_lambda) == (
        "gated",
        [0.75, 0.25],
        "entropy",
        0.01,
    )
    assert loaded.get_text_config().vocab_size == config.base_config.vocab_size


def test_base_dict_without_model_type_is_refused():
    with pytest.raises(ValueError, match="`base_config` has no `model_type`"):
        EmbFuseConfig(base_config={"hidden_size": 32})


def test_a_composite_bases_text_fields_are_read_and_written_through_its_text_config():
    from transformers import LlavaConfig

    base = LlavaConfig(text_config=tiny_config("llama").to_dict())
    config = make(base_config=base, sources=[BASE])
    assert config.vocab_size == base.get_text_config().vocab_size
    config.vocab_size = 77
    assert base.get_text_config().vocab_size == 77 and "vocab_size" not in config.to_dict()
