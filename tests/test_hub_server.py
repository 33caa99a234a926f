"""The test Hub server against the real huggingface_hub client and transformers, all on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import HubServer

REPO = "test-user/demo"
pytestmark = pytest.mark.timeout(120)


def _folder(tmp_path: Path, text: str = "hello\n", binary_size: int = 4096) -> Path:
    folder = tmp_path / "upload"
    (folder / "weights").mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text(text)
    (folder / "weights" / "table.bin").write_bytes(bytes(range(256)) * (binary_size // 256))
    return folder


def _routes(server: HubServer) -> list[str]:
    return [request.route for request in server.requests]


@dataclass
class _Answer:
    status_code: int
    content: bytes

    def json(self):
        return json.loads(self.content)


def _request(
    url: str, *, method: str = "GET", data: bytes | None = None, headers=None, proxy=None
) -> _Answer:
    """A raw request with the standard library, for what the client would refuse to send."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy} if proxy else {}))
    try:
        with opener.open(
            urllib.request.Request(url, data, headers or {}, method=method), timeout=10
        ) as answer:
            return _Answer(answer.status, answer.read())
    except urllib.error.HTTPError as error:
        return _Answer(error.code, error.read())


def _post(
    server: HubServer, path: str, *, token: str | None = None, payload=None, content: bytes = b""
) -> _Answer:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = content if payload is None else json.dumps(payload).encode()
    return _request(server.endpoint + path, method="POST", data=data, headers=headers)


def test_upload_download_round_trip_takes_lfs_for_large_binary_files(hub_client, tmp_path):
    hub_client.lfs_threshold = 1024
    folder = _folder(tmp_path)
    api = HfApi()
    assert api.create_repo("demo").repo_id == REPO  # no namespace: the token's user
    commit = api.upload_folder(folder_path=folder, repo_id=REPO)

    routes = _routes(hub_client)
    assert routes.count("lfs_upload") == 1 and "lfs_batch" in routes and "lfs_verify" in routes
    assert hub_client.commits(REPO)[0] == commit.oid
    siblings = {s.rfilename: s for s in api.model_info(REPO, files_metadata=True).siblings}
    assert siblings["notes.txt"].lfs is None and siblings["weights/table.bin"].lfs.size == 4096

    text = Path(hf_hub_download(REPO, "notes.txt")).read_bytes()
    binary = Path(hf_hub_download(REPO, "weights/table.bin")).read_bytes()
    assert text == b"hello\n" and binary == (folder / "weights" / "table.bin").read_bytes()
    snapshot = Path(snapshot_download(REPO, cache_dir=tmp_path / "snapshot-cache"))
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == [
        ".gitattributes", "notes.txt", "weights/table.bin",
    ]  # fmt: skip
    assert (snapshot / "weights" / "table.bin").read_bytes() == binary
    assert not hub_client.unhandled_requests and not hub_client.external_requests


@pytest.mark.parametrize(
    ("size", "name", "mode"),
    [(10, "notes.txt", "regular"), (2048, "notes.txt", "lfs"), (10, "model.safetensors", "lfs"), (0, "x.bin", "regular")],
)  # fmt: skip
def test_preupload_upload_mode(hub_client, size, name, mode):
    hub_client.lfs_threshold = 1024
    HfApi().create_repo(REPO)
    sample = base64.b64encode(b"a" * min(size, 512)).decode()
    answer = _post(
        hub_client, f"/api/models/{REPO}/preupload/main", token=hub_client.token,
        payload={"files": [{"path": name, "size": size, "sample": sample}]},
    ).json()  # fmt: skip
    assert answer["files"][0]["uploadMode"] == mode


def test_unchanged_files_make_no_commit_and_changed_files_do(hub_client, tmp_path):
    hub_client.lfs_threshold = 1024
    folder = _folder(tmp_path)
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(folder_path=folder, repo_id=REPO)
    before = hub_client.commits(REPO)
    hub_client.clear_requests()

    again = api.upload_folder(folder_path=folder, repo_id=REPO)
    assert hub_client.commits(REPO) == before and again.oid == before[0]
    assert "commit" not in _routes(hub_client) and "lfs_upload" not in _routes(hub_client)
    assert [c.commit_id for c in api.list_repo_commits(REPO)] == before

    (folder / "notes.txt").write_text("changed\n")
    changed = api.upload_folder(folder_path=folder, repo_id=REPO)
    after = hub_client.commits(REPO)
    assert after == [changed.oid, *before]
    assert hub_client.files(REPO)["notes.txt"] == b"changed\n"
    assert hub_client.files(REPO, revision=before[0])["notes.txt"] == b"hello\n"  # history is kept


