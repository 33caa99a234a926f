"""Publish a fused checkpoint to the Hugging Face Hub: weights, config, code, tokenizer, report and card in one commit.

`model.push_to_hub(repo)` (the `PreTrainedModel` method) works too and ships the two code files, but it cannot
write the model card: the modeling file travels inside every checkpoint and must not import `hf_embfuse`.
`hf_embfuse.push_to_hub(model, repo)` and `hf-embfuse push DIR REPO` add the card, the alignment report and the
mixing-weights plot, and commit everything at once with `HfApi.upload_folder`, so a failed upload never leaves a
half-updated repository.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from .checkpoint_folder import WEIGHT_PATTERNS, mean_mixing_weights, read_checkpoint_config
from .sentence_transformers import module_folders

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
# Trainer state that can sit beside a checkpoint in an output folder (and hidden files): not part of the model.
NOT_PUBLISHED = (
    "training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json",
    ".*", "*/.*",
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
    `embfuse_report.json`, `embfuse_eval.json` and `mixing_weights.png` when present, the sentence-transformers
    modules when present, and a `README.md` generated from the config (a `README.md` already in the folder is
    replaced). Weight files of an earlier push that this one does not contain (e.g. old shards) are deleted in
    the same commit. Unchanged files are not uploaded again.

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
            Evaluation results for the card (the JSON `hf-embfuse eval --out` writes); by default the folder's
            `embfuse_eval.json`, if any.
        create_pr (`bool`, defaults to `False`):
            Open a pull request instead of committing to the branch.
        base_model_id (`str`, *optional*):
            Hub id of the base model for the card's `base_model`, when the config does not name one.

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
    api = HfApi(token=token)
    step = "creating the repository"
    with _staged(model_or_folder, tokenizer) as (staging, folder, config):
        if config.get("mixing_weights") is None:
            config = {**config, "mixing_weights": mean_mixing_weights(folder)}
        _card(
            folder, config, repo_id, eval_results, base_model_id
        )  # local inputs are checked before any request
        try:
            # The full id (a bare name lands in the token's namespace) is known only now; the card names it.
            repo_id = api.create_repo(repo_id, private=private or None, exist_ok=True).repo_id
            card = _card(folder, config, repo_id, eval_results, base_model_id)
            (staging / CARD_FILE).write_text(card, encoding="utf-8")
            if revision not in (None, "main"):
                step = f"creating the branch {revision!r}"
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            step = "reading the repository"
            parent = api.repo_info(repo_id, revision=revision or "main").sha
            step = "uploading and committing the files"
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                revision=revision,
                commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
                create_pr=create_pr or None,
                allow_patterns=_publish_patterns(staging),
                ignore_patterns=list(NOT_PUBLISHED),
                # Weights of an earlier push that this one lacks (old shards) go in the same commit.
                delete_patterns=list(WEIGHT_PATTERNS),
                # Refuse to commit over a change pushed meanwhile, rather than silently mixing two pushes.
                parent_commit=parent,
            )
        except Exception as error:
            publish_error = _publish_error(error, repo_id, step, token)
            if publish_error is None:
                raise
            raise publish_error from error
    if commit.oid == parent and commit.pr_url is None:
        logger.info("No changes: %s@%s already holds these files.", repo_id, revision or "main")
        return None
    logger.info("Committed %s", commit.commit_url)
    return commit


def check_checkpoint_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Check that `folder` is an intact fused checkpoint that loads with `trust_remote_code`; return its config.

    The shared checkpoint-folder check (weights' headers, code files and `auto_map` included); the tokenizer is
    uploaded, not loaded, so a missing one is fine and a damaged one is refused.

    Raises:
        `FileNotFoundError` or `ValueError`, naming what is missing or damaged and how to fix it.
    """
    return read_checkpoint_config(folder, tokenizer="optional")


# -- staging -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _staged(model_or_folder: Any, tokenizer: Any) -> Iterator[tuple[Path, Path, dict[str, Any]]]:
    """Yield (staging folder, checkpoint folder, config): the staging folder links to the checkpoint's files, with
    the given tokenizer's files in place of the folder's, and receives the card; the checkpoint is never written."""
    with tempfile.TemporaryDirectory(prefix="embfuse-push-") as temporary:
        temporary = Path(temporary)
        if isinstance(model_or_folder, (str, os.PathLike)):
            folder = Path(model_or_folder)
        else:
            _check_model(model_or_folder)
            folder = temporary / "model"
            model_or_folder.save_pretrained(folder)
        config = check_checkpoint_folder(folder)
        staging = temporary / "upload"
        _link_tree(folder, staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(temporary / "tokenizer")
            _link_tree(temporary / "tokenizer", staging)
        (staging / CARD_FILE).unlink(missing_ok=True)  # the card is generated for the repository
        yield staging, folder, config


def _link_tree(source: Path, target: Path) -> None:
    """Mirror `source`'s files into `target` as links (copies where links are not allowed), replacing files."""
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        link = target / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        try:
            link.symlink_to(path.resolve())
        except OSError:  # e.g. Windows without the symlink privilege
            shutil.copy2(path, link)


def _publish_patterns(staging: Path) -> list[str]:
    """What a push takes from a checkpoint folder: its own files and its sentence-transformers module folders
    (`1_Pooling/`, ...), not other folders an output folder may hold (`checkpoint-500/`, `runs/`)."""
    patterns = [path.name for path in staging.iterdir() if path.is_file()]
    with contextlib.suppress(OSError, ValueError):  # a damaged modules.json publishes no module folders
        patterns += [f"{name}/*" for name in module_folders(staging)]
    return patterns


def _check_model(model: Any) -> None:
    config = getattr(model, "config", None)
    if not hasattr(model, "save_pretrained") or getattr(config, "model_type", None) != "embfuse":
        raise ValueError(
            f"push_to_hub publishes fused models (model_type 'embfuse') or their checkpoint folders, got "
            f"{type(model).__name__}; for any other model use its own `push_to_hub`."
        )


def _card(
    folder: Path,
    config: dict[str, Any],
    repo_id: str,
    eval_results: Mapping[str, Any] | None,
    base_model_id: str | None,
) -> str:
    from .model_card import build_model_card

    card = build_model_card(
        config,
        folder=folder,
        repo_id=repo_id,
        eval_results=dict(eval_results) if eval_results else None,
        base_model_id=base_model_id,
    )
    return str(card)


# -- errors --------------------------------------------------------------------------------------------------


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

    if isinstance(error, ValueError) and str(error).startswith("Invalid metadata in README.md"):
        # upload_folder has the Hub check the card before it hashes or uploads anything.
        detail = " ".join(str(error).splitlines()[1:]).strip()
        return PublishError(f"The Hub rejects the generated model card's metadata: {detail}")
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


__all__ = ["NOT_PUBLISHED", "PublishError", "check_checkpoint_folder", "push_to_hub"]
