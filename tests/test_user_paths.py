"""What a user meets on the way: `pathlib.Path` wherever a path goes, and a missing base named as such."""

import os
import stat
from pathlib import Path

import pytest
import torch

from hf_embfuse.atomic import OutputExistsError
from hf_embfuse.baking import bake_to_folder
from hf_embfuse.build import build_to_folder, fuse
from hf_embfuse.checkpoint_folder import load_embfuse_folder
from hf_embfuse.cli import main
from hf_embfuse.inspection import describe_checkpoint
from hf_embfuse.recipe import Recipe, RecipeError
from hf_embfuse.wrap import from_base
from tests.fixtures_models import tiny_base
from tests.fixtures_tokenizers import make_wordpiece_tokenizer

MISSING = "No such file or folder"


@pytest.fixture
def base_dir(tmp_path) -> Path:
    folder = tmp_path / "base"
    tiny_base("bert").save_pretrained(folder)
    make_wordpiece_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def source_dir(tmp_path) -> Path:
    folder = tmp_path / "source"
    tiny_base("bert", seed=3).save_pretrained(folder)
    make_wordpiece_tokenizer().save_pretrained(folder)
    return folder


def test_fuse_takes_paths_for_the_base_and_every_kind_of_source(base_dir, source_dir):
    result = fuse(base_dir, [source_dir, {"path": source_dir, "projection": "identity"}])
    assert result.model.config.num_sources == 3
    assert result.model.config.base_model_name_or_path == "base"  # the folder's name, as for a string
    reference = fuse(str(base_dir), [str(source_dir), {"path": str(source_dir), "projection": "identity"}])
    ids = torch.tensor([[5, 9, 30]])
    with torch.no_grad():
        assert torch.equal(
            result.model(input_ids=ids).last_hidden_state, reference.model(input_ids=ids).last_hidden_state
        )


def test_a_bad_source_field_names_the_key_not_a_pydantic_traceback(base_dir, source_dir):
    with pytest.raises(
        RecipeError, match=r"Invalid fuse\(\) arguments:\n  sources\.0\.projection: "
    ) as error:
        fuse(base_dir, [{"path": source_dir, "projection": "nearest"}])
    assert "pydantic" not in str(error.value)


def test_from_base_build_bake_and_inspect_take_paths(base_dir, source_dir, tmp_path):
    assert from_base(base_dir).config.sources[0]["kind"] == "base"
    recipe = Recipe(base=base_dir, sources=[{"path": source_dir, "vocab_path": None}])
    assert recipe.base == str(base_dir) and recipe.sources[0].path == str(source_dir)
    out = tmp_path / "fused"
    build_to_folder(recipe, out)
    assert (out / "config.json").is_file()
    assert (
        describe_checkpoint(out)["sources"][1]["name"] == describe_checkpoint(str(out))["sources"][1]["name"]
    )
    assert type(load_embfuse_folder(out)).__name__ == "EmbFuseModel"
    baked = bake_to_folder(out, tmp_path / "baked")
    assert baked == tmp_path / "baked" and (baked / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "base",
    [
        "/no/such/base-model",  # an absolute path
        "./no-such-base",  # a relative path that cannot be a Hub id
        Path("no-such-base"),  # a Path is never a Hub id
    ],
)
def test_a_missing_base_gets_the_sources_message(base, source_dir):
    with pytest.raises(FileNotFoundError, match=f"{MISSING}: .*not a Hub repo id either"):
        fuse(base, [source_dir])


def test_a_missing_base_that_could_be_a_hub_id_says_both(source_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # "models/no-such-base" is neither here nor in the (offline) Hub cache
    with pytest.raises(
        FileNotFoundError, match=f"{MISSING}: 'models/no-such-base', and no Hub repo of that id"
    ):
        fuse("models/no-such-base", [source_dir])


def test_from_base_with_a_missing_path_gets_the_same_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{MISSING}: .*not a Hub repo id either"):
        from_base(tmp_path / "missing")


def test_cli_build_with_a_missing_base_is_one_line_and_writes_nothing(source_dir, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base: ./no-such-base\nsources:\n  - path: {source_dir}\n")
    assert main(["build", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and MISSING in err and "no-such-base" in err
    assert not (tmp_path / "out").exists()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_build_and_bake_outputs_get_the_folder_mode_save_pretrained_gives(
    umask, base_dir, source_dir, tmp_path
):
    previous = os.umask(umask)
    try:
        tiny_base("bert").save_pretrained(tmp_path / "plain")
        build_to_folder(Recipe(base=base_dir, sources=[{"path": source_dir}]), tmp_path / "fused")
        bake_to_folder(tmp_path / "fused", tmp_path / "baked")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "plain") == 0o777 & ~umask
    assert _mode(tmp_path / "fused") == _mode(tmp_path / "plain")
    assert _mode(tmp_path / "baked") == _mode(tmp_path / "plain")


def test_api_errors_name_the_argument_and_the_cli_its_flag(base_dir, source_dir, tmp_path, capsys):
    recipe = Recipe(base=base_dir, sources=[{"path": source_dir}])
    build_to_folder(recipe, tmp_path / "fused")
    (tmp_path / "baked").mkdir()
    for call in (
        lambda: build_to_folder(recipe, tmp_path / "fused"),
        lambda: bake_to_folder(tmp_path / "fused", tmp_path / "baked"),
    ):
        with pytest.raises(OutputExistsError) as error:
            call()
        assert "overwrite=True" in str(error.value) and "--" not in str(error.value)
    with pytest.raises(ValueError, match="being baked; choose another one") as error:
        bake_to_folder(tmp_path / "fused", tmp_path / "fused", overwrite=True)

    assert main(["bake", str(tmp_path / "fused"), "--out", str(tmp_path / "baked")]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite" in err and "overwrite=True" not in err
