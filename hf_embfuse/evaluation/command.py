"""The library side of `hf-embfuse eval` (its arguments are in `hf_embfuse.cli`): datasets, loading, JSON out."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import OutputExistsError


def load_datasets(wordsim_files: Sequence[str | os.PathLike], *, standard: bool = False) -> dict[str, Any]:
    """Word-similarity datasets by name: the standard three when `standard`, then each file.

    Raises:
        ValueError: a malformed file, or two datasets of one name.
        FileNotFoundError: a missing file.
    """
    from . import load_standard_wordsim, load_wordsim

    datasets = dict(load_standard_wordsim()) if standard else {}
    for path in wordsim_files:
        dataset = load_wordsim(path)
        if dataset.name in datasets:
            raise ValueError(f"two datasets are named {dataset.name!r} ({path}); rename one of the files")
        datasets[dataset.name] = dataset
    return datasets


def load_checkpoint(folder: Path) -> tuple[Any, Any]:
    """Load model and tokenizer from `folder` without remote code (importing hf_embfuse registers EmbFuse).

    The folder is checked first (`read_checkpoint_config`: config, weights' headers, code files of an
    EmbFuse checkpoint, tokenizer files), so a damaged one is one error naming the file.

    Raises:
        FileNotFoundError / ValueError: the folder is no intact checkpoint with a tokenizer.
    """
    import hf_embfuse  # noqa: F401  (registers the embfuse model type with the Auto classes)

    from ..checkpoint_folder import read_checkpoint_config

    read_checkpoint_config(folder, any_model=True, tokenizer="required")
    from transformers import AutoModel, AutoTokenizer

    try:  # the tokenizer first: it is quick, and a damaged one should fail before the model loads
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # tokenizers raises its own exception types for a damaged vocabulary
        reason = (str(error).splitlines() or [""])[0]
        raise ValueError(
            f"Could not load the tokenizer of {str(folder)!r} ({type(error).__name__}: {reason}); save it again "
            "with `tokenizer.save_pretrained(folder)`."
        ) from None
    model = AutoModel.from_pretrained(folder, trust_remote_code=False).eval()
    return model, tokenizer


def evaluate_checkpoint(model: Any, tokenizer: Any, datasets: dict, *, word_prefix: str = "") -> Any:
    """`evaluate_fused` for EmbFuse models; a single-table comparison for any other model."""
    from ..modeling_embfuse import MultiSourceEmbedding
    from . import compare_tables
    from .fused import display_name, evaluate_fused

    if isinstance(model.get_input_embeddings(), MultiSourceEmbedding):
        return evaluate_fused(model, tokenizer, datasets, word_prefix=word_prefix)
    name = display_name(getattr(model, "name_or_path", None), type(model).__name__)
    table = model.get_input_embeddings().weight.detach()
    return compare_tables(
        {f"{name} (input embedding)": (table, tokenizer)}, datasets, word_prefix=word_prefix
    )


def write_json_atomic(path: Path, data: Any, *, overwrite: bool = False) -> None:
    """Write JSON to a temporary file beside `path` and rename it into place: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    temp: Path | None = None
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.tmp-", delete=False
        ) as handle:
            temp = Path(handle.name)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
            return
        try:
            # A hard link fails if `path` appeared meanwhile, so an existing file is never clobbered.
            os.link(temp, path)
        except FileExistsError:
            raise OutputExistsError(path, kind="file") from None
        except OSError:  # a filesystem without hard links
            os.replace(temp, path)
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)
