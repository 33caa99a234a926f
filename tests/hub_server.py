"""A Hub-compatible HTTP server for tests, standard library only.

It answers the routes the real `huggingface_hub` client and transformers' `from_pretrained` / `push_to_hub` use
(/work/shared/HUB_API.md; handlers in `tests/hub_routes.py`), stores repositories on disk with real commit
history (`tests/hub_store.py`), records every request, can require a token, and injects faults on demand:

```python
with HubServer() as server:
    server.lfs_threshold = 1024                # files above 1 KiB go through LFS
    server.faults.fail_next_commit = True      # the next POST .../commit/... answers 500 and changes nothing
    server.faults.drop_next_lfs_upload = True  # the next LFS PUT loses its connection mid-body
    ...
    assert not server.external_requests and not server.unhandled_requests
```

Where the real Hub's behaviour is known it is copied: a 409 from `repos/create` still carries `url`; a missing
file answers 404 with `X-Error-Code: EntryNotFound` and `X-Repo-Commit`; a private repository answers 401 with
`X-Error-Code: RepoNotFound` to a request without a valid token; `preupload` reports each existing file's oid so
that the client drops unchanged files and skips a commit that would change nothing. A commit that does reach
the server and changes nothing is still recorded, as on the Hub (huggingface_hub#1411), unless the server is
made with `skip_empty_commits=True`.

The server is also an HTTP proxy that refuses everything: child processes started with `HTTPS_PROXY` pointing
here get 403 for any request to another host, recorded with `external=True`.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.hub_routes import ROUTES, Call, Response, handle
from tests.hub_store import HubError, RepoStore

_CHUNK = 1 << 20
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


@dataclass
class RecordedRequest:
    """One request the server received; `external` marks a proxied request for another host."""

    method: str
    path: str
    host: str
    route: str
    external: bool = False
    status: int | None = None


class Faults:
    """Faults for the next requests of a route (`commit`, `lfs_upload`, `preupload`, `resolve`, ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, list[tuple[str, int]]] = {}

    def fail_next(self, route: str, status: int = 500, times: int = 1) -> None:
        """Answer the next `times` requests of `route` with `status`, without acting on them."""
        with self._lock:
            self._pending.setdefault(route, []).extend([("fail", status)] * times)

    def drop_next(self, route: str, times: int = 1) -> None:
        """Close the connection of the next `times` requests of `route` after reading half their body."""
        with self._lock:
            self._pending.setdefault(route, []).extend([("drop", 0)] * times)

    def take(self, route: str) -> tuple[str, int] | None:
        with self._lock:
            queue = self._pending.get(route)
            return queue.pop(0) if queue else None

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    @property
    def fail_next_commit(self) -> bool:
        return self._has("commit", "fail")

    @fail_next_commit.setter
    def fail_next_commit(self, value: bool) -> None:
        self._set("commit", "fail", value)

    @property
    def drop_next_lfs_upload(self) -> bool:
        return self._has("lfs_upload", "drop")

    @drop_next_lfs_upload.setter
    def drop_next_lfs_upload(self, value: bool) -> None:
        self._set("lfs_upload", "drop", value)

    def _has(self, route: str, kind: str) -> bool:
        with self._lock:
            return any(action == kind for action, _ in self._pending.get(route, []))

    def _set(self, route: str, kind: str, value: bool) -> None:
        if value and not self._has(route, kind):
            (self.fail_next if kind == "fail" else self.drop_next)(route)
        elif not value:
            with self._lock:
                self._pending[route] = [item for item in self._pending.get(route, []) if item[0] != kind]


