"""Model cards of fused checkpoints: Hub metadata that validates, and the sources / mixing / evaluation tables."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard, metadata_load

from hf_embfuse.model_card import build_model_card, eval_markdown
from hf_embfuse.modeling_embfuse import TASKS
from tests.hub_routes import validate_card_metadata

BASE = "sentence-transformers/all-MiniLM-L6-v2"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOL_GGUF = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"


def example_config_dict() -> dict:
    """An EmbFuse `config.to_dict()`: a MiniLM base mixed with SmolLM2, a GGUF file from the Hub and GloVe."""

    def alignment(exact: int, coverage: float) -> dict:
        counts = {"special": 5, "exact": exact, "canonical": 300, "casefold": 40, "decomposed": 1000,
                  "placeholder": 994, "uncovered": 2000, "beyond_vocab": 0}  # fmt: skip
        return {"counts": counts, "coverage": coverage, "content_coverage": coverage + 0.01}

    return {
        "model_type": "embfuse",
        "architectures": ["EmbFuseForSequenceClassification"],
        "base_config": {
            "model_type": "bert",
            "_name_or_path": BASE,
            "architectures": ["BertModel"],
            "hidden_size": 384,
        },
        "base_model_name_or_path": BASE,
        "sources": [
            {
                "name": "base",
                "kind": "base",
                "revision": None,
                "width": 384,
                "projection": "identity",
                "license": "apache-2.0",
            },
            {
                "name": SMOL,
                "kind": "hf",
                "revision": "a" * 40,
                "width": 576,
                "projection": "identity",
                "initialization": "transport",
                "alignment": alignment(20000, 0.912),
                "license": "apache-2.0",
            },
            {
                "name": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                "kind": "gguf",
                "repo_id": SMOL_GGUF,
                "revision": None,
                "width": 576,
                "projection": "linear",
                "alignment": alignment(19000, 0.9),
            },
            {
                "name": "/data/glove_6B_50d_emb.npy",
                "kind": "vectors",
                "revision": None,
                "width": 50,
                "projection": "linear",
                "alignment": alignment(15000, 0.734),
            },
        ],
        "mixing": "learned",
        "fixed_weights": None,
        "mixing_weights": [0.55, 0.25, 0.12, 0.08],
        "mixing_temperature": 1.0,
        "regularizer": "anchor",
        "reg_lambda": 0.01,
        "format_version": 2,
    }


def _metadata(card: ModelCard) -> dict:
    return yaml.safe_load(str(card).split("---")[1])


def test_metadata_names_every_hub_source_and_nothing_else():
    metadata = _metadata(build_model_card(example_config_dict(), repo_id="test-user/fused-minilm"))
    assert metadata["base_model"] == [BASE, SMOL, SMOL_GGUF]  # not the local GloVe file
    assert metadata["base_model_relation"] == "merge"
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "text-classification"
    assert {"embfuse", "bert"} <= set(metadata["tags"])
    assert (
        "license" not in metadata
    )  # GloVe and the GGUF file state none, so the mixture's license is unknown


def test_metadata_round_trips_and_passes_validation(tmp_path):
    card = build_model_card(example_config_dict(), repo_id="test-user/fused-minilm")
    path = tmp_path / "README.md"
    card.save(path)
    assert metadata_load(path) == card.data.to_dict() == ModelCard.load(path).data.to_dict()
    assert validate_card_metadata(path.read_text()) == ([], [])


def test_card_validates_against_the_local_hub_and_is_read_back(hub_client):
    card = build_model_card(example_config_dict(), repo_id="test-user/fused-minilm")
    card.validate()  # POST /api/validate-yaml on the local server
    broken = ModelCard(str(card).replace("base_model_relation: merge", "base_model_relation: fused"))
    with pytest.raises(ValueError, match="base_model_relation"):
        broken.validate()

    HfApi().create_repo("test-user/fused-minilm")
    card.push_to_hub("test-user/fused-minilm")
    info = HfApi().model_info("test-user/fused-minilm")
    assert info.card_data.base_model == [BASE, SMOL, SMOL_GGUF] and info.pipeline_tag == "text-classification"
    assert hub_client.files("test-user/fused-minilm")["README.md"].decode() == str(card)


def test_every_task_of_the_one_table_gets_its_tag_and_auto_class():
    for task in TASKS:
        card = build_model_card({**example_config_dict(), "architectures": [task.wrapper]}, repo_id="u/m")
        assert _metadata(card)["pipeline_tag"] == task.pipeline_tag
        assert 'AutoModel.from_pretrained("u/m", trust_remote_code=True)' in card.text
        assert f'{task.auto_class.__name__}.from_pretrained("u/m", trust_remote_code=True)' in card.text
    unknown = build_model_card({**example_config_dict(), "architectures": ["SomethingElse"]}, repo_id="u/m")
    assert "pipeline_tag" not in _metadata(unknown) and "AutoModel.from_pretrained" in unknown.text


def test_sources_table():
    text = build_model_card(example_config_dict()).text
    table = text.split("## Sources")[1].split("## Mixing")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == 4
    assert f"[{BASE}](https://huggingface.co/{BASE})" in rows[0] and "100.0 %" in rows[0]
    assert f"[{SMOL}](https://huggingface.co/{SMOL})" in rows[1] and "`aaaaaaaaaaaa`" in rows[1]
    assert "| 576 | transport | 91.2 % | 92.2 % |" in rows[1] and "exact 20,000" in rows[1]
    assert "placeholder 994" in rows[1] and "beyond_vocab" not in rows[1]  # zero counts are left out
    assert f"[SmolLM2-135M-Instruct.Q4_1.gguf](https://huggingface.co/{SMOL_GGUF})" in rows[2]
    assert "`glove_6B_50d_emb.npy`" in rows[3] and "| 50 | linear | 73.4 %" in rows[3]
    assert "/models/" not in text and "/data/" not in text  # file sources by their file name, not their path


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, f"| 0 | {BASE} | 0.550 |"),
        (
            {"mixing_weights": None, "mixing": "fixed", "fixed_weights": [0.4, 0.3, 0.2, 0.1]},
            "| fixed weight |",
        ),
        ({"mixing_weights": None, "fixed_weights": [0.4, 0.3, 0.2, 0.1]}, "initial weight (before training)"),
        ({"mixing_weights": None}, "Mixing weights were not recorded"),
    ],
)
def test_mixing_section(changes, expected):
    text = build_model_card({**example_config_dict(), **changes}).text
    mixing = text.split("## Mixing")[1].split("## How to load")[0]
    assert expected in mixing and "regulariser `anchor` with λ = 0.01" in mixing


def test_mixing_temperature_is_shown_when_not_one():
    config = {**example_config_dict(), "mixing_temperature": 0.5}
    mixing = build_model_card(config).text.split("## Mixing")[1].split("## How to load")[0]
    assert "temperature 0.5" in mixing
    assert "temperature" not in build_model_card(example_config_dict()).text.split("## Mixing")[1]


def test_weights_plot_and_bake_instructions():
    text = build_model_card(example_config_dict(), repo_id="u/fused", weights_plot="mixing_weights.png").text
    assert "![Mixing weights during training](mixing_weights.png)" in text
    assert "hf-embfuse bake fused --out fused-baked" in text and "hf_embfuse.bake(model)" in text
    assert "![" not in build_model_card(example_config_dict()).text


def test_evaluation_section_only_when_given():
    comparison = {
        "metric": "spearman",
        "tables": {
            "MiniLM": {
                "mean": 0.655,
                "datasets": {"ws353": {"spearman": 0.746}, "simlex": {"spearman": 0.463}},
            },
            "fused": {"mean": 0.67, "datasets": {"ws353": {"spearman": 0.75}, "simlex": {"spearman": None}}},
        },
    }
    text = build_model_card(example_config_dict(), eval_results=comparison).text
    assert "## Evaluation" in text and "Metric: spearman." in text
    assert "| table | ws353 | simlex | mean |" in text and "| fused | 0.750 | — | 0.670 |" in text
    assert "## Evaluation" not in build_model_card(example_config_dict()).text


EVAL_OUT = {  # what `hf-embfuse eval --out` writes (evaluation/command.py)
    "checkpoint": "/home/builder/outputs/fused-minilm",
    "word_prefix": "",
    "metric": "spearman",
    "tables": {
        "fused (learned)": {"mean": 0.61, "datasets": {"WS353": {"spearman": 0.7412, "n_pairs": 353},
                                                      "SimLex999": {"spearman": 0.4788, "n_pairs": 999}}},
        "all-MiniLM-L6-v2 (base)": {"mean": 0.6, "datasets": {"WS353": {"spearman": 0.746},
                                                              "SimLex999": {"spearman": 0.463}}},
    },
}  # fmt: skip


def test_eval_results_become_a_table_and_model_index(hub_client):
    card = build_model_card(example_config_dict(), repo_id="test-user/fused-minilm", eval_results=EVAL_OUT)
    assert "| fused (learned) | 0.741 | 0.479 | 0.610 |" in card.text
    assert "| all-MiniLM-L6-v2 (base) | 0.746 | 0.463 | 0.600 |" in card.text
    assert "/home/builder" not in str(card)  # the checkpoint's path in the results is not shown
    (entry,) = _metadata(card)["model-index"]
    assert entry["name"] == "fused-minilm"
    scores = {r["dataset"]["name"]: r["metrics"][0] for r in entry["results"]}
    assert scores == {
        "WS353": {"type": "spearman", "value": 0.7412, "name": "Spearman's ρ"},
        "SimLex999": {"type": "spearman", "value": 0.4788, "name": "Spearman's ρ"},
    }  # the model's own row only, not the base's
    assert {r["task"]["type"] for r in entry["results"]} == {"feature-extraction"}
    assert validate_card_metadata(str(card)) == ([], [])
    card.validate()  # the local Hub's validate-yaml route
    [result] = ModelCard(str(card)).data.eval_results[:1]
    assert result.metric_value == 0.7412 and result.dataset_name == "WS353"


def test_results_and_plot_in_the_folder_are_found(tmp_path):
    assert "## Evaluation" not in build_model_card(example_config_dict(), folder=tmp_path).text
    (tmp_path / "embfuse_eval.json").write_text(json.dumps(EVAL_OUT))
    (tmp_path / "mixing_weights.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    card = build_model_card(example_config_dict(), folder=tmp_path)
    assert "## Evaluation" in card.text and "| fused (learned) | 0.741 |" in card.text
    assert "![Mixing weights during training](mixing_weights.png)" in card.text
    assert len(_metadata(card)["model-index"][0]["results"]) == 2
    given = build_model_card(example_config_dict(), folder=tmp_path, eval_results={"accuracy": 0.9})
    assert "| accuracy | 0.900 |" in given.text and "model-index" not in _metadata(given)  # arguments win
    (tmp_path / "embfuse_eval.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"embfuse_eval\.json' is not valid JSON"):
        build_model_card(example_config_dict(), folder=tmp_path)


def test_a_malformed_model_index_is_refused_by_the_local_hub():
    card = str(build_model_card(example_config_dict(), repo_id="u/m", eval_results=EVAL_OUT))
    broken = card.replace("    - type: spearman\n", "    - kind: spearman\n")
    assert any("metrics" in error for error in validate_card_metadata(broken)[0])


def test_a_folder_with_sentence_transformers_modules_gets_a_sentence_transformers_card(tmp_path):
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    plain = build_model_card(example_config_dict(), folder=tmp_path, repo_id="u/m")
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    card = build_model_card(example_config_dict(), folder=tmp_path, repo_id="u/m")
    metadata = _metadata(card)
    assert metadata["library_name"] == "sentence-transformers"
    assert metadata["pipeline_tag"] == "sentence-similarity"
    assert "sentence-transformers" in metadata["tags"]
    assert 'SentenceTransformer("u/m", trust_remote_code=True)' in card.text and "model.encode(" in card.text
    assert 'AutoModel.from_pretrained("u/m", trust_remote_code=True)' in card.text  # transformers still works
    assert validate_card_metadata(str(card)) == ([], [])
    assert _metadata(plain)["library_name"] == "transformers" and "SentenceTransformer" not in plain.text
    forced = build_model_card(example_config_dict(), folder=tmp_path, sentence_transformers=False)
    assert _metadata(forced)["library_name"] == "transformers"
    assert _metadata(build_model_card(example_config_dict(), sentence_transformers=True))["library_name"] == (
        "sentence-transformers"
    )


@pytest.mark.parametrize(
    ("results", "lines"),
    [
        ({"accuracy": 0.8123, "examples": 800}, ["|  | value |", "| accuracy | 0.812 |", "| examples | 800 |"]),
        ({"base": {"acc": 0.73}, "fused|v2": {"acc": 0.76, "f1": 0.7}}, ["|  | acc | f1 |", "| fused\\|v2 | 0.760 | 0.700 |"]),
    ],
)  # fmt: skip
def test_eval_markdown_shapes(results, lines):
    table = eval_markdown(results).splitlines()
    assert all(line in table for line in lines)


@pytest.mark.parametrize(
    ("licenses", "expected"),
    [(("mit",) * 4, "mit"), (("mit", "mit", "mit", None), None), (("mit", "apache-2.0", "mit", "mit"), None),
     ((None,) * 4, None)],
)  # fmt: skip
def test_license_only_when_every_source_states_the_same(licenses, expected):
    config = example_config_dict()
    for source, license_ in zip(config["sources"], licenses, strict=True):
        source["license"] = license_
    card = build_model_card(config)
    assert _metadata(card).get("license") == expected
    assert ("| license |" in card.text) is any(licenses)


def test_single_hub_parent_is_a_finetune_and_local_bases_are_not_listed(tmp_path):
    config = example_config_dict()
    config["sources"] = config["sources"][:1] + config["sources"][3:]  # base + local GloVe
    assert _metadata(build_model_card(config))["base_model_relation"] == "finetune"
    config["base_model_name_or_path"] = config["base_config"]["_name_or_path"] = str(
        tmp_path
    )  # a local folder
    metadata = _metadata(build_model_card(config))
    assert "base_model" not in metadata and "base_model_relation" not in metadata
    assert _metadata(build_model_card(config, base_model_id=BASE))["base_model"] == [BASE]


def test_a_card_never_contains_a_local_path(tmp_path):
    base = tmp_path / "checkpoints" / "my-minilm"
    base.mkdir(parents=True)
    config = example_config_dict()
    config["base_model_name_or_path"] = config["base_config"]["_name_or_path"] = str(base)
    config["sources"][0]["name"] = str(base)
    config["sources"][1] = {**config["sources"][1], "name": str(tmp_path / "smollm2"), "kind": "hf"}
    config["sources"][2]["name"] = str(tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    config["sources"][3]["name"] = "C:\\Users\\me\\glove_6B_50d_emb.npy"
    card = str(build_model_card(config, eval_results={"accuracy": 0.8}))
    assert str(tmp_path) not in card and "C:" not in card and "Users" not in card
    assert "based on `my-minilm`" in card and "| 0 | `my-minilm` | base |" in card
    assert (
        "`smollm2`" in card
        and "[SmolLM2-135M-Instruct.Q4_1.gguf](" in card
        and "`glove_6B_50d_emb.npy`" in card
    )
    assert _metadata(build_model_card(config))["base_model"] == [SMOL_GGUF]  # the one source with a Hub id


def test_hub_ids_come_from_the_recipe_then_the_base_config(tmp_path):
    config = example_config_dict()
    config["base_model_name_or_path"] = None  # no name from the build: the base config's Hub id
    config["sources"][3]["hub_id"] = "stanfordnlp/glove"
    card = build_model_card(config)
    assert _metadata(card)["base_model"] == [BASE, SMOL, SMOL_GGUF, "stanfordnlp/glove"]
    assert f"based on [{BASE}](https://huggingface.co/{BASE})" in card.text
    assert "[glove_6B_50d_emb.npy](https://huggingface.co/stanfordnlp/glove)" in card.text
    config["base_model_name_or_path"] = "org/given-in-the-recipe"
    assert _metadata(build_model_card(config))["base_model"][0] == "org/given-in-the-recipe"


@pytest.mark.parametrize(
    "drop", ["sources", "base_config", "architectures", "mixing_weights", "format_version", "all"]
)
def test_missing_optional_fields_still_make_a_valid_card(drop):
    config = (
        {} if drop == "all" else {k: v for k, v in copy.deepcopy(example_config_dict()).items() if k != drop}
    )
    if drop == "sources":
        config["base_model_name_or_path"] = None
    card = build_model_card(config)
    assert validate_card_metadata(str(card))[0] == [] and "embfuse" in _metadata(card)["tags"]
    assert "## How to load" in card.text


def test_not_a_dict_is_refused():
    with pytest.raises(TypeError, match=r"config\.to_dict"):
        build_model_card(["not", "a", "config"])  # type: ignore[arg-type]


# -- the demo build ------------------------------------------------------------------------------------------

# An absolute POSIX or Windows path; a URL's path (after "//host") is not one.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/\\-])(/[\w.-]+)(?:/[\w.-]+)+|\b[A-Za-z]:\\[\w.\\-]+")


def machine_paths_in(text: str) -> list[str]:
    """Absolute paths in `text` that start with a folder of this machine (`/work/...`, `/tmp/...`)."""
    return [m.group(0) for m in _ABSOLUTE_PATH.finditer(text) if m.group(1) and Path(m.group(1)).exists()]


def test_machine_paths_are_found_and_urls_are_not(tmp_path):
    text = f'{{"a": "{tmp_path}/x", "url": "https://huggingface.co/org/model/resolve/main/x.json"}}'
    assert machine_paths_in(text) == [f"{tmp_path}/x"]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_demo_build_names_no_path_of_the_build_machine(demo_build):
    from hf_embfuse.recipe import load_recipe

    out, _ = demo_build  # the session's one build of the demo recipe (tests/fixtures_real.py)
    tmp_path = out.parent
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "examples" / "fused_minilm.yaml")
    texts = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        with contextlib.suppress(UnicodeDecodeError):
            texts[path.relative_to(out).as_posix()] = path.read_text(encoding="utf-8")
    assert {"README.md", "config.json", "embfuse_report.json", "tokenizer_config.json"} <= set(texts)
    machine = [
        str(tmp_path),
        sys.prefix,
        str(Path.home()),
        os.getcwd(),
        recipe.base,
        *(s.path for s in recipe.sources),
    ]
    for name, text in texts.items():
        assert machine_paths_in(text) == [], name
        assert not [path for path in machine if path in text], name

    metadata = _metadata(ModelCard.load(out / "README.md"))
    assert metadata["base_model"] == [
        "sentence-transformers/all-MiniLM-L6-v2",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ]
    assert metadata["base_model_relation"] == "merge"
    # MiniLM is a sentence-transformers model, and so is the fused folder (its modules are kept).
    assert "modules.json" in texts and metadata["library_name"] == "sentence-transformers"
    assert metadata["pipeline_tag"] == "sentence-similarity"
    config = json.loads(texts["config.json"])
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert config["sources"][1]["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert validate_card_metadata(texts["README.md"]) == ([], [])


def test_a_local_base_is_named_by_its_folder_not_by_the_stale_id_its_config_carries(tmp_path):
    from hf_embfuse.model_names import base_model_name

    folder = tmp_path / "my-minilm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "_name_or_path": "someone/else"}))
    name = base_model_name(folder)
    assert name == "my-minilm"
    assert base_model_name(folder, "org/my-minilm") == "org/my-minilm"  # the recipe's base_hub_id
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "_name_or_path": "org/my-minilm"}))
    assert base_model_name(folder) == "org/my-minilm"  # it names this very folder
    snapshot = tmp_path / "hub" / "models--org--tiny-bert" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert base_model_name(snapshot) == "org/tiny-bert"  # a folder of the Hub cache

    config = example_config_dict()
    config["sources"] = config["sources"][:1] + config["sources"][3:]  # base + local GloVe: no Hub source
    config["base_model_name_or_path"] = name
    config["base_config"]["_name_or_path"] = "someone/else"  # whatever the nested config carries
    card = build_model_card(config)
    metadata = _metadata(card)
    assert "base_model" not in metadata and "base_model_relation" not in metadata
    assert "based on `my-minilm`" in card.text and "someone/else" not in card.text
