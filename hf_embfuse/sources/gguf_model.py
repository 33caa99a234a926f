"""A GGUF file as a *base* model: dequantised by transformers once, then cached as a plain HF folder.

transformers reads a GGUF checkpoint by dequantising every tensor in Python (SmolLM2-135M: ~25 s);
the same model saved as safetensors loads in under a second, so the first load writes that folder
under `cache_root()/gguf-models`, keyed by the file's name, size and modification time like the
tokenizer cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ._gguf_tokenizer import load_gguf_tokenizer, tokenizer_cache_dir
from .cache import cache_root

logger = logging.getLogger(__name__)


def is_gguf_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a local `.gguf` file."""
    path = Path(os.fspath(path)).expanduser()
    return path.is_file() and path.suffix.lower() == ".gguf"


def load_gguf_base(path: str | os.PathLike, auto_class: Any, **kwargs: Any) -> tuple[Any, Any]:
    """The model (of `auto_class`) and tokenizer stored in a GGUF file, from the cache after the first time."""
    path = Path(os.fspath(path)).expanduser()
    tokenizer, _ = load_gguf_tokenizer(path)
    folder = cache_root() / "gguf-models" / tokenizer_cache_dir(path).name
    if (folder / "config.json").is_file():
        try:
            return _plain(auto_class.from_pretrained(str(folder), **kwargs)), tokenizer
        except Exception as error:  # a damaged cache entry is rebuilt, never fatal
            logger.warning(
                "Cached model %s is unreadable (%s); converting %s again.", folder, error, path.name
            )
            shutil.rmtree(folder, ignore_errors=True)
    logger.info("Dequantising %s (done once, then cached in %s).", path.name, folder)
    model = _plain(auto_class.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs))
    _save_atomically(model, folder)
    return model, tokenizer


def gguf_base_folder(path: str | os.PathLike, auto_class: Any, **kwargs: Any) -> tuple[Path, Any]:
    """The plain cached folder of a GGUF model (dequantised and saved once) and its tokenizer.

    A build streams the body from this folder like from any checkpoint.
    """
    path = Path(os.fspath(path)).expanduser()
    tokenizer, _ = load_gguf_tokenizer(path)
    folder = cache_root() / "gguf-models" / tokenizer_cache_dir(path).name
    if not (folder / "config.json").is_file():
        load_gguf_base(path, auto_class, **kwargs)  # converts and caches it
    if not (folder / "config.json").is_file():
        raise OSError(f"Could not cache the dequantised {path.name} under {folder}; is the cache writable?")
    return folder, tokenizer


def forget_gguf_quantizer(model: Any) -> Any:
    """Mark a model read from a GGUF file (or from a folder saved after that) as the plain model it is.

    transformers dequantises GGUF weights to floats on load, yet keeps a GGUF quantizer and writes
    `quantization_config` into the saved config; the Trainer then refuses to train it ("purely
    quantized models"). The weights are ordinary tensors, so both are dropped, on every wrapped model.
    """
    for module in model.modules():
        config = getattr(module, "config", None)
        for each in (config, getattr(config, "base_config", None)):
            # Only a config's own attribute: an EmbFuse config forwards unknown names to its base config.
            quantization = vars(each).get("quantization_config") if each is not None else None
            method = getattr(quantization, "quant_method", None) or (quantization or {}).get("quant_method")
            if quantization is not None and str(getattr(method, "value", method)) == "gguf":
                delattr(each, "quantization_config")
        quantizer = getattr(module, "hf_quantizer", None)
        if quantizer is not None and type(quantizer).__name__ == "GgufHfQuantizer":
            module.hf_quantizer = quantizer = None
        # What transformers' own `remove_quantization_config` undoes, for a quantizer it cannot remove (or
        # one already dropped, leaving the flag behind).
        if quantizer is None and getattr(module, "is_quantized", False) is True:
            module.is_quantized = False
            if config is not None and getattr(config, "_is_quantized", False):
                config._is_quantized = False
    return model


def _plain(model: Any) -> Any:
    """The dequantised model as an ordinary float one, named by nothing (the cache folder is no name to keep)."""
    forget_gguf_quantizer(model)
    model.name_or_path = ""
    return model


def _save_atomically(model: Any, folder: Path) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as error:
        logger.warning("Not caching the dequantised model: cannot write to %s (%s).", folder.parent, error)
        return
    try:
        model.save_pretrained(str(tmp))
        os.rename(tmp, folder)
    except OSError as error:  # another process may have written the same entry first
        logger.debug("Model cache entry %s not written (%s).", folder, error)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
