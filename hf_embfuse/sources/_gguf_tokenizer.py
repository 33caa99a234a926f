"""The tokenizer stored in a GGUF file, converted once and then cached as an ordinary HF tokenizer folder.

Converting a GGUF vocabulary to a fast tokenizer takes transformers seconds to tens of seconds
(Gemma's 262,144 tokens ~30 s); loading the saved `tokenizer.json` takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import cache_root
from .errors import SourceError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def tokenizer_cache_dir(path: Path) -> Path:
    """The cache folder for this file's tokenizer, keyed by its name, size and modification time."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf-tokenizers" / f"{path.stem}-{key}"


def load_gguf_tokenizer(path: Path) -> tuple[PreTrainedTokenizerBase, bool]:
    """Load the tokenizer of a GGUF file, from the cache when it was converted before.

    Returns:
        The tokenizer, and whether it came from the cache.
    """
    from transformers import AutoTokenizer

    folder = tokenizer_cache_dir(path)
    if (folder / "tokenizer_config.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(folder)), True
        except Exception as e:  # a damaged cache entry is rebuilt, never fatal
            logger.warning(
                "Cached tokenizer %s is unreadable (%s); converting %s again.", folder, e, path.name
            )
            shutil.rmtree(folder, ignore_errors=True)
    logger.info("Converting the tokenizer stored in %s (done once, then cached in %s).", path.name, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise ImportError(
            f"Reading a GGUF tokenizer needs the gguf package: pip install 'hf-embfuse[gguf]' ({e})"
        ) from None
    except Exception as e:  # transformers raises assorted errors for unsupported GGUF vocabularies
        raise SourceError(
            f"Could not build a tokenizer from {path} ({type(e).__name__}: {e}). The GGUF needs tokenizer.ggml.* "
            "metadata of an architecture transformers supports; otherwise read the original HF checkpoint instead."
        ) from None
    _save_atomically(tokenizer, folder, path)
    return tokenizer, False


def _save_atomically(tokenizer: PreTrainedTokenizerBase, folder: Path, source: Path) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as e:
        logger.warning(
            "Not caching the tokenizer of %s: cannot write to %s (%s).", source.name, folder.parent, e
        )
        return
    try:
        tokenizer.save_pretrained(str(tmp))
        (tmp / "source.json").write_text(json.dumps({"file": str(source), "size": source.stat().st_size}))
        os.rename(tmp, folder)
    except OSError as e:
        # Another process may have written the same entry first; theirs is as good as ours.
        logger.debug("Tokenizer cache entry %s not written (%s).", folder, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
