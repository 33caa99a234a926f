"""Pytest fixtures for tests that talk to a Hub: a local Hub-compatible server and clients pointed at it.

Register with `pytest_plugins = ["tests.fixtures_hub"]` in tests/conftest.py. Fixtures:

* `hub_server`: a running `HubServer` (tests/hub_server.py) on 127.0.0.1 with `.endpoint`, `.token`,
  `.requests`, `.faults`, `.repo_dir(repo_id)`, `.commits(repo_id)`, `.files(repo_id)`.
* `hub_env`: the environment for a child process that must use `hub_server` (a full `os.environ` copy:
  pass it as `env=` to `subprocess.run`); its Hub cache is a fresh folder.
* `hub_client`: points the already-imported `huggingface_hub` and transformers of this process at
  `hub_server` (endpoint, online mode, token, no Xet, a fresh cache) and restores them afterwards.
* `no_external_network`: refuses, and records, any socket connection or name lookup outside loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hub_server import HubServer

__all__ = ["hub_client", "hub_client_patch", "hub_env", "hub_server", "hub_server_env", "no_external_network"]

# Variables a parent's environment may hold that would send a child elsewhere than `hub_server`.
_SCRUBBED = (
    "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_MODULES_CACHE", "HF_XET_CACHE",
    "HF_ASSETS_CACHE", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_CO_STAGING",
    "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE",
)  # fmt: skip


@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """A fresh Hub-compatible server for one test; writes need `hub_server.token`."""
    with HubServer(tmp_path_factory.mktemp("hub-server")) as server:
        yield server


def hub_server_env(server: HubServer, home: str | os.PathLike) -> dict[str, str]:
    """A child-process environment that uses `server` as the Hub, with its Hugging Face home at `home`.

    The proxy variables route every other host to `server` too, which refuses and records them
    (`server.external_requests`), so a child cannot reach the network unnoticed.
    """
    env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED}
    env.update(
        HF_ENDPOINT=server.endpoint,
        HF_HUB_DISABLE_XET="1",  # with hf-xet installed, uploads would go through Xet with no fallback
        HF_HUB_OFFLINE="0",
        HF_TOKEN=server.token,
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HTTP_PROXY=server.endpoint,
        HTTPS_PROXY=server.endpoint,
        ALL_PROXY=server.endpoint,
        NO_PROXY="127.0.0.1,localhost",
    )
    for key in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        env[key] = env[key.upper()]
    return env


@pytest.fixture
def hub_env(hub_server: HubServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a child process that must use `hub_server`, with an empty Hub cache of its own."""
    return hub_server_env(hub_server, tmp_path_factory.mktemp("hf-home"))


@contextlib.contextmanager
def hub_client_patch(server: HubServer, home: str | os.PathLike) -> Iterator[HubServer]:
    """Point this process's `huggingface_hub` (and transformers, if imported) at `server`; restore on exit.

    `HF_ENDPOINT` and the offline flag are read once, when huggingface_hub is imported, and copied into the
    module-level `HfApi` and transformers' shared `HfApi`: all of those are patched here.
    """
    from huggingface_hub import constants, hf_api

    home = Path(home)
    patches: list[tuple[Any, str, Any]] = [
        (constants, "ENDPOINT", server.endpoint),
        (
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        ),
        (constants, "HF_HUB_OFFLINE", False),
        (constants, "HF_HUB_DISABLE_XET", True),
        (constants, "HF_HUB_CACHE", str(home / "hub")),
        (constants, "HUGGINGFACE_HUB_CACHE", str(home / "hub")),
        (constants, "HF_XET_CACHE", str(home / "xet")),
        (constants, "HF_TOKEN_PATH", str(home / "token")),
        (constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens")),
        (constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json")),
        (hf_api.api, "endpoint", server.endpoint),
    ]
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None:  # its shared HfApi copied the endpoint when it was first built
        patches.append((transformers_hub, "_hf_api", None))
    saved = [(target, name, getattr(target, name)) for target, name, _ in patches if hasattr(target, name)]
    saved_env = {
        key: os.environ.get(key)
        for key in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET")
    }
    try:
        for target, name, value in patches:
            setattr(target, name, value)
        os.environ.update(
            HF_ENDPOINT=server.endpoint, HF_TOKEN=server.token, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1"
        )
        yield server
    finally:
        for target, name, value in saved:
            setattr(target, name, value)
        transformers_hub = sys.modules.get("transformers.utils.hub")
        if transformers_hub is not None and not any(target is transformers_hub for target, _, _ in saved):
            transformers_hub._hf_api = None  # imported inside the block: drop the instance bound to `server`
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def hub_client(hub_server: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """`hub_server`, with this process's huggingface_hub and transformers pointed at it for the test."""
    with hub_client_patch(hub_server, tmp_path_factory.mktemp("hf-home-inproc")):
        yield hub_server


def _is_loopback(host: Any) -> bool:
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def no_external_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse any connection or name lookup outside loopback during the test; yields the refused targets."""
    refused: list[str] = []

    def _guard(address: Any) -> None:
        if isinstance(address, tuple) and address and not _is_loopback(address[0]):
            refused.append(f"{address[0]}:{address[1] if len(address) > 1 else ''}")
            raise OSError(
                f"no_external_network: connection to {address!r} refused (only 127.0.0.1 is allowed)"
            )

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        _guard(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        _guard(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        _guard((host.decode() if isinstance(host, bytes) else host, port))
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return refused
