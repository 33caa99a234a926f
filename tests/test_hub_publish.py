"""Publishing fused models: `hf_embfuse.push_to_hub` and `hf-embfuse push`, against the local test Hub server.

Every test runs the real huggingface_hub client (and, for loading, transformers in a fresh process without
hf_embfuse) against `tests/hub_server.py` on 127.0.0.1, and checks that no request left it.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import load_file

import hf_embfuse
from hf_embfuse import EmbFuseForSequenceClassification, push_to_hub
from hf_embfuse.cli import main
from hf_embfuse.hub import DEFAULT_COMMIT_MESSAGE, PublishError
from hf_embfuse.training.callback import PLOT_FILE
from tests.fixtures_hub import hub_client_patch
from tests.fixtures_models import VOCAB, random_sources, tiny_base, tiny_fused
from tests.fixtures_tokenizers import make_wordpiece_tokenizer
from tests.fresh_process import load_in_fresh_process

REPO = "test-user/fused-bert"
BASE_ID = "org/tiny-bert"
HF_SOURCES = ("org/source-a", "other-org/source-b")
pytestmark = pytest.mark.timeout(180)


def fused_model(seed: int = 0) -> EmbFuseForSequenceClassification:
    """A tiny fused BERT classifier whose base and two of three sources are Hub models (for the card)."""
    base = tiny_base("bert", "sequence-classification", seed=seed)
    specs = random_sources(VOCAB, widths=(16, 32, 8), seed=seed + 1)
    infos = [
        {"name": HF_SOURCES[0], "kind": "hf", "revision": "a" * 40},
        {"name": HF_SOURCES[1], "kind": "hf"},
        {"name": "vectors/glove.6B.50d.npy", "kind": "vectors"},  # a file: not a Hub parent
    ]
    specs = [dataclasses.replace(spec, info=info) for spec, info in zip(specs, infos, strict=True)]
    return hf_embfuse.from_base(base, specs, base_model_name_or_path=BASE_ID).eval()


def saved_folder(model, folder: Path, *, extras: bool = False) -> Path:
    model.save_pretrained(folder)
    make_wordpiece_tokenizer().save_pretrained(folder)
    if extras:
        (folder / "embfuse_report.json").write_text(json.dumps({"sources": []}) + "\n")
        (folder / PLOT_FILE).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
        (folder / "README.md").write_text("stale card\n")
        (folder / "training_args.bin").write_bytes(b"\0trainer state")
    return folder


def routes(server) -> list[str]:
    return [request.route for request in server.requests]


def assert_stayed_local(server, refused: list[str]) -> None:
    assert not server.external_requests and not server.unhandled_requests and not refused
    assert {request.host for request in server.requests} <= {f"127.0.0.1:{server.port}"}


def test_push_then_load_in_a_fresh_process(hub_client, hub_env, no_external_network, tmp_path):
    hub_client.lfs_threshold = 16 * 1024
    model = fused_model()
    commit = push_to_hub(model, REPO, tokenizer=make_wordpiece_tokenizer())
    plain = tiny_fused("bert")
    plain.push_to_hub(
        "test-user/plain-push"
    )  # transformers' own method: no card of ours, code files still ship

    assert commit is not None and hub_client.commits(REPO) == [commit.oid, hub_client.commits(REPO)[-1]]
    assert routes(hub_client).count("commit") == 2  # one for ours, one for the plain push
    files = hub_client.files(REPO)
    assert {
        "config.json", "model.safetensors", "configuration_embfuse.py", "modeling_embfuse.py", "README.md",
        "tokenizer.json", "tokenizer_config.json",
    } <= set(files)  # fmt: skip
    assert "AutoModelForSequenceClassification" in json.loads(files["config.json"])["auto_map"]
    tree = hub_client.store.tree("model", REPO, commit.oid)
    assert tree["model.safetensors"]["lfs"] and tree["model.safetensors"]["size"] > hub_client.lfs_threshold
    assert tree["config.json"]["lfs"] is None
    assert "lfs_batch" in routes(hub_client) and "lfs_upload" in routes(hub_client)
    assert routes(hub_client).index("validate_yaml") < routes(hub_client).index(
        "commit"
    )  # card checked first
    plain_files = hub_client.files("test-user/plain-push")
    assert {"configuration_embfuse.py", "modeling_embfuse.py"} <= set(plain_files)
    assert "auto_map" in json.loads(plain_files["config.json"])

    input_ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [
            model.base_model.bert(input_ids=input_ids).last_hidden_state,
            model(input_ids=input_ids).logits,
            plain(input_ids=input_ids).last_hidden_state,
        ]
    requests = [
        (REPO, "AutoModel", input_ids),
        (REPO, "AutoModelForSequenceClassification", input_ids),
        ("test-user/plain-push", "AutoModel", input_ids),
    ]
    hub_client.clear_requests()
    outputs = load_in_fresh_process(requests, tmp_path / "child", env=hub_env)
    for got, want in zip(outputs, expected, strict=True):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6, rtol=0)
    fetched = {
        r.path.rsplit("/", 1)[-1] for r in hub_client.requests if r.method == "GET" and r.route == "resolve"
    }
    assert {"modeling_embfuse.py", "configuration_embfuse.py", "model.safetensors"} <= fetched
    assert_stayed_local(hub_client, no_external_network)


def test_card_report_and_plot_are_published_with_the_folder(hub_client, no_external_network, tmp_path):
    folder = saved_folder(fused_model(), tmp_path / "ckpt", extras=True)
    results = {"wordsim353": {"spearman": 0.61}, "simlex999": {"spearman": 0.33}}
    commit = push_to_hub(folder, REPO, eval_results=results)

    files = hub_client.files(REPO)
    assert "training_args.bin" not in files  # trainer state is not part of the model
    assert files["embfuse_report.json"] == (folder / "embfuse_report.json").read_bytes()
    assert files[PLOT_FILE] == (folder / PLOT_FILE).read_bytes()
    card = files["README.md"].decode()
    assert (
        card != "stale card\n" and f"]({PLOT_FILE})" in card and "## Evaluation" in card and "0.610" in card
    )
    assert "mean mixing weight" in card  # computed from the saved tensors
    data = HfApi().model_info(REPO).card_data
    assert "embfuse" in data.tags and data.pipeline_tag == "text-classification"
    assert sorted(data.base_model) == sorted([BASE_ID, *HF_SOURCES]) and data.base_model_relation == "merge"
    assert HfApi().list_repo_commits(REPO)[0].title == commit.commit_message == DEFAULT_COMMIT_MESSAGE
    assert_stayed_local(hub_client, no_external_network)


def test_unchanged_push_makes_no_commit_and_a_changed_model_does(hub_client, no_external_network):
    model = fused_model()
    first = push_to_hub(model, REPO)
    before = hub_client.commits(REPO)
    hub_client.clear_requests()

    assert push_to_hub(model, REPO) is None
    assert hub_client.commits(REPO) == before == [first.oid, before[-1]]
    assert "commit" not in routes(hub_client) and "lfs_upload" not in routes(hub_client)

    with torch.no_grad():
        model.get_input_embeddings().mixer.logits += torch.tensor([0.0, 1.5, -1.0, 0.5])
    changed = push_to_hub(model, REPO, commit_message="Retrain the mixer")
    assert changed is not None and hub_client.commits(REPO) == [changed.oid, *before]
    weights = load_file(hf_hub_download(REPO, "model.safetensors", revision=changed.oid))
    state = model.state_dict()
    key = next(name for name in weights if name.endswith("mixer.logits"))
    assert torch.equal(weights[key], state[key]) and not torch.equal(
        weights[key], torch.zeros_like(weights[key])
    )
    assert all(torch.equal(tensor, state[name]) for name, tensor in weights.items())
    assert HfApi().list_repo_commits(REPO)[0].title == "Retrain the mixer"
    assert_stayed_local(hub_client, no_external_network)


def test_stale_weight_shards_are_deleted_in_the_same_commit(hub_client):
    api = HfApi()
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="model.safetensors.index.json", repo_id=REPO)
    commit = push_to_hub(fused_model(), REPO)
    assert "model.safetensors.index.json" not in hub_client.files(REPO)
    assert len(hub_client.commits(REPO)) == 3 and hub_client.commits(REPO)[0] == commit.oid


def test_private_repo(hub_client, tmp_path):
    push_to_hub(fused_model(), REPO, private=True)
    assert HfApi().model_info(REPO).private is True
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "config.json", token=False, cache_dir=tmp_path / "anonymous")
    assert json.loads(Path(hf_hub_download(REPO, "config.json")).read_text())["model_type"] == "embfuse"


def test_branch_and_commit_message(hub_client, no_external_network, tmp_path):
    folder = saved_folder(fused_model(), tmp_path / "ckpt")
    commit = push_to_hub(folder, REPO, revision="dev", commit_message="Fused BERT, first try")
    assert sorted(hub_client.files(REPO, revision="main")) == [".gitattributes"]
    assert "model.safetensors" in hub_client.files(REPO, revision="dev")
    history = HfApi().list_repo_commits(REPO, revision="dev")
    assert history[0].commit_id == commit.oid and history[0].title == "Fused BERT, first try"
    assert push_to_hub(folder, REPO, revision="dev") is None  # the branch exists now: reused, unchanged
    assert_stayed_local(hub_client, no_external_network)


def test_cli_prints_the_commit_url_then_no_changes(hub_client, tmp_path, capsys):
    folder = saved_folder(fused_model(), tmp_path / "ckpt")
    results = tmp_path / "eval.json"
    results.write_text(json.dumps({"metric": "spearman", "tables": {"fused": {"datasets": {}, "mean": 0.5}}}))
    assert main(["push", str(folder), REPO, "--message", "from the CLI", "--eval-results", str(results)]) == 0
    head = hub_client.commits(REPO)[0]
    assert capsys.readouterr().out.strip().endswith(f"/{REPO}/commit/{head}")
    assert "## Evaluation" in hub_client.files(REPO)["README.md"].decode()
    assert main(["push", str(folder), REPO, "--eval-results", str(results)]) == 0
    assert capsys.readouterr().out.strip() == "no changes" and hub_client.commits(REPO)[0] == head


# -- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected"),
    [(None, "no Hugging Face token was found"), ("hf_wrong", "did not accept the token")],
)
def test_push_without_a_valid_token_is_refused_with_a_login_hint(
    hub_client, monkeypatch, tmp_path, capsys, token, expected
):
    monkeypatch.delenv("HF_TOKEN")
    folder = saved_folder(fused_model(), tmp_path / "ckpt")
    argv = ["push", str(folder), REPO, *(["--token", token] if token else [])]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "HTTP 401" in captured.err and expected in captured.err
    assert "huggingface-cli login" in captured.err and "HF_TOKEN" in captured.err
    assert not hub_client.store.exists("model", REPO)
    with pytest.raises(PublishError, match="token"):
        push_to_hub(folder, REPO, token=token)


@pytest.mark.parametrize(
    "repo", ["bad name/x", "test-user/a--b", "a/b/c", "test-user/-start", "test-user/" + "x" * 97]
)
def test_invalid_repo_name_fails_before_any_request(hub_client, tmp_path, capsys, repo):
    folder = saved_folder(fused_model(), tmp_path / "ckpt")
    assert main(["push", str(folder), repo]) == 2
    assert "Invalid repository name" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Invalid repository name"):
        push_to_hub(folder, repo)
    assert hub_client.requests == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no-config", "has no config.json"),
        ("bert-config", "not an embfuse one"),
        ("no-code", "modeling_embfuse.py"),
        ("no-weights", "has a config.json but no weights"),
        ("not-a-folder", "does not exist"),
    ],
)
def test_not_a_fused_checkpoint_fails_before_any_request(hub_client, tmp_path, capsys, damage, message):
    folder = saved_folder(tiny_fused("bert"), tmp_path / "ckpt")
    if damage == "no-config":
        (folder / "config.json").unlink()
    elif damage == "bert-config":
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    elif damage == "no-code":
        (folder / "modeling_embfuse.py").unlink()
    elif damage == "no-weights":
        (folder / "model.safetensors").unlink()
    else:
        folder = tmp_path / "missing"
    assert main(["push", str(folder), REPO]) == 2
    assert message in capsys.readouterr().err
    assert hub_client.requests == []


def test_push_of_a_model_that_is_not_fused_is_refused(hub_client):
    with pytest.raises(ValueError, match="model_type 'embfuse'"):
        push_to_hub(tiny_base("bert"), REPO)
    assert hub_client.requests == []


def test_unreachable_hub_is_a_clear_error(no_external_network, tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on once the socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    folder = saved_folder(fused_model(), tmp_path / "ckpt")
    with hub_client_patch(SimpleNamespace(endpoint=endpoint, token="hf_test_token"), tmp_path / "home"):
        assert main(["push", str(folder), REPO]) == 2
        captured = capsys.readouterr()
        with pytest.raises(PublishError, match="connection to the Hub"):
            push_to_hub(folder, REPO)
    assert captured.out == "" and f"connection to the Hub at {endpoint} failed" in captured.err
    assert "Nothing was committed" in captured.err and not no_external_network


def test_bare_name_goes_to_the_token_namespace_and_the_card_says_so(hub_client):
    commit = push_to_hub(fused_model(), "fused-bert")
    assert commit.repo_url.repo_id == REPO and hub_client.commits(REPO)[0] == commit.oid
    assert (
        f'from_pretrained("{REPO}", trust_remote_code=True)' in hub_client.files(REPO)["README.md"].decode()
    )


def test_card_the_hub_would_reject_stops_the_push_before_any_upload(hub_client, monkeypatch):
    monkeypatch.setattr("hf_embfuse.hub._card", lambda *args: "---\nbase_model_relation: fused\n---\ntext\n")
    with pytest.raises(PublishError, match="rejects the generated model card"):
        push_to_hub(fused_model(), REPO)
    assert hub_client.commits(REPO) == hub_client.commits(REPO)[-1:]  # only the repository's initial commit
    assert not {"preupload", "lfs_upload", "commit"} & set(routes(hub_client))


# -- through the client's own upload_folder ------------------------------------------------------------------


def test_push_is_one_upload_folder_commit_on_top_of_the_head_it_read(hub_client, monkeypatch):
    api = HfApi()
    api.create_repo(REPO)
    head = hub_client.commits(REPO)[0]
    calls = {"upload_folder": [], "create_commit": 0}
    real_upload_folder, real_create_commit = HfApi.upload_folder, HfApi.create_commit

    def upload_folder(self, **kwargs):
        calls["upload_folder"].append(kwargs)
        return real_upload_folder(self, **kwargs)

    def create_commit(self, *args, **kwargs):
        calls["create_commit"] += 1
        return real_create_commit(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    commit = push_to_hub(fused_model(), REPO)

    (kwargs,) = calls["upload_folder"]
    assert calls["create_commit"] == 1 and routes(hub_client).count("commit") == 1
    assert kwargs["parent_commit"] == head and hub_client.commits(REPO) == [commit.oid, head]
    assert {"config.json", "model.safetensors", "modeling_embfuse.py", "README.md"} <= set(
        kwargs["allow_patterns"]
    )
    assert "*.safetensors" in kwargs["delete_patterns"] and "training_args.bin" in kwargs["ignore_patterns"]


def test_a_push_racing_another_commit_is_refused_and_commits_nothing(
    hub_client, monkeypatch, capsys, tmp_path
):
    folder = saved_folder(fused_model(), tmp_path / "ckpt")
    api = HfApi()
    api.create_repo(REPO)
    real_upload_folder = HfApi.upload_folder

    def someone_else_commits_first(self, **kwargs):
        real_upload_folder(self, repo_id=REPO, folder_path=tmp_path / "other", commit_message="theirs")
        return real_upload_folder(self, **kwargs)

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("pushed meanwhile\n")
    monkeypatch.setattr(HfApi, "upload_folder", someone_else_commits_first)
    assert main(["push", str(folder), REPO]) == 2
    err = capsys.readouterr().err
    assert "HTTP 412" in err and "Nothing was committed" in err
    assert set(hub_client.files(REPO)) == {".gitattributes", "notes.txt"}  # theirs, and nothing of ours
    assert api.list_repo_commits(REPO)[0].title == "theirs"


def test_the_folder_is_published_as_a_checkpoint_and_never_written(hub_client, no_external_network, tmp_path):
    folder = saved_folder(fused_model(), tmp_path / "ckpt", extras=True)
    (folder / "modules.json").write_text(
        json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ])
    )  # fmt: skip
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
    (folder / "checkpoint-500").mkdir()  # a Trainer's output folder holds more than the model
    (folder / "checkpoint-500" / "optimizer.pt").write_bytes(b"\0state")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("x")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    push_to_hub(folder, REPO)
    files = hub_client.files(REPO)
    assert {"modules.json", "1_Pooling/config.json", "embfuse_report.json", PLOT_FILE} <= set(files)
    assert not {"checkpoint-500/optimizer.pt", ".cache/x", "training_args.bin"} & set(files)
    assert files["1_Pooling/config.json"] == (folder / "1_Pooling" / "config.json").read_bytes()
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # README.md too
    assert HfApi().model_info(REPO).card_data.library_name == "sentence-transformers"
    assert str(tmp_path) not in files["README.md"].decode()
    assert_stayed_local(hub_client, no_external_network)


def test_eval_results_in_the_folder_reach_the_hub_as_model_index(hub_client, tmp_path):
    from tests.test_model_card import EVAL_OUT

    folder = saved_folder(fused_model(), tmp_path / "ckpt")
    (folder / "embfuse_eval.json").write_text(json.dumps(EVAL_OUT))
    push_to_hub(folder, REPO)
    results = HfApi().model_info(REPO).card_data.eval_results
    assert {(r.dataset_name, r.metric_value) for r in results} == {("WS353", 0.7412), ("SimLex999", 0.4788)}
    assert (
        "embfuse_eval.json" in hub_client.files(REPO)
        and "## Evaluation" in hub_client.files(REPO)["README.md"].decode()
    )


def test_a_damaged_eval_file_in_the_folder_fails_before_any_request(hub_client, tmp_path, capsys):
    folder = saved_folder(fused_model(), tmp_path / "ckpt")
    (folder / "embfuse_eval.json").write_text("{not json")
    assert main(["push", str(folder), REPO]) == 2
    assert "embfuse_eval.json' is not valid JSON" in capsys.readouterr().err
    assert hub_client.requests == []