class HubServer:
    """A Hub-compatible server on 127.0.0.1 that stores repositories under `root`.

    Args:
        root (`str` or `Path`, *optional*):
            Storage folder; a temporary folder, removed by `stop()`, when omitted.
        token (`str`, *optional*):
            The one valid token; random when omitted.
        user (`str`, defaults to `"test-user"`):
            The account of the token; repositories created without a namespace go there.
        orgs (`tuple[str, ...]`, defaults to `("test-org",)`):
            Organisations `whoami` lists for the user.
        require_token (`bool`, defaults to `True`):
            Whether writes need `Authorization: Bearer <token>`. Private repositories always need it to be read.
        lfs_threshold (`int`, defaults to 10 MiB):
            Files larger than this go through LFS, as do binary files and `.gitattributes` LFS patterns.
        skip_empty_commits (`bool`, defaults to `False`):
            Whether a commit that changes no file returns the current head instead of recording a new commit.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        token: str | None = None,
        user: str = "test-user",
        orgs: tuple[str, ...] = ("test-org",),
        require_token: bool = True,
        lfs_threshold: int = 10 * 1024 * 1024,
        skip_empty_commits: bool = False,
    ) -> None:
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="hub-server-")
        self.store = RepoStore(Path(root) if root is not None else Path(self._tmp.name))
        self.token = token or "hf_test_" + secrets.token_hex(12)
        self.user = user
        self.orgs = orgs
        self.require_token = require_token
        self.lfs_threshold = lfs_threshold
        self.skip_empty_commits = skip_empty_commits
        self.faults = Faults()
        self.errors: list[Exception] = []  # requests the server could not parse (see `_Handler._guarded`)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._tickets: dict[str, tuple[str, str, str, int]] = {}
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        hub = self

        class _Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with hub._lock:
                    hub._connections.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                with hub._lock:
                    hub._connections.discard(request)
                super().shutdown_request(request)

        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self  # type: ignore[attr-defined]
        threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            with self._lock:
                connections = list(self._connections)
            for connection in connections:  # idle keep-alive connections would otherwise hold their threads
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._httpd.server_close()
            self._httpd = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("The Hub server is not running; call start() first.")
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what tests inspect ----------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def external_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.external]

    @property
    def unhandled_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route == "unhandled"]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        """The repository's storage folder (`repo.json`, `refs/heads/`, `commits/`, `objects/`, `lfs/`)."""
        return self.store.path(repo_type, repo_id)

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Commit ids reachable from `revision`, newest first."""
        sha = self.store.resolve(repo_type, repo_id, revision)
        return [commit["id"] for commit in self.store.history(repo_type, repo_id, sha)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Every file of the repository at `revision`, by path."""
        sha = self.store.resolve(repo_type, repo_id, revision)
        tree = self.store.tree(repo_type, repo_id, sha)
        return {path: self.store.read(repo_type, repo_id, sha, path) for path in tree}

    # -- LFS upload links (presigned: the client sends no token with the PUT) -------------------------------

    def lfs_ticket(self, repo_type: str, repo_id: str, oid: str, size: int) -> str:
        ticket = secrets.token_hex(16)
        with self._lock:
            self._tickets[ticket] = (repo_type, repo_id, oid, size)
        return ticket

    def redeem_lfs_ticket(self, ticket: str) -> tuple[str, str, str, int]:
        with self._lock:
            if ticket not in self._tickets:
                raise HubError(403, "Unknown or expired LFS upload link.")
            return self._tickets[ticket]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    timeout = 60  # idle keep-alive connections close after a minute
    server_version = "TestHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `HubServer.requests` instead

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_CONNECT = do_GET

    def _dispatch(self) -> None:
        target = urlsplit(self.path) if "://" in self.path else None
        if self.command == "CONNECT" or (
            target is not None and target.netloc != f"127.0.0.1:{self.hub.port}"
        ):
            self._refuse_proxy(target)
            return
        path = self.path if target is None else target.path + (f"?{target.query}" if target.query else "")
        split = urlsplit(path)
        route, match, access = "unhandled", None, "open"
        for methods, pattern, name, route_access in ROUTES:
            found = pattern.match(split.path)
            if found and self.command in methods:
                route, match, access = name, found, route_access
                break
        request = RecordedRequest(self.command, path, self.headers.get("Host", ""), route)
        self.hub._record(request)
        fault = self.hub.faults.take(route)
        if fault is not None and fault[0] == "drop":
            self._drop()
            return
        if route == "lfs_upload":  # streamed to disk: LFS bodies can be large
            response = self._guarded(lambda: self._lfs_upload(match["ticket"], fault))
        else:
            body = self._read_body()
            if fault is not None:
                response = Response(fault[1], {"error": "Internal Error - We're working hard to fix this."})
            elif match is None:
                response = Response(
                    404, {"error": f"Test Hub server does not implement {self.command} {split.path}"}
                )
            else:
                call = self._call(match, split.query, body)
                response = self._guarded(lambda: self._respond(route, access, call))
        request.status = response.status
        self._send(response)

    def _call(self, match: re.Match[str], query: str, body: bytes) -> Call:
        args = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
        repo = None
        if "name" in args:
            repo = (_REPO_TYPES[args.get("type", "models")], f"{args['ns']}/{args['name']}")
        header = self.headers.get("Authorization", "")
        token_valid = None if not header else header.removeprefix("Bearer ").strip() == self.hub.token
        queries = {key: values[-1] for key, values in parse_qs(query).items()}
        return Call(self.hub, self.command, repo, args, queries, body, token_valid)

    def _respond(self, route: str, access: str, call: Call) -> Response:
        self._authorize(access, call)
        return handle(route, call)

    def _authorize(self, access: str, call: Call) -> None:
        if call.token_valid is False:
            raise HubError(401, "Invalid credentials in Authorization header")
        if access == "write" and self.hub.require_token and not call.token_valid:
            raise HubError(
                401,
                "You must be authenticated to write to the Hub: send 'Authorization: Bearer <token>' "
                "(set HF_TOKEN or pass token=...).",
            )
        store = self.hub.store
        private = call.repo is not None and store.exists(*call.repo) and store.meta(*call.repo)["private"]
        if private and access != "open" and not call.token_valid:
            raise HubError(401, "Invalid username or password.", "RepoNotFound")

    def _guarded(self, handler: Callable[[], Response]) -> Response:
        try:
            return handler()
        except (
            KeyError,
            TypeError,
            ValueError,
        ) as error:  # a malformed request, or a bug here: answer, never hang
            self.hub.errors.append(error)
            return Response(400, {"error": f"Test Hub server could not handle the request: {error!r}"})
        except HubError as error:
            headers = {"X-Error-Message": " ".join(error.message.split()), **error.extra.pop("headers", {})}
            if error.code:
                headers["X-Error-Code"] = error.code
            return Response(error.status, {"error": error.message, **error.extra}, headers)

    def _lfs_upload(self, ticket: str, fault: tuple[str, int] | None) -> Response:
        try:
            repo_type, repo_id, oid, size = self.hub.redeem_lfs_ticket(ticket)
        except HubError:
            self._read_body()
            raise
        if fault is not None:
            self._read_body()
            return Response(fault[1], {"error": "Internal Error"})
        self.hub.store.store_lfs(repo_type, repo_id, oid, size, self._body_chunks())
        return Response(200, None)

    def _refuse_proxy(self, target: Any) -> None:
        request = RecordedRequest(
            self.command, self.path, target.netloc if target else self.path, "proxy", True
        )
        self.hub._record(request)
        self._read_body()
        request.status = 403
        self._send(
            Response(403, {"error": f"Test Hub server: no request may leave 127.0.0.1 ({self.path})."})
        )
        self.close_connection = True

    # -- bodies ----------------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        # Always drain the body, even where it is ignored: keep-alive connections fall out of step otherwise.
        return b"".join(self._body_chunks())

    def _body_chunks(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                yield self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0 and (chunk := self.rfile.read(min(_CHUNK, remaining))):
            remaining -= len(chunk)
            yield chunk

    def _drop(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length // 2)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, response: Response) -> None:
        body, start, headers = response.body, 0, dict(response.headers)
        if isinstance(body, Path):
            size = body.stat().st_size
            end = size
            wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            if wanted and response.status == 200 and int(wanted[1]) < size:
                start, end = int(wanted[1]), min(size, int(wanted[2]) + 1) if wanted[2] else size
                response.status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            length = end - start
        else:
            if not isinstance(body, bytes):
                body = b"" if body is None else json.dumps(body).encode()
            length = len(body)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if not isinstance(body, Path):
            self.wfile.write(body)
            return
        with body.open("rb") as handle:
            handle.seek(start)
            while length > 0 and (chunk := handle.read(min(_CHUNK, length))):
                self.wfile.write(chunk)
                length -= len(chunk)
