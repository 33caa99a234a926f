"""Route handlers of the test Hub server (`tests/hub_server.py`): one function per Hub API route.

Each handler takes a `Call` (the parsed request) and returns a `Response`, or raises `HubError`. The JSON shapes
are those `huggingface_hub` 2.x parses (`ModelInfo`, `RepoFile`, `GitCommitInfo`, preupload and LFS batch answers).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.hub_store import REPO_TYPES, HubError, name_error, repo_id_error

if TYPE_CHECKING:
    from tests.hub_server import HubServer

BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_API = rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}"
_PREFIX = r"^/(?:(?P<type>datasets|spaces)/)?"

# (methods, path pattern, route name, access): "read" routes hide private repos from requests without a valid
# token, "write" routes need a token when the server requires one, "open" routes check nothing.
ROUTES: list[tuple[tuple[str, ...], re.Pattern[str], str, str]] = [
    (("GET",), re.compile(r"^/api/whoami-v2$"), "whoami", "open"),
    (("GET",), re.compile(r"^/api/agent-harnesses$"), "agent_harnesses", "open"),
    (("POST",), re.compile(r"^/api/repos/create$"), "create_repo", "write"),
    (("DELETE",), re.compile(r"^/api/repos/delete$"), "delete_repo", "write"),
    (("POST",), re.compile(r"^/api/validate-yaml$"), "validate_yaml", "open"),
    (("GET",), re.compile(_API + r"$"), "repo_info", "read"),
    (("GET",), re.compile(_API + r"/revision/(?P<rev>[^/]+)$"), "repo_info", "read"),
    (("GET",), re.compile(_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree", "read"),
    (("GET",), re.compile(_API + r"/commits/(?P<rev>[^/]+)$"), "commits", "read"),
    (("GET",), re.compile(_API + r"/refs$"), "refs", "read"),
    (("POST",), re.compile(_API + r"/preupload/(?P<rev>[^/]+)$"), "preupload", "write"),
    (("POST",), re.compile(_API + r"/commit/(?P<rev>[^/]+)$"), "commit", "write"),
    (("POST", "DELETE"), re.compile(_API + r"/branch/(?P<branch>.+)$"), "branch", "write"),
    (("PUT",), re.compile(_API + r"/settings$"), "settings", "write"),
    (("POST",), re.compile(_PREFIX + r"(?P<ns>[^/]+)/(?P<name>[^/]+?)\.git/info/lfs/objects/batch$"), "lfs_batch", "write"),
    (("PUT",), re.compile(r"^/lfs-upload/(?P<ticket>[0-9a-f]+)$"), "lfs_upload", "open"),
    (("POST",), re.compile(r"^/lfs-verify/(?P<ticket>[0-9a-f]+)$"), "lfs_verify", "write"),
    (("GET", "HEAD"), re.compile(_PREFIX + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve", "read"),
]  # fmt: skip


@dataclass
class Call:
    """A parsed request: `repo` is (repo type, repo id) on repository routes."""

    hub: HubServer
    method: str
    repo: tuple[str, str] | None
    args: dict[str, str]
    query: dict[str, str]
    body: bytes
    token_valid: bool | None
    payload: Any = field(default_factory=dict)


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-serialisable, bytes, or a Path to stream
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def handle(route: str, call: Call) -> Response:
    if call.body and route != "commit":
        try:
            call.payload = json.loads(call.body)
        except ValueError as error:
            raise HubError(400, f"Request body is not valid JSON: {error}") from None
    return globals()[f"route_{route}"](call)


def _repo_url(hub: HubServer, repo_type: str, repo_id: str) -> str:
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{hub.endpoint}/{prefix}{repo_id}"


def _resolve(call: Call, revision: str) -> str:
    return call.hub.store.resolve(*call.repo, revision)


# -- account and repositories --------------------------------------------------------------------------------


def route_whoami(call: Call) -> Response:
    if not call.token_valid:
        raise HubError(401, "Invalid credentials in Authorization header")
    hub = call.hub
    return Response(
        body={
            "type": "user", "id": "0" * 24, "name": hub.user, "fullname": hub.user.replace("-", " ").title(),
            "email": None, "canPay": False, "isPro": False,
            "orgs": [{"type": "org", "name": org, "roleInOrg": "admin"} for org in hub.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
        }
    )  # fmt: skip


def route_agent_harnesses(call: Call) -> Response:
    # huggingface_hub fetches this registry to tag its user agent; an empty one detects no agent.
    return Response(body={"standardEnvVars": [], "harnesses": {}})


def route_create_repo(call: Call) -> Response:
    payload, hub = call.payload, call.hub
    repo_type = payload.get("type") or "model"
    if repo_type not in REPO_TYPES:
        raise HubError(400, f"Invalid repo type '{repo_type}'.")
    name, namespace = str(payload.get("name") or ""), payload.get("organization")
    if namespace is None:
        if not call.token_valid:
            raise HubError(401, "You must be authenticated to create a repo in your namespace.")
        namespace = hub.user
    error = name_error(name) or name_error(str(namespace))
    if error:
        raise HubError(400, error)
    repo_id = f"{namespace}/{name}"
    url = _repo_url(hub, repo_type, repo_id)
    private = payload.get("visibility", "public") != "public" or bool(payload.get("private"))
    try:
        hub.store.create_repo(repo_type, repo_id, private=private, author=hub.user)
    except HubError as exists:
        exists.extra["url"] = url  # the client reads `url` from the 409 too (create_repo(exist_ok=True))
        raise
    return Response(body={"url": url, "name": repo_id, "id": repo_id})


def route_delete_repo(call: Call) -> Response:
    repo_id = f"{call.payload.get('organization') or call.hub.user}/{call.payload.get('name')}"
    call.hub.store.delete_repo(call.payload.get("type") or "model", repo_id)
    return Response(body={})


def route_settings(call: Call) -> Response:
    payload = call.payload
    if "visibility" in payload:
        call.hub.store.set_meta(*call.repo, private=payload["visibility"] != "public")
    elif "private" in payload:
        call.hub.store.set_meta(*call.repo, private=bool(payload["private"]))
    return Response(body={})


def route_branch(call: Call) -> Response:
    if call.method == "DELETE":
        call.hub.store.delete_branch(*call.repo, call.args["branch"])
    else:
        call.hub.store.create_branch(*call.repo, call.args["branch"], call.payload.get("startingPoint"))
    return Response(body={})


def route_validate_yaml(call: Call) -> Response:
    errors, warnings = validate_card_metadata(str(call.payload.get("content", "")))
    body = {"errors": [{"message": m} for m in errors], "warnings": [{"message": m} for m in warnings]}
    return Response(400 if errors else 200, body)


# -- reading -------------------------------------------------------------------------------------------------


def route_repo_info(call: Call) -> Response:
    store, repo = call.hub.store, call.repo
    sha = _resolve(call, call.args.get("rev", "main"))
    commit, meta = store.commit(*repo, sha), store.meta(*repo)
    blobs = call.query.get("blobs", "").lower() in ("1", "true")
    siblings = []
    for path, entry in commit["tree"].items():
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            sibling.update(size=entry["size"], blobId=entry["oid"])
            if entry["lfs"]:
                lfs = entry["lfs"]
                sibling["lfs"] = {
                    "size": lfs["size"],
                    "sha256": lfs["oid"],
                    "pointerSize": lfs["pointerSize"],
                }
        siblings.append(sibling)
    info: dict[str, Any] = {
        "_id": sha[:24], "id": repo[1], "author": repo[1].split("/")[0], "sha": sha,
        "lastModified": commit["date"], "createdAt": meta["createdAt"], "private": meta["private"],
        "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
    }  # fmt: skip
    if repo[0] == "model":
        info["modelId"] = repo[1]
    card = None
    if "README.md" in commit["tree"]:
        with contextlib.suppress(ValueError):  # the Hub lists a repo with a broken card too
            card = front_matter(store.read(*repo, sha, "README.md").decode())
    if isinstance(card, dict):
        info["cardData"] = card
        tags = card.get("tags") or []
        info["tags"] = [str(tag) for tag in (tags if isinstance(tags, list) else [tags])]
        info.update(
            {key: card[key] for key in ("pipeline_tag", "library_name") if isinstance(card.get(key), str)}
        )
    if "config.json" in commit["tree"]:
        try:
            config = json.loads(store.read(*repo, sha, "config.json"))
            info["config"] = {
                key: config[key] for key in ("architectures", "model_type", "auto_map") if key in config
            }
        except (ValueError, TypeError):
            pass
    return Response(body=info)


def route_tree(call: Call) -> Response:
    sha = _resolve(call, call.args["rev"])
    tree = call.hub.store.tree(*call.repo, sha)
    base = call.args.get("path", "").strip("/")
    prefix = f"{base}/" if base else ""
    if base and not any(path.startswith(prefix) for path in tree):
        raise HubError(404, f"Path '{base}' does not exist in revision {sha}.", "EntryNotFound")
    recursive = call.query.get("recursive", "").lower() in ("1", "true")
    files, folders = [], set()
    for path, entry in tree.items():
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        folders.update(
            prefix + "/".join(parts[:depth])
            for depth in range(1, len(parts) if recursive else min(2, len(parts)))
        )
        if recursive or len(parts) == 1:
            item = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
            if entry["lfs"]:
                item["lfs"] = dict(entry["lfs"])
            files.append(item)
    directories = [
        {"type": "directory", "oid": _folder_oid(tree, f), "size": 0, "path": f} for f in sorted(folders)
    ]
    return Response(body=directories + files)


def route_commits(call: Call) -> Response:
    history = call.hub.store.history(*call.repo, _resolve(call, call.args["rev"]))
    return Response(
        body=[
            {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
             "authors": [{"user": author} for author in c["authors"]]}
            for c in history
        ]
    )  # fmt: skip


def route_refs(call: Call) -> Response:
    branches = [
        {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
        for name, sha in call.hub.store.branches(*call.repo).items()
    ]
    return Response(body={"branches": branches, "converts": [], "tags": [], "pullRequests": []})


def route_resolve(call: Call) -> Response:
    store = call.hub.store
    sha = _resolve(call, call.args["rev"])
    entry = store.tree(*call.repo, sha).get(call.args["path"])
    if entry is None:  # X-Repo-Commit lets the client cache the file's absence for this commit
        raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": sha})
    filename = call.args["path"].rsplit("/", 1)[-1]
    headers = {
        "X-Repo-Commit": sha,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"inline; filename*=UTF-8''{filename}",
    }
    if entry["lfs"]:  # served in place rather than redirected to a CDN, so every byte stays on 127.0.0.1
        oid = entry["lfs"]["oid"]
        headers.update(
            {"ETag": f'"{oid}"', "X-Linked-Etag": f'"{oid}"', "X-Linked-Size": str(entry["lfs"]["size"])}
        )
    else:
        headers["ETag"] = f'"{entry["oid"]}"'
    return Response(200, store.file_location(*call.repo, entry), headers, "application/octet-stream")


# -- uploading -----------------------------------------------------------------------------------------------


def route_preupload(call: Call) -> Response:
    if call.query.get("create_pr"):
        raise HubError(400, "Test Hub server: create_pr is not supported.")
    store, sha = call.hub.store, _resolve(call, call.args["rev"])
    tree = store.tree(*call.repo, sha)
    answers = []
    for item in call.payload.get("files", []):
        path, size = item["path"], int(item["size"])
        sample = base64.b64decode(item.get("sample") or "")
        mode = store.upload_mode(*call.repo, sha, path, size, sample, call.hub.lfs_threshold)
        answer: dict[str, Any] = {"path": path, "uploadMode": mode, "shouldIgnore": False}
        entry = tree.get(path)
        if entry is not None:  # the client compares this with its own file and skips unchanged ones
            answer["oid"] = entry["lfs"]["oid"] if entry["lfs"] else entry["oid"]
        answers.append(answer)
    return Response(body={"files": answers, "commitOid": sha})


def route_lfs_batch(call: Call) -> Response:
    if call.payload.get("operation") != "upload":
        raise HubError(400, "Test Hub server: only the LFS 'upload' operation is supported.")
    hub = call.hub
    hub.store.meta(*call.repo)
    objects = []
    for item in call.payload.get("objects", []):
        oid, size = str(item["oid"]), int(item["size"])
        answer: dict[str, Any] = {"oid": oid, "size": size}
        if not hub.store.has_lfs(*call.repo, oid, size):  # no `actions`: the client skips the upload
            ticket = hub.lfs_ticket(*call.repo, oid, size)
            answer["authenticated"] = True
            answer["actions"] = {
                "upload": {"href": f"{hub.endpoint}/lfs-upload/{ticket}"},
                "verify": {"href": f"{hub.endpoint}/lfs-verify/{ticket}"},
            }
        objects.append(answer)
    return Response(
        body={"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json"
    )


def route_lfs_verify(call: Call) -> Response:
    repo_type, repo_id, oid, size = call.hub.redeem_lfs_ticket(call.args["ticket"])
    if call.payload.get("oid") != oid or not call.hub.store.has_lfs(repo_type, repo_id, oid, size):
        raise HubError(404, f"LFS object {oid} was not uploaded.")
    return Response(body={"success": True})


def route_commit(call: Call) -> Response:
    if call.query.get("create_pr"):
        raise HubError(400, "Test Hub server: create_pr is not supported.")
    try:
        lines = [json.loads(line) for line in call.body.splitlines() if line.strip()]
    except ValueError as error:
        raise HubError(400, f"Commit body is not valid ndjson: {error}") from None
    if not lines or lines[0].get("key") != "header":
        raise HubError(400, "A commit body starts with a 'header' line.")
    header = lines[0]["value"]
    operations: list[tuple] = []
    for line in lines[1:]:
        key, value = line.get("key"), line.get("value", {})
        if key == "file":
            content = value.get("content", "")
            data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
            operations.append(("file", value["path"], data))
        elif key == "lfsFile":
            operations.append(("lfsFile", value["path"], value["oid"], value.get("size")))
        elif key in ("deletedFile", "deletedFolder"):
            operations.append((key, value["path"]))
        else:
            raise HubError(400, f"Unknown commit line key '{key}'.")
    hub = call.hub
    sha, _ = hub.store.apply_commit(
        *call.repo, call.args["rev"], operations,
        title=header.get("summary") or "", message=header.get("description") or "", author=hub.user,
        parent=header.get("parentCommit"), skip_empty=hub.skip_empty_commits,
    )  # fmt: skip
    url = f"{_repo_url(hub, *call.repo)}/commit/{sha}"
    return Response(
        body={"success": True, "commitOid": sha, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None}
    )


# -- helpers -------------------------------------------------------------------------------------------------


def _folder_oid(tree: dict[str, Any], folder: str) -> str:
    listing = "".join(
        f"{path}:{entry['oid']}\n" for path, entry in tree.items() if path.startswith(folder + "/")
    )
    return hashlib.sha1(listing.encode()).hexdigest()


def front_matter(text: str) -> Any:
    """The YAML block at the top of a card, parsed (None when absent); raises ValueError when malformed."""
    match = re.match(r"^---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)", text, re.DOTALL)
    if match is None:
        return None
    import yaml  # pyyaml is a dependency of hf-embfuse

    try:
        return yaml.safe_load(match[1])
    except yaml.YAMLError as error:
        raise ValueError(f"Invalid YAML in the card's metadata: {error}") from error


def validate_card_metadata(content: str) -> tuple[list[str], list[str]]:
    """Check a card's YAML metadata the way the Hub's /api/validate-yaml does; return (errors, warnings).

    A subset of the Hub's schema: field types, `base_model` ids, and the four `base_model_relation` values.
    """
    try:
        metadata = front_matter(content)
    except ValueError as error:
        return [str(error)], []
    if metadata is None or metadata == {}:
        return [], ["empty or missing yaml metadata in repo card"]
    if not isinstance(metadata, dict):
        return ["The card's metadata must be a YAML mapping."], []
    errors = []
    for key in (
        "license",
        "library_name",
        "pipeline_tag",
        "base_model_relation",
        "license_name",
        "license_link",
    ):
        if key in metadata and not isinstance(metadata[key], str):
            errors.append(f'"{key}" must be a string')
    for key in ("tags", "datasets", "language", "metrics", "base_model"):
        value = metadata.get(key)
        if value is not None and not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            errors.append(f'"{key}" must be a string or a list of strings')
    base_models = metadata.get("base_model")
    for base in [base_models] if isinstance(base_models, str) else base_models or []:
        if isinstance(base, str) and repo_id_error(base):
            errors.append(f'"base_model" is not a valid model id: {base!r}')
    relation = metadata.get("base_model_relation")
    if relation is not None:
        if relation not in BASE_MODEL_RELATIONS:
            errors.append(f'"base_model_relation" must be one of {", ".join(BASE_MODEL_RELATIONS)}')
        if base_models is None:
            errors.append('"base_model_relation" needs "base_model"')
    if "model-index" in metadata:
        errors.extend(_model_index_errors(metadata["model-index"]))
    return errors, []


def _model_index_errors(model_index: Any) -> list[str]:
    """The Hub's shape of `model-index`: models with a name and results of a task, a dataset and metrics."""
    if not isinstance(model_index, list):
        return ['"model-index" must be a list']
    errors = []
    for i, model in enumerate(model_index):
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append(f'"model-index[{i}].name" must be a string')
            continue
        for j, result in enumerate(model.get("results") or []):
            where = f"model-index[{i}].results[{j}]"
            task, dataset = (result or {}).get("task"), (result or {}).get("dataset")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f'"{where}.task.type" must be a string')
            if not isinstance(dataset, dict) or not all(
                isinstance(dataset.get(k), str) for k in ("name", "type")
            ):
                errors.append(f'"{where}.dataset" needs a string "name" and "type"')
            metrics = (result or {}).get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f'"{where}.metrics" must be a non-empty list')
                continue
            for metric in metrics:
                if (
                    not isinstance(metric, dict)
                    or not isinstance(metric.get("type"), str)
                    or "value" not in metric
                ):
                    errors.append(f'"{where}.metrics" entries need a string "type" and a "value"')
    return errors


__all__ = ["ROUTES", "Call", "Response", "front_matter", "handle", "validate_card_metadata"]
