"""Keep a sentence-transformers base a sentence-transformers model: its modules travel with the fused folder.

A sentence-transformers folder is a transformers checkpoint (module 0, at the folder root) plus
`modules.json`, the configs of the root module (`sentence_bert_config.json`: max_seq_length, ...) and of
the model (`config_sentence_transformers.json`: prompts, similarity), and one folder per further module
(`1_Pooling/`, `2_Dense/`, ...). The fused checkpoint replaces module 0 only, so everything else is
copied as it is; `modules.json` is rewritten so that the transformer module points at the folder root,
where the fused (or baked) transformer is. Nothing here imports sentence-transformers.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
# Configs of the root (transformer) module and of the whole model.
ROOT_FILES = ("sentence_bert_config.json", "config_sentence_transformers.json")


@dataclass(frozen=True)
class SentenceTransformerFiles:
    """The files of a sentence-transformers model other than its transformer: relative path -> bytes."""

    files: dict[str, bytes]

    def write(self, folder: str | os.PathLike) -> None:
        """Write the files into `folder` (the fused or baked checkpoint folder)."""
        folder = Path(folder)
        for name, data in self.files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def read_sentence_transformers_files(
    base: str | os.PathLike, revision: str | None = None
) -> SentenceTransformerFiles | None:
    """The sentence-transformers files of `base` (a folder or a Hub id), or `None` when it is not one.

    The transformer module's entry in `modules.json` is rewritten to the folder root; a base whose
    transformer sits in a subfolder (the older `0_Transformer/` layout) has that folder's
    `sentence_bert_config.json` moved to the root. A model with other than one transformer module
    (a router of several encoders) is not kept: a warning says so.
    """
    folder = _local_folder(base, revision)
    if folder is None or not (folder / MODULES_FILE).is_file():
        return None
    modules = _read_modules(folder / MODULES_FILE)
    transformers = [m for m in modules if _is_transformer(m)]
    if len(transformers) != 1:
        logger.warning(
            "%s: %s lists %d transformer modules; the fused folder keeps only the transformer, not the "
            "sentence-transformers modules.",
            base,
            MODULES_FILE,
            len(transformers),
        )
        return None
    files: dict[str, bytes] = {}
    root_module = transformers[0]["path"]
    for name in ROOT_FILES:
        for candidate in (folder / root_module / name, folder / name):
            if candidate.is_file():
                files[name] = candidate.read_bytes()
                break
    for module in modules:
        if module is transformers[0]:
            module["path"] = ""
        elif module["path"]:
            files.update(_module_files(folder, module["path"]))
    files[MODULES_FILE] = (json.dumps(modules, indent=2) + "\n").encode()
    return SentenceTransformerFiles(files)


def copy_sentence_transformers_files(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy the sentence-transformers files of a fused folder into another one (`bake` uses this)."""
    found = read_sentence_transformers_files(Path(source))
    if found is not None:
        found.write(target)


def _local_folder(base: str | os.PathLike, revision: str | None) -> Path | None:
    """`base` as a local folder; for a Hub id, the cached (or downloaded) sentence-transformers files."""
    path = Path(os.fspath(base)).expanduser()
    if path.is_dir():
        return path
    if isinstance(base, Path) or path.exists():
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from .sources._checkpoint import looks_like_repo_id

    if not looks_like_repo_id(os.fspath(base)):
        return None
    try:
        # Module folders are small (configs, a Dense layer's weights); the transformer is fetched elsewhere.
        patterns = [MODULES_FILE, *ROOT_FILES, "[0-9]*_*/*"]
        return Path(snapshot_download(os.fspath(base), revision=revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        logger.warning(
            "Could not read the sentence-transformers files of %s (%s); the fused folder has none.",
            base,
            error.__class__.__name__,
        )
        return None


def module_folders(folder: str | os.PathLike) -> list[str]:
    """The module folders (`1_Pooling`, ...) that `modules.json` in `folder` names; none without one.

    Raises:
        ValueError: `modules.json` is not a valid list of modules.
    """
    path = Path(folder) / MODULES_FILE
    if not path.is_file():
        return []
    return [module["path"].strip("/") for module in _read_modules(path) if module["path"].strip("/")]


def _read_modules(path: Path) -> list[dict]:
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}).") from None
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) and isinstance(m.get("path", ""), str)
        for m in modules
    ):
        raise ValueError(f"{str(path)!r} must be a list of modules, each with a 'type' and a 'path'.")
    for module in modules:
        module.setdefault("path", "")
        relative = PurePosixPath(module["path"])
        # The paths name folders inside the model: never copy from outside it.
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{str(path)!r}: module path {module['path']!r} leaves the model folder.")
    return modules


def _is_transformer(module: dict) -> bool:
    return module["type"].rsplit(".", 1)[-1] == "Transformer"


def _module_files(folder: Path, relative: str) -> dict[str, bytes]:
    module_folder = folder / relative
    if not module_folder.is_dir():
        return {}  # modules without settings (Normalize) may have no folder
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(module_folder.rglob("*"))
        if path.is_file()
    }


__all__ = [
    "SentenceTransformerFiles",
    "copy_sentence_transformers_files",
    "module_folders",
    "read_sentence_transformers_files",
]
