"""Find a checkpoint (local folder or Hub repo) and which of its files holds each tensor.

Only small files are fetched up front (config, tokenizer, index); a weights file is opened or
downloaded only once we know it holds the tensor we want.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._tensor_io import load_pickle_state_dict, read_safetensors_header
from .errors import SourceError

logger = logging.getLogger(__name__)

# Everything a reader needs except the weights themselves.
HUB_METADATA_PATTERNS = [
    "config.json",
    "*.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "vocab*.txt",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "chat_template*",
]
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# Files a training run leaves next to the weights that are not weights.
_NOT_WEIGHTS = re.compile(r"^(training_args|optimizer|scheduler|rng_state.*|scaler|adapter_model)\.")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass
class ResolvedCheckpoint:
    """A checkpoint located on disk: its folder, and how to get any of its files.

    Attributes:
        name: what the user gave.
        folder: a local folder with at least the config/tokenizer/index files.
        repo_id: the Hub repo when the source came from the Hub, else `None`.
        revision: the resolved commit hash for Hub sources.
        only_file: set when the user pointed at one weights file rather than a folder.
    """

    name: str
    folder: Path
    repo_id: str | None = None
    revision: str | None = None
    only_file: str | None = None

    def fetch(self, filename: str) -> Path:
        """The local path of `filename`, downloading just that file for Hub sources."""
        if self.repo_id is None:
            return self.folder / filename
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.repo_id, filename, revision=self.revision))


@dataclass
class WeightFiles:
    """Which file of a checkpoint holds each tensor.

    Attributes:
        fmt: `"safetensors"` or `"pickle"`.
        weight_map: tensor key -> file name relative to the checkpoint folder.
        loaded: pickle state dicts already loaded (mmap-backed) while listing keys, by file name.
    """

    fmt: str
    weight_map: dict[str, str]
    loaded: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and "--" not in name and ".." not in name and not name.endswith(".")


def require_path_or_repo_id(name_or_path: str | os.PathLike) -> None:
    """The one error for a model or source that is neither an existing local path nor possibly a Hub repo id
    (a `Path` is never a repo id).

    Raises:
        FileNotFoundError: naming the input.
    """
    name = os.fspath(name_or_path)
    if Path(name).expanduser().exists():
        return
    if isinstance(name_or_path, Path) or not looks_like_repo_id(name):
        raise FileNotFoundError(f"No such file or folder: {name!r} (and it is not a Hub repo id either).")


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None) -> ResolvedCheckpoint:
    """Locate a checkpoint given as a local folder, a local weights file, or a Hub repo id.

    Raises:
        FileNotFoundError: the path does not exist and is not a Hub repo id either.
        SourceError: the Hub repo cannot be resolved (offline without a cached copy, no such repo...).
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedCheckpoint(name=name, folder=path)
    if path.is_file():
        if not path.name.endswith(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES):
            raise SourceError(
                f"{name!r} is a file but not a checkpoint (.safetensors/.bin/.pt); "
                "use read_source() for GGUF and static-vector files."
            )
        return ResolvedCheckpoint(name=name, folder=path.parent, only_file=path.name)
    require_path_or_repo_id(name_or_path)
    return _resolve_hub(name, revision)


def _resolve_hub(repo_id: str, revision: str | None) -> ResolvedCheckpoint:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_METADATA_PATTERNS)
    except LocalEntryNotFoundError as e:
        raise SourceError(
            f"{repo_id!r} is not a local path, and no cached Hub copy was found while the Hub is unreachable or "
            f"HF_HUB_OFFLINE=1 ({e.__class__.__name__}). Download it once with network access, or pass a local folder."
        ) from None
    except RevisionNotFoundError:
        raise SourceError(
            f"Revision {revision!r} does not exist in the Hub repo {repo_id!r}; pass an existing branch, tag or commit."
        ) from None
    except RepositoryNotFoundError:
        raise SourceError(
            f"{repo_id!r} is neither a local path nor a Hub repo you can access (if it is private or gated, log in "
            "with `hf auth login`)."
        ) from None
    folder = Path(folder)
    # Snapshot folders are named by the commit they hold: that is the revision to record.
    return ResolvedCheckpoint(name=repo_id, folder=folder, repo_id=repo_id, revision=folder.name)


