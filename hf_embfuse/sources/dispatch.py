"""Pick the right reader for a source spec (a path or a Hub id)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._checkpoint import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, require_path_or_repo_id
from .errors import SourceError
from .gguf import read_gguf_source
from .hf import read_hf_source
from .table import SourceTable
from .vectors import read_vectors_source

SOURCE_KINDS = ("hf", "gguf", "vectors")
_VECTOR_SUFFIXES = (".txt", ".vec", ".w2v", ".npy", ".gz")


def read_source(
    spec: str | os.PathLike,
    *,
    kind: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    vocab_path: str | os.PathLike | None = None,
    tokenizer: Any = None,
) -> SourceTable:
    """Read a source's input-embedding table with the reader its path calls for.

    A `.gguf` file (or a folder holding one GGUF and no config) goes to `read_gguf_source`; static
    vector files (`.txt`, `.vec`, `.npy`, a `.bin` with no `config.json` beside it) and folders
    of `.npy` + vocabulary to `read_vectors_source`; a checkpoint folder or a Hub repo id to
    `read_hf_source`.

    Args:
        spec: local path or Hub repo id.
        kind: force a reader: one of `SOURCE_KINDS`.
        revision: Hub revision (HF sources only).
        allow_pickle: allow `.bin`/`.pt` checkpoint weights (HF sources only).
        trust_remote_code: allow the checkpoint's custom tokenizer/model code (HF sources only).
        vocab_path: vocabulary of a `.npy` vectors file.
        tokenizer: the source's tokenizer when the caller already holds it (model sources).

    Raises:
        FileNotFoundError: a local path that does not exist and is not a Hub repo id.
        SourceError: the spec matches no reader, or the chosen reader rejects the input.
    """
    kind = kind or detect_source_kind(spec)
    if kind == "hf":
        return read_hf_source(
            spec,
            revision,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            tokenizer=tokenizer,
        )
    if kind == "gguf":
        path = Path(spec).expanduser()
        return read_gguf_source(_single_gguf(path) if path.is_dir() else path, tokenizer=tokenizer)
    if kind == "vectors":
        return read_vectors_source(spec, vocab_path=vocab_path)
    raise ValueError(f"Unknown source kind {kind!r}; use one of {SOURCE_KINDS}.")


def read_source_tokenizer(
    spec: str | os.PathLike,
    *,
    kind: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """A source's tokenizer alone, without its table (`None` for static word vectors, which have none).

    What a build needs first when a source's tokenizer is the target vocabulary (`tokenizer: source:N`).
    """
    kind = kind or detect_source_kind(spec)
    if kind == "hf":
        from ._checkpoint import resolve_checkpoint
        from .hf import load_tokenizer

        return load_tokenizer(resolve_checkpoint(spec, revision), trust_remote_code=trust_remote_code)
    if kind == "gguf":
        from ._gguf_tokenizer import load_gguf_tokenizer

        path = Path(spec).expanduser()
        return load_gguf_tokenizer(_single_gguf(path) if path.is_dir() else path)[0]
    return None


def detect_source_kind(spec: str | os.PathLike) -> str:
    """`"hf"`, `"gguf"` or `"vectors"` for `spec`, judging by its path (no file is parsed)."""
    name = os.fspath(spec)
    path = Path(name).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".gguf":
            return "gguf"
        has_config = (path.parent / "config.json").is_file()
        if suffix in SAFETENSORS_SUFFIXES or (suffix in PICKLE_SUFFIXES and has_config):
            return "hf"
        if suffix in _VECTOR_SUFFIXES or suffix == ".bin":
            return "vectors"
        raise SourceError(
            f"Cannot tell what kind of source {name!r} is from its extension; pass kind= one of {SOURCE_KINDS}."
        )
    if path.is_dir():
        files = [p.name for p in path.iterdir() if p.is_file()]
        if "config.json" in files or any(
            f.endswith(SAFETENSORS_SUFFIXES) or f.startswith("pytorch_model") for f in files
        ):
            return "hf"
        if any(f.endswith(".gguf") for f in files):
            return "gguf"
        if any(f.endswith(".npy") for f in files):
            return "vectors"
        raise SourceError(
            f"{name!r} holds no model weights (*.safetensors, pytorch_model.bin), GGUF or .npy vectors; "
            "point at the folder or file that holds the embeddings."
        )
    require_path_or_repo_id(spec)
    return "hf"


def _single_gguf(folder: Path) -> Path:
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise SourceError(f"{folder} holds {len(found)} .gguf files; point at one of them.")
    return found[0]
