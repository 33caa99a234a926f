"""On-disk repository store behind the test Hub server (`tests/hub_server.py`).

Each repository keeps a real commit history: a commit is a JSON file naming its parents and the full tree it
snapshots (path -> size, git oid, LFS info), branches are files holding a commit id. File contents are stored
once per repository, regular files by git blob id, LFS files by sha256, exactly the ids the Hub reports and
that `huggingface_hub` compares against its local files. Standard library only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO_TYPES = ("model", "dataset", "space")
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
COMMIT_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$")

# The patterns the Hub writes into `.gitattributes` in a new repository's initial commit.
_DEFAULT_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar",
    "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)  # fmt: skip
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _DEFAULT_LFS_PATTERNS)


class HubError(Exception):
    """An error the server answers with: HTTP status, optional `X-Error-Code`, and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra  # extra JSON fields of the error body (e.g. `url` on a 409 from repos/create)


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob: sha1 over `blob <size>\\0<content>`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return LFS_POINTER.format(oid=oid, size=size).encode()


def name_error(name: str) -> str | None:
    """Why `name` is not a valid Hub namespace or repository name, or None if it is valid."""
    if not _NAME_RE.fullmatch(name):
        return (
            f"Invalid repo name '{name}': use 1 to 96 characters among letters, digits, '-', '_' and '.', "
            "not starting or ending with '-' or '.'."
        )
    if "--" in name or ".." in name:
        return f"Invalid repo name '{name}': '--' and '..' are forbidden."
    if name.endswith(".git"):
        return f"Invalid repo name '{name}': it cannot end with '.git'."
    return None


def repo_id_error(repo_id: str) -> str | None:
    parts = repo_id.split("/")
    if len(parts) > 2:
        return f"Invalid repo id '{repo_id}': use 'name' or 'namespace/name'."
    return next((error for error in map(name_error, parts) if error), None)


def _now() -> str:
    stamp = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _check_path(path: str) -> str:
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise HubError(400, f"Invalid path in repo: '{path}'.")
    return path


def _lfs_patterns(gitattributes: str) -> list[str]:
    patterns = []
    for line in gitattributes.splitlines():
        fields = line.split()
        if len(fields) > 1 and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def _matches(path: str, pattern: str) -> bool:
    target = path if "/" in pattern else path.rsplit("/", 1)[-1]
    return fnmatch.fnmatchcase(target, pattern)


