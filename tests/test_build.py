"""`fuse`, recipes and `hf-embfuse build` / `inspect` on tiny on-disk sources; bad input leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import hf_embfuse
from hf_embfuse.cli import main
from hf_embfuse.recipe import RecipeError, load_recipe, parse_recipe
from tests.fixtures_sources import (
    SPECIALS,
    WORDS,
    random_table,
    save_tiny_checkpoint,
    vector_lines,
    write_tiny_gguf,
)

GLOVE_WORDS = ["the", "cat", "sat", "on", "mat", "dog", *[f"w{i}" for i in range(40)]]


@pytest.fixture
def sources(tmp_path) -> dict[str, Path]:
    """A tiny BERT base (WordPiece), a GPT-2 source with the same vocabulary, GloVe-style vectors, a GGUF."""
    paths = {"base": tmp_path / "base", "gpt2": tmp_path / "gpt2", "glove": tmp_path / "glove.txt"}
    save_tiny_checkpoint(paths["base"], "bert", "BertForSequenceClassification")
    save_tiny_checkpoint(paths["gpt2"], "gpt2", seed=1)
    paths["glove"].write_text("\n".join(vector_lines(GLOVE_WORDS, random_table(len(GLOVE_WORDS), 8))) + "\n")
    paths["gguf"] = tmp_path / "tiny.gguf"
    write_tiny_gguf(paths["gguf"])
    return paths


def write_recipe(folder: Path, paths: dict[str, Path], **overrides) -> Path:
    recipe = {
        "base": str(paths["base"]),
        "task": "sequence-classification",
        "num_labels": 2,
        "mixing": "gated",
        "sources": [
            {"path": str(paths["gpt2"]), "projection": "linear"},
            {"path": str(paths["glove"]), "projection": {"method": "transport", "k": 3}},
        ],
        **overrides,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_fuse_builds_a_working_model_with_reports(sources):
    result = hf_embfuse.fuse(
        str(sources["base"]),
        [{"path": str(sources["gpt2"]), "projection": "linear"}, str(sources["glove"]), str(sources["gguf"])],
        task="sequence-classification",
        num_labels=2,
        mixing="learned",
        base_weight=0.4,
    )
    model, reports = result.model, result.reports
    assert isinstance(model, hf_embfuse.EmbFuseForSequenceClassification)
    assert [r.kind for r in reports] == ["hf", "vectors", "gguf"]
    # Same WordPiece vocabulary: every content token is an exact match.
    gpt2 = reports[0].alignment
    assert gpt2.counts["exact"] == len(WORDS) and gpt2.counts["special"] >= 4
    # GloVe has whole words only: the two `##` continuations stay uncovered.
    glove = reports[1].alignment
    assert glove.counts["exact"] == len(GLOVE_WORDS)
    embedding = model.get_input_embeddings()
    assert embedding.coverage[:, 2].sum() == len(GLOVE_WORDS)
    assert torch.allclose(embedding.mixer.fixed_weights, torch.tensor([0.4, 0.2, 0.2, 0.2]))
    assert (
        model.config.sources[1]["projection"] == "linear"
        and model.config.sources[2]["projection"] == "identity"
    )
    assert model.config.sources[1]["alignment"]["counts"]["exact"] == len(WORDS)
    ids = result.tokenizer(["the cat sat"], return_tensors="pt")
    assert model(**ids).logits.shape == (1, 2)


def test_cli_build_then_inspect(sources, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["build", str(write_recipe(tmp_path, sources)), "--out", str(out), "--no-progress"]) == 0
    assert {
        "config.json",
        "model.safetensors",
        "modeling_embfuse.py",
        "tokenizer.json",
        "embfuse_report.json",
    } <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "embfuse" in card and "glove.txt" in card and "trust_remote_code=True" in card
    report = json.loads((out / "embfuse_report.json").read_text())
    assert [s["projection"]["method"] for s in report["sources"]] == ["procrustes", "transport"]
    assert not list(tmp_path.glob(".out.tmp-*")), "staging folder left behind"
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "mixing=gated" in shown and "content hash" in shown and "glove.txt" in shown
    assert main(["inspect", str(out), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    weights = [s["mean_weight"] for s in described["sources"]]
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-3
    loaded = hf_embfuse.EmbFuseForSequenceClassification.from_pretrained(out)
    assert loaded.config.mixing == "gated"


def test_cli_build_prints_how_each_source_reached_the_base_space(sources, tmp_path, capsys):
    """Every method gets its line, OMP included (it once printed none), and config.json records it as omp."""
    recipe = write_recipe(
        tmp_path,
        sources,
        sources=[
            {"path": str(sources["gpt2"]), "projection": {"method": "omp", "atoms": 3}},
            {"path": str(sources["glove"]), "projection": {"method": "transport", "k": 3}},
        ],
    )
    out = tmp_path / "out"
    assert main(["build", str(recipe), "--out", str(out), "--no-progress"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "projection:" in line]
    assert len(lines) == 2
    assert lines[0].startswith("  projection: omp (3 atoms)") and "anchors" in lines[0]
    assert lines[1].startswith("  projection: transport (k=3)")
    config = json.loads((out / "config.json").read_text())
    assert [s["initialization"] for s in config["sources"][1:]] == ["omp", "transport"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sources_extra": {"projektion": "linear"}}, "sources.0.projektion: unknown key"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"mixing": "average"}, "mixing: Value error, must be one of"),
        ({"sources_extra": {"projection": "mlp"}}, "sources.0.projection"),
        ({"base_weight": 1.5}, "base_weight"),
        ({"sources": []}, "sources"),
    ],
)
def test_recipe_errors_name_the_key(sources, tmp_path, change, message):
    data = yaml.safe_load(write_recipe(tmp_path, sources).read_text())
    if "sources_extra" in change:
        data["sources"][0].update(change.pop("sources_extra"))
    data.update(change)
    with pytest.raises(RecipeError, match=message.replace(".", r"\.")):
        parse_recipe(data)


def test_recipe_resolves_package_paths_and_relative_paths(tmp_path):
    (tmp_path / "vectors.txt").write_text("the 1 2\n")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text("base: pkg:hf_embfuse/templates\nsources:\n  - path: vectors.txt\n")
    recipe = load_recipe(recipe_file)
    assert Path(recipe.base) == Path(hf_embfuse.__file__).parent / "templates"
    assert recipe.sources[0].path == str(tmp_path / "vectors.txt")
    with pytest.raises(RecipeError, match="package 'no_such_package' is not installed"):
        parse_recipe({"base": "pkg:no_such_package/x", "sources": [{"path": "a"}]})


def _bad_sources(tmp_path: Path, sources: dict[str, Path]) -> dict[str, tuple[dict, str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    pickled = tmp_path / "pickled"
    save_tiny_checkpoint(pickled, "gpt2")
    for file in pickled.glob("*.safetensors"):
        file.unlink()
    state = {"wte.weight": torch.randn(len(SPECIALS) + len(WORDS), 16)}
    torch.save(state, pickled / "pytorch_model.bin")
    wrong_width = tmp_path / "wrong.txt"
    wrong_width.write_text("the 1 2 3\ncat 1 2\n")
    unrelated = tmp_path / "unrelated.txt"
    unrelated.write_text("\n".join(vector_lines(["zzz", "qqq"], np.ones((2, 3), dtype=np.float32))) + "\n")
    no_embd = tmp_path / "no_embd.gguf"
    write_tiny_gguf(no_embd, with_embedding=False)
    broken_tokenizer = tmp_path / "broken_tokenizer"
    save_tiny_checkpoint(broken_tokenizer, "gpt2")
    (broken_tokenizer / "tokenizer.json").write_text("{not json")
    return {
        "missing path": ({"path": str(tmp_path / "nowhere")}, "nowhere"),
        "no weights": ({"path": str(empty)}, "empty"),
        "pickle": ({"path": str(pickled)}, "allow_pickle"),
        "wrong width": ({"path": str(wrong_width)}, "line 2"),
        "low coverage": ({"path": str(unrelated)}, "allow_low_coverage"),
        "gguf without token_embd": ({"path": str(no_embd)}, "token_embd"),
        "tokenizer": ({"path": str(broken_tokenizer)}, "tokenizer"),
    }


BAD = [
    "missing path",
    "no weights",
    "pickle",
    "wrong width",
    "low coverage",
    "gguf without token_embd",
    "tokenizer",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_sources_fail_clearly_and_leave_no_output(sources, tmp_path, capsys, case):
    source, message = _bad_sources(tmp_path, sources)[case]
    recipe = write_recipe(tmp_path, sources, sources=[source])
    out = tmp_path / "out"
    assert main(["build", str(recipe), "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    error = error.strip().splitlines()[-1]  # earlier lines: the fixtures' progress bars
    assert error.startswith("hf-embfuse build: error:") and message in error
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_low_coverage_threshold_and_opt_in(sources, tmp_path):
    few = tmp_path / "few.txt"
    few.write_text("\n".join(vector_lines(["the", "cat", "zzz"], random_table(3, 4))) + "\n")
    source = {"path": str(few), "min_coverage": 0.5}
    with pytest.raises(ValueError, match="allow_low_coverage"):
        hf_embfuse.build.fuse_recipe(load_recipe(write_recipe(tmp_path, sources, sources=[source])))
    allowed = {**source, "allow_low_coverage": True}
    result = hf_embfuse.build.fuse_recipe(load_recipe(write_recipe(tmp_path, sources, sources=[allowed])))
    assert result.reports[0].alignment.counts["exact"] == 2


def test_existing_output_is_refused_unless_overwrite(sources, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    recipe = str(write_recipe(tmp_path, sources))
    assert main(["build", recipe, "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["build", recipe, "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_missing_recipe_and_invalid_yaml(tmp_path, capsys):
    assert main(["build", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    assert main(["build", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def _not_a_fused_checkpoint(folder: Path, damage: str) -> None:
    if damage == "missing":
        return
    folder.mkdir()
    files = {
        "bert": {"config.json": '{"model_type": "bert"}', "model.safetensors": ""},
        "adapter": {"adapter_config.json": "{}", "adapter_model.safetensors": ""},
        "bad-json": {"config.json": "{not json", "model.safetensors": ""},
        "no-weights": {"config.json": '{"model_type": "embfuse"}'},
    }[damage]
    for name, text in files.items():
        (folder / name).write_text(text)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "does not exist; expected a folder written by hf-embfuse"),
        ("bert", "holds a 'bert' checkpoint, not an embfuse one"),
        ("adapter", "is a PEFT adapter, not a full checkpoint"),
        ("bad-json", "is not valid JSON"),
        ("no-weights", "has a config.json but no weights"),
    ],
)
def test_inspect_and_bake_refuse_a_folder_that_is_no_fused_checkpoint_alike(
    tmp_path, capsys, damage, message
):
    folder = tmp_path / "ckpt"
    _not_a_fused_checkpoint(folder, damage)
    for command in (["inspect", str(folder)], ["bake", str(folder), "--out", str(tmp_path / "out")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert message in err and str(folder) in err, command
    assert not (tmp_path / "out").exists()


EXAMPLE_RECIPES = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLE_RECIPES, ids=lambda p: p.name)
def test_the_example_recipes_are_valid_recipes(path):
    """Every recipe in examples/ parses with the schema `hf-embfuse build` uses (a renamed field fails here)."""
    recipe = load_recipe(path)
    assert recipe.sources and recipe.base
    if path.name.startswith("transplant_"):
        assert recipe.target_source == 1 and recipe.task == "causal-lm"
