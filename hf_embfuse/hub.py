"""Publish a fused checkpoint to the Hugging Face Hub: weights, config, code, tokenizer, report and card in one commit.

`model.push_to_hub(repo)` (the `PreTrainedModel` method) works too and ships the two code files, but it cannot
write the model card: the modeling file travels inside every checkpoint and must not import `hf_embfuse`.
`hf_embfuse.push_to_hub(model, repo)` and `hf-embfuse push DIR REPO` add the card, the alignment report and the
mixing-weights plot, and commit everything at once, so a failed upload never leaves a half-updated repository.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from .checkpoint_folder import is_weights_file, mean_mixing_weights, read_checkpoint_config

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
PLOT_FILE = "mixing_weights.png"  # written by `MixingWeightsCallback` at the end of training
CODE_FILES = ("configuration_embfuse.py", "modeling_embfuse.py")
# Trainer state that can sit beside a checkpoint in an output folder; it is not part of the model.
_NOT_PUBLISHED = (
    "training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json",
)  # fmt: skip
DEFAULT_COMMIT_MESSAGE = "Upload fused-embedding model (hf-embfuse)"
_LOGIN_HINT = "run `hf auth login` (or `huggingface-cli login`), set HF_TOKEN, or pass a token (--token)"


class PublishError(OSError):
    """Publishing to the Hub failed; the message says at which step, why, and what to do."""


def push_to_hub(
    model_or_folder: Any,
    repo_id: str,
    *,
    tokenizer: Any = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    eval_results: Mapping[str, Any] | None = None,
    create_pr: bool = False,
    base_model_id: str | None = None,
) -> CommitInfo | None:
    """Upload a fused model with its model card to the Hub, all in one commit.

    The commit holds the weights, `config.json` (with its `auto_map`), the two code files, the tokenizer files,
    `embfuse_report.json` and `mixing_weights.png` when present, and a `README.md` generated from the config
    (a `README.md` already in the folder is replaced). Weight files of an earlier push that this one does not
    contain (e.g. old shards) are deleted in the same commit. Unchanged files are not uploaded again.

    Args:
        model_or_folder (`EmbFusePreTrainedModel` or `str` or `os.PathLike`):
            A fused model, or a checkpoint folder written by `save_pretrained` / `hf-embfuse build`.
        repo_id (`str`):
            `namespace/name` (or `name`, in the token's own namespace); created when missing.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Saved beside the model (replacing a folder's own tokenizer files).
        private (`bool`, defaults to `False`):
            Create the repository as private (an existing repository keeps its visibility).
        revision (`str`, *optional*):
            Branch to commit to, created from `main` when missing; defaults to `main`.
        commit_message (`str`, *optional*):
            Summary of the commit.
        token (`str`, *optional*):
            Hub token; found the way `huggingface_hub` finds it (`HF_TOKEN`, `hf auth login`) when omitted.
        eval_results (`dict`, *optional*):
            Evaluation results for the card (e.g. the JSON `hf-embfuse eval --out` writes).
        create_pr (`bool`, defaults to `False`):
            Open a pull request instead of committing to the branch.
        base_model_id (`str`, *optional*):
            Hub id of the base model for the card's `base_model`, when the config only knows a local path.

    Returns:
        `CommitInfo` of the new commit, or `None` when the repository already held exactly these files.

    Raises:
        `ValueError`: invalid `repo_id`, or not a fused model / checkpoint folder (before any network call).
        `PublishError` (an `OSError`): the Hub refused or could not be reached; nothing was committed.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"Invalid repository name {repo_id!r}: {error}") from None
    if create_pr and revision not in (None, "main"):
        raise ValueError(
            "`create_pr=True` opens a pull request against `main`; do not pass `revision` with it."
        )
    with _staged(model_or_folder, tokenizer) as (files, folder, config):

        def card_for(full_repo_id: str) -> bytes:
            return _card(folder, config, files, full_repo_id, eval_results, base_model_id).encode()

        return _commit(
            repo_id,
            [CommitOperationAdd(path, str(local)) for path, local in sorted(files.items())],
            card_for,
            private=private,
            revision=revision or "main",
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            token=token,
            create_pr=create_pr,
        )


