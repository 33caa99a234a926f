"""Read the input-embedding table (and tokenizer) of a Hugging Face checkpoint, nothing else."""

from __future__ import annotations

import difflib
import json
import logging
import os
from typing import TYPE_CHECKING

from ._checkpoint import ResolvedCheckpoint, WeightFiles, find_weight_files, resolve_checkpoint
from ._keys import ArchitectureHint, architecture_hint, match_key, well_known_key
from ._tensor_io import load_pickle_state_dict, read_safetensors_tensor, to_float32_copy
from .errors import SourceError
from .table import SourceTable

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Any of these means the folder carries a tokenizer (HF fast/slow, SentencePiece, tiktoken).
TOKENIZER_FILE_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "vocab.*", "*.model", "*.tiktoken")


def read_hf_source(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    *,
    allow_pickle: bool = False,
    tensor_key: str | None = None,
    trust_remote_code: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> SourceTable:
    """Read only the input-embedding table of a Hugging Face checkpoint, plus its tokenizer.

    The table's key is found by building the architecture on the meta device and asking it
    (`get_input_embeddings()`), with well-known names as the fallback. Only the file holding that
    tensor is opened (or downloaded, for Hub sources), and only that tensor's bytes are read.

    Args:
        name_or_path: a local checkpoint folder, one weights file in it, or a Hub repo id.
        revision: branch, tag or commit for Hub sources; the commit it resolves to is recorded.
        allow_pickle: also read `.bin`/`.pt` weights (via `torch.load(weights_only=True)`).
        tensor_key: the checkpoint key of the table, when automatic location is not wanted.
        trust_remote_code: allow the checkpoint's own Python code to build its tokenizer/architecture.
        tokenizer: its tokenizer when the caller already holds it (not loaded a second time).
            Off by default, and then passed to transformers as an explicit `False`: custom code is
            neither run nor prompted for.

    Returns:
        A `SourceTable` of kind `"hf"` with a float32 `(V, d)` weight. Some architectures scale the
        table in their forward pass (e.g. Gemma's `*ScaledWordEmbedding`); `metadata["embedding_class"]`
        says which module held it.

    Raises:
        FileNotFoundError: a local path that does not exist (and is not a Hub repo id).
        SourceError: no weights, no embedding tensor, pickle weights without `allow_pickle`, a
            tokenizer that cannot be loaded or needs `trust_remote_code`.
    """
    ckpt = resolve_checkpoint(name_or_path, revision)
    files = find_weight_files(ckpt, allow_pickle=allow_pickle)
    config = _load_config(ckpt, trust_remote_code)
    hint = architecture_hint(config, trust_remote_code=trust_remote_code) if config is not None else None
    key, located_by = _locate(ckpt, files, hint, tensor_key)
    filename = files.weight_map[key]
    if ckpt.repo_id is None and filename not in files.loaded and not (ckpt.folder / filename).is_file():
        raise SourceError(
            f"{ckpt.name!r}: its index file puts {key!r} in {filename}, which is missing from {ckpt.folder}; "
            "the checkpoint is incomplete. Re-download it."
        )
    if files.fmt == "safetensors":
        weight, dtype = read_safetensors_tensor(ckpt.fetch(filename), key)
    else:
        state = files.loaded.pop(filename, None) or load_pickle_state_dict(ckpt.fetch(filename))
        dtype = str(state[key].dtype).removeprefix("torch.")
        weight = to_float32_copy(state[key])
        del state
        files.loaded.clear()
    if weight.ndim != 2:
        raise SourceError(
            f"Tensor {key!r} of {ckpt.name!r} has shape {tuple(weight.shape)}, not (vocab, width); "
            "pass tensor_key= naming the input-embedding table."
        )
    if hint is not None and tuple(weight.shape) != hint.shape:
        logger.info(
            "%s: %s has shape %s, the config says %s.", ckpt.name, key, tuple(weight.shape), hint.shape
        )
    if tokenizer is None:
        tokenizer = load_tokenizer(ckpt, trust_remote_code=trust_remote_code)
    if len(tokenizer) > weight.shape[0]:
        logger.warning(
            "%s: the tokenizer has %d tokens but the table only %d rows; ids past the table have no vector.",
            ckpt.name,
            len(tokenizer),
            weight.shape[0],
        )
    metadata = {
        "format": files.fmt,
        "file": filename,
        "tensor_key": key,
        "dtype": dtype,
        "located_by": located_by,
        "model_type": getattr(config, "model_type", None),
        "tokenizer_class": type(tokenizer).__name__,
        "tokenizer_size": len(tokenizer),
        **(hint.details if hint is not None else {}),
    }
    return SourceTable(
        name=ckpt.name,
        kind="hf",
        weight=weight,
        tokenizer=tokenizer,
        revision=ckpt.revision,
        metadata=metadata,
    )


def _locate(
    ckpt: ResolvedCheckpoint, files: WeightFiles, hint: ArchitectureHint | None, tensor_key: str | None
) -> tuple[str, str]:
    keys = files.weight_map.keys()
    if tensor_key is not None:
        if tensor_key not in files.weight_map:
            close = difflib.get_close_matches(tensor_key, list(keys), n=3)
            raise SourceError(
                f"{ckpt.name!r} has no tensor {tensor_key!r}" + (f"; did you mean {close}?" if close else ".")
            )
        return tensor_key, "tensor_key"
    if hint is not None:
        key = match_key(hint, keys)
        if key is not None:
            return key, "architecture"
    key = well_known_key(keys)
    if key is not None:
        return key, "name"
    looked = (hint.names if hint is not None else []) + [
        "well-known names (word_embeddings, embed_tokens, wte...)"
    ]
    raise SourceError(
        f"No input-embedding tensor found in {ckpt.name!r} among its {len(keys)} tensors (looked for {looked}). "
        "Pass tensor_key= naming it."
    )


def _load_config(ckpt: ResolvedCheckpoint, trust_remote_code: bool) -> PretrainedConfig | None:
    if not (ckpt.folder / "config.json").is_file():
        return None
    from transformers import AutoConfig

    try:
        # An explicit False never runs the checkpoint's code and never stops to prompt for it.
        return AutoConfig.from_pretrained(str(ckpt.folder), trust_remote_code=trust_remote_code)
    except Exception as e:  # unknown model type, custom code not trusted...: fall back on names
        logger.info("%s: config.json not usable here (%s); matching well-known tensor names.", ckpt.name, e)
        return None


def load_tokenizer(ckpt: ResolvedCheckpoint, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the checkpoint's tokenizer, running its custom code only when `trust_remote_code` is set."""
    from transformers import AutoTokenizer

    # Without any vocabulary file transformers quietly builds an empty tokenizer from the config alone.
    if not any(any(ckpt.folder.glob(pattern)) for pattern in TOKENIZER_FILE_PATTERNS):
        raise SourceError(
            f"{ckpt.name!r} has no tokenizer files ({', '.join(TOKENIZER_FILE_PATTERNS)}); copy the tokenizer "
            "of the model into the checkpoint folder (tokenizer.save_pretrained(folder))."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt.folder), trust_remote_code=trust_remote_code)
    except (
        Exception
    ) as e:  # transformers raises OSError/ValueError/KeyError/TypeError here depending on the file
        if "trust_remote_code" in str(e):
            raise SourceError(
                f"The tokenizer of {ckpt.name!r} needs custom code shipped with the checkpoint. Review that code, then "
                "pass trust_remote_code=True to run it."
            ) from None
        raise SourceError(
            f"Could not load the tokenizer of {ckpt.name!r} ({type(e).__name__}: {e}). The checkpoint needs its "
            "tokenizer files (tokenizer.json, or tokenizer_config.json with its vocabulary files) next to the weights."
        ) from None
    if not trust_remote_code and _has_custom_tokenizer_code(ckpt):
        logger.warning(
            "%s ships custom tokenizer code, which was not run; transformers used its built-in %s instead. "
            "Pass trust_remote_code=True if the custom code matters.",
            ckpt.name,
            type(tokenizer).__name__,
        )
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise SourceError(
            f"The tokenizer of {ckpt.name!r} has only its {len(tokenizer)} special tokens; its vocabulary file is "
            "missing or empty. Copy the model's tokenizer files into the checkpoint folder."
        )
    return tokenizer


def _has_custom_tokenizer_code(ckpt: ResolvedCheckpoint) -> bool:
    path = ckpt.folder / "tokenizer_config.json"
    try:
        return "auto_map" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