@pytest.mark.parametrize("skip_empty_commits", [False, True])
def test_commit_that_changes_nothing(tmp_path, skip_empty_commits):
    # The client never sends such a commit (see above); the real Hub records it if one arrives anyway.
    with HubServer(tmp_path, skip_empty_commits=skip_empty_commits) as server:
        assert (
            _post(server, "/api/repos/create", token=server.token, payload={"name": "demo"}).status_code
            == 200
        )
        head = server.commits(REPO)[0]
        content = base64.b64encode(server.files(REPO)[".gitattributes"]).decode()
        lines = [
            {"key": "header", "value": {"summary": "same again", "description": ""}},
            {"key": "file", "value": {"path": ".gitattributes", "content": content, "encoding": "base64"}},
        ]
        body = "".join(json.dumps(line) + "\n" for line in lines)
        answer = _post(
            server, f"/api/models/{REPO}/commit/main", token=server.token, content=body.encode()
        ).json()
        assert (answer["commitOid"] == head) is skip_empty_commits
        assert len(server.commits(REPO)) == (1 if skip_empty_commits else 2)


def test_create_repo_conflict_still_carries_url(hub_client):
    api = HfApi()
    first = api.create_repo(REPO)
    assert api.create_repo(REPO, exist_ok=True) == first
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo(REPO)
    assert error.value.response.status_code == 409 and error.value.response.json()["url"] == str(first)


@pytest.mark.parametrize("name", ["bad name", "a--b", "-start", "end.", "x.git", "a" * 97])
def test_invalid_repo_names_are_refused(hub_client, name):
    with pytest.raises(HFValidationError):  # the client checks first ...
        HfApi().create_repo(f"test-user/{name}")
    answer = _post(hub_client, "/api/repos/create", token=hub_client.token, payload={"name": name})
    assert answer.status_code == 400 and name[:20] in answer.json()["error"]  # ... and so does the server


def test_private_repo_needs_the_token(hub_client, tmp_path):
    api = HfApi()
    api.create_repo(REPO, private=True)
    api.upload_file(path_or_fileobj=b"secret\n", path_in_repo="notes.txt", repo_id=REPO)
    assert api.model_info(REPO).private is True
    with pytest.raises(RepositoryNotFoundError, match="authenticated"):
        hf_hub_download(REPO, "notes.txt", token=False, cache_dir=tmp_path / "anonymous")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(REPO, token=False)
    with pytest.raises(HfHubHTTPError, match="Invalid credentials"):
        api.model_info(REPO, token="hf_wrong")
    assert Path(hf_hub_download(REPO, "notes.txt")).read_bytes() == b"secret\n"


def test_writes_need_the_token(hub_client):
    HfApi().create_repo(REPO)
    with pytest.raises(HfHubHTTPError, match="must be authenticated") as error:
        HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, token=False)
    assert error.value.response.status_code == 401
    assert len(hub_client.commits(REPO)) == 1


def test_missing_entries_and_revisions_have_hub_error_codes(hub_client):
    HfApi().create_repo(REPO)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, ".gitattributes", revision="nope")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("test-user/missing")


def test_branches_tree_and_refs(hub_client, tmp_path):
    api = HfApi()
    api.create_repo(REPO)
    api.create_branch(REPO, branch="dev")
    api.upload_folder(folder_path=_folder(tmp_path), repo_id=REPO, revision="dev")
    assert sorted(hub_client.files(REPO)) == [".gitattributes"]
    tree = {entry.path for entry in api.list_repo_tree(REPO, revision="dev", recursive=True)}
    assert tree == {".gitattributes", "notes.txt", "weights", "weights/table.bin"}
    top = {entry.path for entry in api.list_repo_tree(REPO, revision="dev")}
    assert top == {".gitattributes", "notes.txt", "weights"}
    assert {ref.name for ref in api.list_repo_refs(REPO).branches} == {"main", "dev"}
    assert Path(hf_hub_download(REPO, "notes.txt", revision="dev")).read_text() == "hello\n"


def test_quoted_paths_ranges_and_malformed_requests(hub_client):
    api = HfApi()
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="a dir/b c.txt", repo_id=REPO)
    assert Path(hf_hub_download(REPO, "b c.txt", subfolder="a dir")).read_bytes() == b"0123456789"
    assert [entry.path for entry in api.list_repo_tree(REPO, path_in_repo="a dir")] == ["a dir/b c.txt"]
    url = f"{hub_client.endpoint}/{REPO}/resolve/main/a%20dir/b%20c.txt"
    partial = _request(url, headers={"Range": "bytes=4-"})
    assert partial.status_code == 206 and partial.content == b"456789"
    bad = _post(
        hub_client, f"/api/models/{REPO}/preupload/main", token=hub_client.token, content=b"{not json"
    )
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    assert (
        _post(
            hub_client, f"/api/models/{REPO}/preupload/main", token=hub_client.token, payload={}
        ).status_code
        == 200
    )


