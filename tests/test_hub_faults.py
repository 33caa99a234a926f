"""Hub faults during `hf-embfuse push`: the command fails clearly, the repository is unchanged, a rerun succeeds.

The test Hub server injects the faults (`tests/hub_server.py`): an HTTP 500 answer to the commit, and
connections dropped in the middle of an LFS upload. huggingface_hub does not retry a commit, but retries an
LFS upload `max_retries` times (5 in 2.x) with a growing pause: the tests drop exactly as many uploads as they
mean to, and skip the pauses.
"""

from __future__ import annotations

import inspect
import time

import pytest
import torch
from huggingface_hub.utils import _http

from hf_embfuse.cli import main
from tests.test_hub_publish import REPO, assert_stayed_local, fused_model, saved_folder

pytestmark = pytest.mark.timeout(120)
# Attempts the client makes at one LFS upload before giving up: the first try and its retries.
LFS_ATTEMPTS = inspect.signature(_http.http_backoff).parameters["max_retries"].default + 1


class _NoPause:
    """Stands in for the `time` module inside huggingface_hub's HTTP helpers: retries happen at once."""

    @staticmethod
    def sleep(seconds: float) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(time, name)


@pytest.fixture
def published(hub_client, tmp_path, capsys):
    """A repository holding one pushed model, and the folder of a changed model not yet pushed."""
    model = fused_model()
    folder = saved_folder(model, tmp_path / "ckpt")
    assert main(["push", str(folder), REPO]) == 0
    with torch.no_grad():
        model.get_input_embeddings().mixer.logits += torch.tensor([0.0, 1.5, -1.0, 0.5])
    model.save_pretrained(folder)  # same folder, new weights: the next push must upload them through LFS
    capsys.readouterr()
    hub_client.clear_requests()
    return folder, hub_client.commits(REPO), hub_client.files(REPO)


def _requests(server, route: str) -> list:
    return [request for request in server.requests if request.route == route]


def _assert_rerun_succeeds(server, folder, before: list[str], capsys) -> None:
    server.faults.clear()
    server.clear_requests()
    assert main(["push", str(folder), REPO]) == 0
    head = server.commits(REPO)[0]
    assert capsys.readouterr().out.strip().endswith(f"/{REPO}/commit/{head}")
    assert server.commits(REPO) == [head, *before]
    assert server.files(REPO)["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def test_failed_commit_leaves_the_repo_unchanged_and_a_rerun_succeeds(
    hub_client, published, no_external_network, capsys
):
    folder, before, files = published
    hub_client.faults.fail_next_commit = True
    assert main(["push", str(folder), REPO]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no commit URL: nothing is reported as published
    assert "HTTP 500" in captured.err and "Nothing was committed" in captured.err and REPO in captured.err
    assert [request.status for request in _requests(hub_client, "commit")] == [500]  # not retried
    assert _requests(hub_client, "lfs_upload")  # the weights were uploaded, but never committed
    assert hub_client.commits(REPO) == before and hub_client.files(REPO) == files

    _assert_rerun_succeeds(hub_client, folder, before, capsys)
    assert not _requests(hub_client, "lfs_upload")  # the server kept the object: the rerun does not resend it
    assert_stayed_local(hub_client, no_external_network)


@pytest.mark.parametrize("drops", [1, LFS_ATTEMPTS], ids=["once", "every-attempt"])
def test_dropped_lfs_upload(hub_client, published, no_external_network, monkeypatch, capsys, drops):
    folder, before, files = published
    monkeypatch.setattr(_http, "time", _NoPause())
    hub_client.faults.drop_next("lfs_upload", times=drops)
    code = main(["push", str(folder), REPO])
    captured = capsys.readouterr()
    uploads = [request.status for request in _requests(hub_client, "lfs_upload")]
    if drops < LFS_ATTEMPTS:  # the client retries the upload by itself and the push goes through
        assert code == 0 and uploads == [None] * drops + [200]
        assert captured.out.strip().endswith(f"/commit/{hub_client.commits(REPO)[0]}")
        assert hub_client.commits(REPO)[1:] == before
    else:
        assert code == 2 and captured.out == "" and uploads == [None] * LFS_ATTEMPTS
        assert "connection to the Hub" in captured.err and "Nothing was committed" in captured.err
        assert not _requests(hub_client, "commit")
        assert hub_client.commits(REPO) == before and hub_client.files(REPO) == files
        _assert_rerun_succeeds(hub_client, folder, before, capsys)
        assert [request.status for request in _requests(hub_client, "lfs_upload")] == [200]
    assert_stayed_local(hub_client, no_external_network)