def find_weight_files(ckpt: ResolvedCheckpoint, *, allow_pickle: bool) -> WeightFiles:
    """List the checkpoint's tensors and the file holding each, reading only headers and index files.

    Raises:
        SourceError: no weights at all, or only pickle weights while `allow_pickle` is False.
    """
    if ckpt.only_file is not None:
        return _from_files(ckpt, [ckpt.only_file], allow_pickle)
    folder = ckpt.folder
    for index_suffix, fmt in ((".safetensors.index.json", "safetensors"), (".bin.index.json", "pickle")):
        indexes = sorted(p.name for p in folder.glob(f"*{index_suffix}"))
        if indexes:
            preferred = [n for n in indexes if n.startswith(("model.", "pytorch_model."))] or indexes
            if fmt == "pickle" and not allow_pickle:
                _refuse_pickle(ckpt, preferred[0])
            return _from_index(folder / preferred[0], fmt)
    if ckpt.repo_id is not None:
        return _hub_single_file(ckpt, allow_pickle)
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not _NOT_WEIGHTS.match(p.name))
    safetensors = [n for n in files if n.endswith(SAFETENSORS_SUFFIXES)]
    pickles = [n for n in files if n.endswith(PICKLE_SUFFIXES)]
    if "model.safetensors" in safetensors:
        safetensors = ["model.safetensors"]
    if "pytorch_model.bin" in pickles:
        pickles = ["pytorch_model.bin"]
    if safetensors:
        return _from_files(ckpt, safetensors, allow_pickle)
    if pickles:
        return _from_files(ckpt, pickles, allow_pickle)
    raise SourceError(
        f"No model weights in {ckpt.name!r} (looked for *.safetensors, *.safetensors.index.json, pytorch_model.bin). "
        "Point at a folder that holds the checkpoint's weights."
    )


def _from_index(index_path: Path, fmt: str) -> WeightFiles:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceError(
            f"Index file {index_path} is unreadable ({e!r}); re-download the checkpoint."
        ) from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _inside_folder(v) for k, v in weight_map.items()
    ):
        raise SourceError(
            f"Index file {index_path}: `weight_map` must map tensor names to file names in the checkpoint "
            "folder; the file is corrupt. Re-download the checkpoint."
        )
    return WeightFiles(fmt=fmt, weight_map=dict(weight_map))


def _inside_folder(name: str) -> bool:
    """A relative file name that stays inside the checkpoint folder (no absolute path, no `..`)."""
    parts = Path(name.replace("\\", "/")).parts
    return bool(parts) and not os.path.isabs(name) and ".." not in parts


def _from_files(ckpt: ResolvedCheckpoint, names: list[str], allow_pickle: bool) -> WeightFiles:
    if names[0].endswith(SAFETENSORS_SUFFIXES):
        weight_map: dict[str, str] = {}
        for name in names:
            header, _ = read_safetensors_header(ckpt.fetch(name))
            for key in header:
                weight_map.setdefault(key, name)
        return WeightFiles(fmt="safetensors", weight_map=weight_map)
    if not allow_pickle:
        _refuse_pickle(ckpt, names[0])
    files = WeightFiles(fmt="pickle", weight_map={})
    for name in names:
        state = load_pickle_state_dict(ckpt.fetch(name))
        files.loaded[name] = state
        for key in state:
            files.weight_map.setdefault(key, name)
    return files


def _hub_single_file(ckpt: ResolvedCheckpoint, allow_pickle: bool) -> WeightFiles:
    from huggingface_hub.errors import EntryNotFoundError

    candidates = ["model.safetensors"] + (["pytorch_model.bin"] if allow_pickle else [])
    for name in candidates:
        try:
            ckpt.fetch(name)
        except EntryNotFoundError:
            continue
        return _from_files(ckpt, [name], allow_pickle)
    hint = "" if allow_pickle else " If it only has pytorch_model.bin, pass allow_pickle=True."
    raise SourceError(
        f"No weights found for Hub repo {ckpt.repo_id!r} at {ckpt.revision} (looked for an index file and "
        f"{', '.join(candidates)}; offline mode only sees files already cached).{hint}"
    )


def _refuse_pickle(ckpt: ResolvedCheckpoint, filename: str) -> None:
    raise SourceError(
        f"{ckpt.name!r} only has pickle weights ({filename}). Loading them unpickles data; pass allow_pickle=True "
        "to read them anyway (with torch.load(weights_only=True)), or convert the checkpoint to safetensors."
    )