class RepoStore:
    """Repositories under `root`/{type}s/{namespace}/{name}; thread-safe."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # -- repositories ----------------------------------------------------------------------------------------

    def path(self, repo_type: str, repo_id: str) -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return (self.path(repo_type, repo_id) / "repo.json").is_file()

    def meta(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        try:
            return json.loads((self.path(repo_type, repo_id) / "repo.json").read_text())
        except FileNotFoundError:
            raise HubError(404, f"Repository not found: {repo_type} '{repo_id}'.", "RepoNotFound") from None

    def set_meta(self, repo_type: str, repo_id: str, **fields: Any) -> None:
        with self._lock:
            meta = {**self.meta(repo_type, repo_id), **fields}
            _write_atomic(self.path(repo_type, repo_id) / "repo.json", json.dumps(meta, indent=1).encode())

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> None:
        """Create a repository whose `main` holds one initial commit with the Hub's default `.gitattributes`."""
        with self._lock:
            if self.exists(repo_type, repo_id):
                raise HubError(409, f"You already created this {repo_type} repo: '{repo_id}'.")
            root = self.path(repo_type, repo_id)
            _write_atomic(
                root / "repo.json",
                json.dumps(
                    {"id": repo_id, "type": repo_type, "private": private, "createdAt": _now()}
                ).encode(),
            )
            sha = self._new_commit(
                repo_type, repo_id, {}, [("file", ".gitattributes", DEFAULT_GITATTRIBUTES.encode())],
                parents=[], title="initial commit", message="", author=author,
            )  # fmt: skip
            self._set_branch(repo_type, repo_id, "main", sha)

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            self.meta(repo_type, repo_id)
            shutil.rmtree(self.path(repo_type, repo_id))

    # -- refs and commits ------------------------------------------------------------------------------------

    def branches(self, repo_type: str, repo_id: str) -> dict[str, str]:
        heads = self.path(repo_type, repo_id) / "refs" / "heads"
        return {
            str(ref.relative_to(heads)): ref.read_text().strip()
            for ref in sorted(heads.rglob("*"))
            if ref.is_file() and not ref.name.startswith(".tmp-")
        }

    def _set_branch(self, repo_type: str, repo_id: str, branch: str, sha: str) -> None:
        _write_atomic(self.path(repo_type, repo_id) / "refs" / "heads" / branch, sha.encode())

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        """The commit id `revision` (a branch or a full commit id) points to."""
        self.meta(repo_type, repo_id)
        branch = self.branches(repo_type, repo_id).get(revision)
        if branch is not None:
            return branch
        if COMMIT_SHA_RE.fullmatch(revision) and (self._commit_file(repo_type, repo_id, revision)).is_file():
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _commit_file(self, repo_type: str, repo_id: str, sha: str) -> Path:
        return self.path(repo_type, repo_id) / "commits" / f"{sha}.json"

    def commit(self, repo_type: str, repo_id: str, sha: str) -> dict[str, Any]:
        return json.loads(self._commit_file(repo_type, repo_id, sha).read_text())

    def history(self, repo_type: str, repo_id: str, sha: str) -> list[dict[str, Any]]:
        """Commits reachable from `sha` along first parents, newest first."""
        commits = []
        while sha:
            commit = self.commit(repo_type, repo_id, sha)
            commits.append(commit)
            sha = commit["parents"][0] if commit["parents"] else None
        return commits

    def create_branch(self, repo_type: str, repo_id: str, branch: str, start: str | None) -> None:
        with self._lock:
            if branch in self.branches(repo_type, repo_id):
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            _check_path(branch)
            self._set_branch(repo_type, repo_id, branch, self.resolve(repo_type, repo_id, start or "main"))

    def delete_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        with self._lock:
            if branch not in self.branches(repo_type, repo_id):
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            (self.path(repo_type, repo_id) / "refs" / "heads" / branch).unlink()

    # -- files -----------------------------------------------------------------------------------------------

    def tree(self, repo_type: str, repo_id: str, sha: str) -> dict[str, dict[str, Any]]:
        return self.commit(repo_type, repo_id, sha)["tree"]

    def file_location(self, repo_type: str, repo_id: str, entry: dict[str, Any]) -> Path:
        root = self.path(repo_type, repo_id)
        return root / "lfs" / entry["lfs"]["oid"] if entry.get("lfs") else root / "objects" / entry["oid"]

    def read(self, repo_type: str, repo_id: str, sha: str, path: str) -> bytes:
        entry = self.tree(repo_type, repo_id, sha)[path]
        return self.file_location(repo_type, repo_id, entry).read_bytes()

    def upload_mode(
        self, repo_type: str, repo_id: str, sha: str, path: str, size: int, sample: bytes, threshold: int
    ) -> str:
        """`lfs` for files `.gitattributes` routes to LFS, binary files and files above `threshold` bytes."""
        if size == 0:
            return "regular"
        tree = self.tree(repo_type, repo_id, sha)
        attributes = (
            self.read(repo_type, repo_id, sha, ".gitattributes").decode() if ".gitattributes" in tree else ""
        )
        if any(_matches(path, pattern) for pattern in _lfs_patterns(attributes)):
            return "lfs"
        return "lfs" if size > threshold or b"\0" in sample else "regular"

    def has_lfs(self, repo_type: str, repo_id: str, oid: str, size: int | None = None) -> bool:
        location = self.path(repo_type, repo_id) / "lfs" / oid
        return location.is_file() and (size is None or location.stat().st_size == size)

    def store_lfs(self, repo_type: str, repo_id: str, oid: str, size: int, chunks: Iterable[bytes]) -> None:
        """Write an LFS object from `chunks`; refuse it unless its sha256 and size match `oid` and `size`."""
        directory = self.path(repo_type, repo_id) / "lfs"
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        digest, written = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    digest.update(chunk)
                    written += len(chunk)
                    handle.write(chunk)
            if digest.hexdigest() != oid or written != size:
                raise HubError(
                    400, f"LFS upload does not match its object: got sha256 {digest.hexdigest()} and {written} "
                    f"bytes, expected {oid} and {size} bytes."
                )  # fmt: skip
            os.replace(tmp, directory / oid)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # -- committing ------------------------------------------------------------------------------------------

    def apply_commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        operations: list[tuple],
        *,
        title: str,
        message: str,
        author: str,
        parent: str | None = None,
        skip_empty: bool = False,
    ) -> tuple[str, bool]:
        """Commit `operations` on top of `branch`; return (commit id, whether a new commit was made).

        Operations: ("file", path, bytes), ("lfsFile", path, sha256, size | None), ("deletedFile", path),
        ("deletedFolder", path). With `skip_empty`, a commit that leaves the tree unchanged returns the current head
        instead of recording an empty commit (the real Hub records it).
        """
        with self._lock:
            head = self.branches(repo_type, repo_id).get(branch)
            if head is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if parent is not None and not head.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = self.tree(repo_type, repo_id, head)
            new_tree = self._apply(repo_type, repo_id, tree, operations)
            if skip_empty and new_tree == tree:
                return head, False
            sha = self._new_commit(
                repo_type, repo_id, new_tree, [], parents=[head], title=title, message=message, author=author
            )
            self._set_branch(repo_type, repo_id, branch, sha)
            return sha, True

    def _apply(
        self, repo_type: str, repo_id: str, tree: dict[str, Any], operations: list[tuple]
    ) -> dict[str, dict[str, Any]]:
        tree = dict(tree)
        root = self.path(repo_type, repo_id)
        for operation in operations:
            kind, path = operation[0], _check_path(operation[1])
            if kind == "file":
                data = operation[2]
                oid = git_blob_oid(data)
                if not (root / "objects" / oid).is_file():
                    _write_atomic(root / "objects" / oid, data)
                tree[path] = {"oid": oid, "size": len(data), "lfs": None}
            elif kind == "lfsFile":
                oid, size = operation[2], operation[3]
                if not self.has_lfs(repo_type, repo_id, oid, size):
                    raise HubError(
                        422, f"Your push was rejected because an LFS pointer pointed to a file that does not exist "
                        f"(path '{path}', oid {oid}); upload it through the LFS batch API first."
                    )  # fmt: skip
                size = (root / "lfs" / oid).stat().st_size
                pointer = lfs_pointer(oid, size)
                tree[path] = {
                    "oid": git_blob_oid(pointer),
                    "size": size,
                    "lfs": {"oid": oid, "size": size, "pointerSize": len(pointer)},
                }
            elif kind == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: '{path}'.", "EntryNotFound")
            elif kind == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                removed = [name for name in tree if name.startswith(prefix)]
                if not removed:
                    raise HubError(404, f"A folder with this name doesn't exist: '{path}'.", "EntryNotFound")
                for name in removed:
                    del tree[name]
            else:
                raise HubError(400, f"Unknown commit operation '{kind}'.")
        return dict(sorted(tree.items()))

    def _new_commit(
        self,
        repo_type: str,
        repo_id: str,
        tree: dict[str, Any],
        operations: list[tuple],
        *,
        parents: list[str],
        title: str,
        message: str,
        author: str,
    ) -> str:
        tree = self._apply(repo_type, repo_id, tree, operations)
        date = _now()
        seed = json.dumps([tree, parents, title, message, date, secrets.token_hex(8)], sort_keys=True)
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = {
            "id": sha, "parents": parents, "title": title, "message": message, "date": date,
            "authors": [author], "tree": tree,
        }  # fmt: skip
        _write_atomic(self._commit_file(repo_type, repo_id, sha), json.dumps(commit, indent=1).encode())
        return sha