def check_checkpoint_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Check that `folder` is a fused checkpoint that loads with `trust_remote_code`; return its config dict.

    Raises:
        `FileNotFoundError` or `ValueError`, naming what is missing and how to fix it.
    """
    config = read_checkpoint_config(folder)
    missing = [name for name in CODE_FILES if not (Path(folder) / name).is_file()]
    if missing or not config.get("auto_map"):
        raise ValueError(
            f"{str(folder)!r} lacks {', '.join(missing) or 'an auto_map in config.json'}, so it would not load with "
            "trust_remote_code; save the model again with `import hf_embfuse` done first."
        )
    return config


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `push` subcommand to the `hf-embfuse` parser."""
    command = subparsers.add_parser(
        "push",
        help="publish a fused checkpoint folder with its model card to the Hugging Face Hub",
        description=(
            "Upload a checkpoint folder (weights, config, code files, tokenizer, report, mixing-weights plot) and a "
            "generated model card to a Hub repository in one commit. Prints the commit URL, or 'no changes'."
        ),
    )
    command.add_argument(
        "folder", help="checkpoint folder (written by `hf-embfuse build` or save_pretrained)"
    )
    command.add_argument("repo", help="repository id, `namespace/name`")
    command.add_argument("--private", action="store_true", help="create the repository as private")
    command.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created if missing)")
    command.add_argument("--message", metavar="MSG", help="commit message")
    command.add_argument(
        "--token", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)"
    )
    command.add_argument(
        "--eval-results",
        type=Path,
        metavar="FILE.json",
        help="evaluation results for the card (`hf-embfuse eval --out`)",
    )
    command.set_defaults(run=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    # Everything local is checked before the first request: folder, repository name, results file.
    check_checkpoint_folder(args.folder)
    eval_results = None
    if args.eval_results is not None:
        try:
            eval_results = json.loads(args.eval_results.read_text())
        except ValueError as error:
            raise ValueError(f"{str(args.eval_results)!r} is not valid JSON: {error}") from None
    commit = push_to_hub(
        args.folder,
        args.repo,
        private=args.private,
        revision=args.revision,
        commit_message=args.message,
        token=args.token,
        eval_results=eval_results,
    )
    print("no changes" if commit is None else commit.commit_url)
    return 0


# -- staging -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _staged(model_or_folder: Any, tokenizer: Any) -> Iterator[tuple[dict[str, Path], Path, dict[str, Any]]]:
    """Yield (path in repo -> local file, checkpoint folder, config) for everything to publish but the card."""
    with tempfile.TemporaryDirectory(prefix="embfuse-push-") as staging:
        staging = Path(staging)
        if isinstance(model_or_folder, (str, os.PathLike)):
            folder = Path(model_or_folder)
        else:
            _check_model(model_or_folder)
            folder = staging / "model"
            model_or_folder.save_pretrained(folder)
        config = check_checkpoint_folder(folder)
        files = {path.name: path for path in sorted(folder.iterdir()) if _published(path)}
        if tokenizer is not None:
            tokenizer.save_pretrained(staging / "tokenizer")
            files.update((path.name, path) for path in (staging / "tokenizer").iterdir() if _published(path))
        yield files, folder, config


def _check_model(model: Any) -> None:
    config = getattr(model, "config", None)
    if not hasattr(model, "save_pretrained") or getattr(config, "model_type", None) != "embfuse":
        raise ValueError(
            f"push_to_hub publishes fused models (model_type 'embfuse') or their checkpoint folders, got "
            f"{type(model).__name__}; for any other model use its own `push_to_hub`."
        )


def _published(path: Path) -> bool:
    return (
        path.is_file()
        and not path.name.startswith(".")
        and path.name != CARD_FILE
        and not _matches(path.name, _NOT_PUBLISHED)
    )


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch(name, pattern) for pattern in patterns)