def test_failed_commit_changes_nothing_and_a_retry_succeeds(hub_client, tmp_path):
    api = HfApi()
    api.create_repo(REPO)
    before_commits, before_files = hub_client.commits(REPO), hub_client.files(REPO)
    hub_client.faults.fail_next_commit = True
    with pytest.raises(HfHubHTTPError) as error:
        api.upload_file(path_or_fileobj=b"one\n", path_in_repo="one.txt", repo_id=REPO)
    assert error.value.response.status_code == 500
    assert hub_client.commits(REPO) == before_commits and hub_client.files(REPO) == before_files
    assert not hub_client.faults.fail_next_commit

    api.upload_file(path_or_fileobj=b"one\n", path_in_repo="one.txt", repo_id=REPO)
    assert hub_client.files(REPO)["one.txt"] == b"one\n" and len(hub_client.commits(REPO)) == 2


def test_dropped_lfs_upload_is_retried_by_the_client(hub_client, tmp_path):
    hub_client.lfs_threshold = 1024
    api = HfApi()
    api.create_repo(REPO)
    hub_client.faults.drop_next_lfs_upload = True
    api.upload_folder(folder_path=_folder(tmp_path), repo_id=REPO)
    uploads = [request for request in hub_client.requests if request.route == "lfs_upload"]
    assert [request.status for request in uploads] == [None, 200]  # the first one lost its connection
    assert len(hub_client.files(REPO)["weights/table.bin"]) == 4096


def test_validate_yaml(hub_client):
    valid = "---\nbase_model:\n- org/a\nbase_model_relation: merge\ntags: [x]\n---\ntext\n"
    assert (
        _post(hub_client, "/api/validate-yaml", payload={"content": valid, "repoType": "model"}).status_code
        == 200
    )
    for invalid in (
        "---\nbase_model_relation: fused\nbase_model: org/a\n---\n",
        "---\nbase_model: [a b]\n---\n",
    ):
        answer = _post(hub_client, "/api/validate-yaml", payload={"content": invalid, "repoType": "model"})
        assert answer.status_code == 400 and answer.json()["errors"]


def test_proxy_refuses_and_records_other_hosts(hub_server):
    assert _request("http://example.com/api/models/x", proxy=hub_server.endpoint).status_code == 403
    assert [request.host for request in hub_server.external_requests] == ["example.com"]


def test_no_external_network_refuses_other_hosts(no_external_network, hub_server):
    with pytest.raises(OSError, match="no_external_network"):
        socket.create_connection(("10.255.255.1", 443), timeout=1)
    assert no_external_network == ["10.255.255.1:443"]
    assert _request(hub_server.endpoint + "/api/agent-harnesses").status_code == 200


def test_hub_client_patch_restores_the_client(hub_server, tmp_path):
    from tests.fixtures_hub import hub_client_patch

    endpoint, offline = constants.ENDPOINT, constants.HF_HUB_OFFLINE
    with hub_client_patch(hub_server, tmp_path):
        assert hub_server.endpoint == constants.ENDPOINT and HfApi().endpoint == hub_server.endpoint
    assert (endpoint, offline) == (constants.ENDPOINT, constants.HF_HUB_OFFLINE)


def test_transformers_push_to_hub_then_from_pretrained(hub_client, hub_env, no_external_network, tmp_path):
    from transformers import AutoModel, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64,
    )  # fmt: skip
    model = BertModel(config).eval()
    model.push_to_hub("tiny-bert")
    repo = "test-user/tiny-bert"
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub_client.files(repo))
    assert hub_client.store.tree("model", repo, hub_client.commits(repo)[0])["model.safetensors"]["lfs"]

    inputs = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        expected = model(input_ids=inputs).last_hidden_state
        loaded = AutoModel.from_pretrained(repo).eval()
        torch.testing.assert_close(loaded(input_ids=inputs).last_hidden_state, expected, rtol=0, atol=0)

    # A second reader with a cache of its own downloads again. (That a fresh process configured by `hub_env`
    # alone reaches this server is checked once, in test_hub_publish.py's fresh-process load.)
    assert hub_env["HF_ENDPOINT"] == hub_client.endpoint and hub_env["HF_HUB_OFFLINE"] == "0"
    with torch.no_grad():
        again = AutoModel.from_pretrained(repo, cache_dir=tmp_path / "second-cache").eval()
        torch.testing.assert_close(again(input_ids=inputs).last_hidden_state, expected, rtol=0, atol=0)

    requests = hub_client.requests
    weights = [r for r in requests if r.method == "GET" and r.path.endswith("/model.safetensors")]
    assert len(weights) == 2  # downloaded once per reader, each with its own cache
    assert {request.host for request in requests} == {f"127.0.0.1:{hub_client.port}"}
    assert not hub_client.external_requests and not hub_client.unhandled_requests and not no_external_network
