"""Read the input-embedding table (`token_embd.weight`) and tokenizer of a GGUF file."""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ._gguf_file import GGUFHeader, ggml_type_name, read_gguf_header, read_tensor_float32
from ._gguf_tokenizer import load_gguf_tokenizer
from .errors import SourceError
from .table import SourceTable

logger = logging.getLogger(__name__)

EMBEDDING_TENSOR = "token_embd.weight"


def read_gguf_source(path: str | os.PathLike, *, tokenizer: Any = None) -> SourceTable:
    """Read only the input-embedding table of a GGUF file, dequantised to float32, and its tokenizer.

    The tokenizer is converted by transformers the first time and cached as a plain tokenizer
    folder under `cache_root()/gguf-tokenizers` (set `HF_EMBFUSE_CACHE` to move it), keyed by the
    file's name, size and modification time.

    Args:
        path: the `.gguf` file.
        tokenizer: its tokenizer when the caller already holds it (not loaded a second time).

    Returns:
        A `SourceTable` of kind `"gguf"`; `metadata` records the GGUF's `general.name`,
        architecture and the table's quantisation type.

    Raises:
        FileNotFoundError: `path` does not exist.
        SourceError: not a GGUF file, no `token_embd.weight`, or a tokenizer that cannot be built.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No such GGUF file: {os.fspath(path)!r}")
    header = read_gguf_header(path)
    info = header.tensors.get(EMBEDDING_TENSOR)
    if info is None:
        close = difflib.get_close_matches(EMBEDDING_TENSOR, list(header.tensors), n=3)
        raise SourceError(
            f"{path} has no {EMBEDDING_TENSOR!r} tensor"
            + (f" (closest: {close})" if close else "")
            + "; it is not a language model GGUF, or was exported without its embeddings."
        )
    weight = read_tensor_float32(path, info)
    weight, transposed = _orient(weight, header, path)
    cached = True
    if tokenizer is None:
        tokenizer, cached = load_gguf_tokenizer(path)
    if len(tokenizer) > weight.shape[0]:
        logger.warning(
            "%s: the tokenizer has %d tokens but the table only %d rows; ids past the table have no vector.",
            path.name,
            len(tokenizer),
            weight.shape[0],
        )
    arch = header.metadata.get("general.architecture")
    metadata = {
        "format": "gguf",
        "file": path.name,
        "tensor_key": EMBEDDING_TENSOR,
        "quantization": ggml_type_name(info.ggml_type),
        "general.name": header.metadata.get("general.name"),
        "architecture": arch,
        "transposed": transposed,
        "tokenizer_class": type(tokenizer).__name__,
        "tokenizer_size": len(tokenizer),
        "tokenizer_cached": cached,
    }
    return SourceTable(
        name=os.fspath(path), kind="gguf", weight=weight, tokenizer=tokenizer, metadata=metadata
    )


def _orient(weight: torch.Tensor, header: GGUFHeader, path: Path) -> tuple[torch.Tensor, bool]:
    """Return the table as (vocab, width): some converters store it as (width, vocab)."""
    arch = header.metadata.get("general.architecture")
    n_vocab = header.array_length("tokenizer.ggml.tokens") or header.metadata.get(f"{arch}.vocab_size")
    width = header.metadata.get(f"{arch}.embedding_length")
    rows, cols = weight.shape
    if rows == n_vocab or (n_vocab is None and cols == width):
        return weight, False
    if cols == n_vocab or (n_vocab is None and rows == width):
        logger.info("%s stores %s as (width, vocab); transposing.", path.name, EMBEDDING_TENSOR)
        return weight.t().contiguous(), True
    logger.warning(
        "%s: %s has shape %s but the vocabulary has %s tokens and the width is %s; keeping it as read.",
        path.name,
        EMBEDDING_TENSOR,
        (rows, cols),
        n_vocab,
        width,
    )
    return weight, False