def _card(
    folder: Path,
    config: dict[str, Any],
    files: dict[str, Path],
    repo_id: str,
    eval_results: Mapping[str, Any] | None,
    base_model_id: str | None,
) -> str:
    from .model_card import build_model_card

    config = dict(config)
    if config.get("mixing_weights") is None:
        config["mixing_weights"] = mean_mixing_weights(folder)
    card = build_model_card(
        config,
        repo_id=repo_id,
        eval_results=dict(eval_results) if eval_results else None,
        weights_plot=PLOT_FILE if PLOT_FILE in files else None,
        base_model_id=base_model_id,
    )
    return str(card)


# -- the Hub -------------------------------------------------------------------------------------------------


def _commit(
    repo_id: str,
    operations: list[CommitOperationAdd],
    card_for: Callable[[str], bytes],
    *,
    private: bool,
    revision: str,
    commit_message: str,
    token: str | None,
    create_pr: bool,
) -> CommitInfo | None:
    """Create the repository and branch if needed, then commit `operations` plus the card in one commit."""
    api = HfApi(token=token)
    step = "creating the repository"
    try:
        # The full id (a bare name lands in the token's namespace) is known only now; the card names it.
        repo_id = api.create_repo(repo_id, private=private or None, exist_ok=True).repo_id
        step = "checking the model card"
        card = card_for(repo_id)
        _validate_card(card)
        if revision != "main":
            step = f"creating the branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = "reading the repository"
        info = api.repo_info(repo_id, revision=revision)
        uploaded = {op.path_in_repo for op in operations} | {CARD_FILE}
        stale = [
            CommitOperationDelete(sibling.rfilename)
            for sibling in info.siblings or []
            if is_weights_file(sibling.rfilename) and sibling.rfilename not in uploaded
        ]
        step = "uploading and committing the files"
        commit = api.create_commit(
            repo_id,
            [*stale, *operations, CommitOperationAdd(CARD_FILE, card)],
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr or None,
            # Refuse to commit over a change pushed meanwhile, rather than silently mixing two pushes.
            parent_commit=info.sha,
        )
    except Exception as error:
        publish_error = _publish_error(error, repo_id, step, token)
        if publish_error is None:
            raise
        raise publish_error from error
    if commit.oid == info.sha and commit.pr_url is None:
        logger.info("No changes: %s@%s already holds these files.", repo_id, revision)
        return None
    logger.info("Committed %s", commit.commit_url)
    return commit


def _validate_card(content: bytes) -> None:
    from huggingface_hub import ModelCard

    try:
        ModelCard(content.decode()).validate()
    except ValueError as error:  # the Hub would refuse the commit: say so before uploading anything
        raise PublishError(f"The Hub rejects the generated model card's metadata: {error}") from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures: huggingface_hub 2.x uses httpx2 (1.x httpx), whose errors are not OSErrors."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(importlib.import_module(name).TransportError)
    return tuple(errors)


def _publish_error(error: BaseException, repo_id: str, step: str, token: str | None) -> PublishError | None:
    """A `PublishError` explaining `error` (or its cause: LFS failures arrive wrapped), or None if not a Hub error."""
    from huggingface_hub import constants

    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, (PublishError, HfHubHTTPError, *_transport_errors())):
        cause = cause.__cause__
    if cause is None:
        return None
    if isinstance(cause, PublishError):
        return cause
    unchanged = f"Nothing was committed to {repo_id}; run the same command again to retry."
    if not isinstance(cause, HfHubHTTPError):
        return PublishError(
            f"The connection to the Hub at {constants.ENDPOINT} failed while {step} ({type(cause).__name__}: "
            f"{cause}). Check the network connection and HF_ENDPOINT. {unchanged}"
        )
    status = cause.response.status_code if cause.response is not None else None
    detail = (cause.server_message or str(cause).splitlines()[0]).strip().rstrip(".")
    if status in (401, 403):
        found = token or get_token()
        why = "no Hugging Face token was found" if not found else "the Hub did not accept the token"
        return PublishError(
            f"Not allowed to write to {repo_id} while {step} (HTTP {status}): {why}. "
            f"Use a token with write access: {_LOGIN_HINT}. Server said: {detail}"
        )
    return PublishError(f"The Hub failed while {step} for {repo_id} (HTTP {status}): {detail}. {unchanged}")


__all__ = ["PublishError", "add_command", "check_checkpoint_folder", "push_to_hub"]
