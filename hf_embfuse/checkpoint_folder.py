"""An EmbFuse checkpoint folder: the check (is this one?), loading, content hash and mean mixing weights.

One module serves every command that reads a saved checkpoint (`inspect`, `bake`, `push`, `eval`) and
`hf_embfuse.load_embfuse_folder`, so they accept and refuse the same folders with the same words.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedModel

from .configuration_embfuse import EmbFuseConfig
from .modeling_embfuse import EmbFuseTask, task_of

EXPECTED = "a folder written by hf-embfuse (config.json with model_type 'embfuse', and the model weights)"
ANY_EXPECTED = "a checkpoint folder (config.json and the model weights, as `save_pretrained` writes them)"
# What `save_pretrained` writes for the weights: one file, shards with their index, or pickles.
WEIGHT_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)
INDEX_SUFFIX = ".index.json"
# The shipped code: without it a checkpoint does not load with `trust_remote_code` where hf_embfuse is absent.
CODE_FILES = ("configuration_embfuse.py", "modeling_embfuse.py")
# Tokenizer (and chat template) files `save_pretrained` writes; the JSON ones are parsed by the check.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
# Any one of these makes a loadable tokenizer (with tokenizer_config.json, which is optional for some).
_TOKENIZER_VOCABULARIES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
_MAX_SAFETENSORS_HEADER = 100 << 20  # a real header is a few MB; a larger length is garbage
# What a command needs of the tokenizer: not read (inspect, loading), checked if present (bake and push copy
# it), or loaded (eval).
TokenizerUse = Literal["ignored", "optional", "required"]


def is_weights_file(name: str) -> bool:
    """Whether a file name is one `save_pretrained` writes model weights to."""
    return any(fnmatch(name, pattern) for pattern in WEIGHT_PATTERNS)


def read_checkpoint_config(
    folder: str | os.PathLike,
    not_embfuse_hint: str = "",
    *,
    any_model: bool = False,
    tokenizer: TokenizerUse = "ignored",
) -> dict[str, Any]:
    """Check that `folder` holds an intact EmbFuse checkpoint and return its `config.json` as a dict.

    The one check behind `inspect`, `bake`, `push`, `eval` and `load_embfuse_folder`. It reads
    `config.json`, the folder listing, the weights' headers and index (never the tensors: a
    safetensors header is its 8-byte length and JSON, and the data it describes must fill the rest of
    the file) and, when `tokenizer` says so, the tokenizer's JSON files. Every failure names the file
    and what is wrong with it.

    Args:
        folder: the folder to check.
        not_embfuse_hint: a sentence appended when the folder holds another model type (what the
            calling command suggests instead).
        any_model: accept a plain transformers checkpoint too (`eval` scores baked models); the EmbFuse
            parts (config fields, code files) are checked only for an EmbFuse one.
        tokenizer: `"ignored"`, `"optional"` (its JSON files must parse when present) or `"required"`.

    Raises:
        FileNotFoundError: the folder, its config.json, its weights, a shard or the tokenizer are missing.
        ValueError: a file instead of a folder, a PEFT adapter folder, another model type, or a damaged
            file (config.json, weights, index, code, tokenizer).
    """
    folder = Path(folder)
    expected = ANY_EXPECTED if any_model else EXPECTED
    if not folder.exists():
        raise FileNotFoundError(f"{str(folder)!r} does not exist; expected {expected}.")
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; expected {expected}.")
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "adapter_config.json").is_file():
            raise ValueError(
                f"{str(folder)!r} is a PEFT adapter, not a full checkpoint; expected {expected}. Load the model "
                "with the adapter, `merge_and_unload()`, and `save_pretrained(...)` it first."
            )
        raise FileNotFoundError(f"{str(folder)!r} has no config.json; expected {expected}.")
    config = _read_json(config_file, f"expected {expected}")
    if not isinstance(config, dict):
        raise ValueError(
            f"{str(config_file)!r} holds a JSON {type(config).__name__}, not an object; the file is damaged. "
            "Re-save the model or restore config.json."
        )
    model_type = config.get("model_type")
    embfuse = model_type == EmbFuseConfig.model_type
    if not embfuse and not any_model:
        raise ValueError(
            f"{str(folder)!r} holds a {model_type!r} checkpoint, not an embfuse one; expected {EXPECTED}. "
            + (not_embfuse_hint or "Build one with `hf-embfuse build` or `hf_embfuse.fuse`.")
        )
    weights = sorted(path for path in folder.iterdir() if is_weights_file(path.name))
    if not weights:
        raise FileNotFoundError(f"{str(folder)!r} has a config.json but no weights; expected {expected}.")
    if embfuse:
        _check_embfuse_config(folder, config)
    for path in weights:
        _check_weights_file(path)
    if tokenizer != "ignored":
        check_tokenizer_files(folder, required=tokenizer == "required")
    return config


def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}); {fix}.") from None


def _check_embfuse_config(folder: Path, config: dict[str, Any]) -> None:
    """The config's EmbFuse fields make an `EmbFuseConfig`, its wrapper is known, its code files are there."""
    config_file = folder / "config.json"
    sources, base = config.get("sources"), config.get("base_config")
    if not isinstance(sources, list) or not all(isinstance(source, dict) for source in sources):
        raise ValueError(
            f"{str(config_file)!r}: `sources` must be a list of source entries (JSON objects), got "
            f"{type(sources).__name__}; the file is damaged. Re-save the model or restore config.json."
        )
    if not isinstance(base, dict):
        raise ValueError(
            f"{str(config_file)!r}: `base_config` must be the base model's config (a JSON object), got "
            f"{type(base).__name__}; the file is damaged. Re-save the model or restore config.json."
        )
    architectures = config.get("architectures")
    if architectures is not None and not (
        isinstance(architectures, list) and all(isinstance(name, str) for name in architectures)
    ):
        raise ValueError(f"{str(config_file)!r}: `architectures` must be a list of class names.")
    try:
        EmbFuseConfig.from_dict(dict(config))  # every field's own validation, naming the field
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{str(config_file)!r}: {error}") from None
    checkpoint_task(folder, config)
    missing = [name for name in CODE_FILES if not (folder / name).is_file()]
    if missing or not config.get("auto_map"):
        raise ValueError(
            f"{str(folder)!r} lacks {', '.join(missing) or 'an auto_map in config.json'}, so it would not load with "
            "trust_remote_code; save the model again with `import hf_embfuse` done first."
        )


def _check_weights_file(path: Path) -> None:
    if path.name.endswith(INDEX_SUFFIX):
        _check_index(path)
    elif path.suffix == ".safetensors":
        check_safetensors_file(path)
    elif not zipfile.is_zipfile(path):  # torch.save writes a zip; a cut one has no central directory
        raise ValueError(
            f"{str(path)!r} is not a readable PyTorch weights file (no zip archive; truncated or corrupt). "
            "Re-save or re-download the checkpoint."
        )


def _check_index(index: Path) -> None:
    """A sharded checkpoint's index maps tensor names to shard files, all of them in the folder."""
    data = _read_json(index, "re-save or re-download the checkpoint")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise ValueError(
            f"{str(index)!r} has no `weight_map` from tensor names to shard files; the index is damaged. "
            "Re-save or re-download the checkpoint."
        )
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise ValueError(
                f"{str(index)!r} names the shard {shard!r}, which is not a file in the checkpoint folder."
            )
        if not (index.parent / shard).is_file():
            raise FileNotFoundError(
                f"{str(index)!r} puts tensors in {shard!r}, which is missing; the checkpoint is incomplete. "
                "Copy every shard, or re-save the model."
            )


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Check a safetensors file cheaply: its header parses and the data it describes fills the file exactly.

    Reads the 8-byte header length and the JSON header, never the tensors.

    Raises:
        ValueError: the file is empty, truncated, longer than its header says, or its header is garbage.
    """
    from .sources._tensor_io import _valid_entry, read_safetensors_header

    path = Path(path)
    size = path.stat().st_size
    fix = "Re-save or re-download the checkpoint."
    if size == 0:
        raise ValueError(f"{str(path)!r} is empty (0 bytes); the weights are missing. {fix}")
    with path.open("rb") as handle:
        raw = handle.read(8)
    length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else None
    if length is not None and size - 8 < length <= _MAX_SAFETENSORS_HEADER:
        raise ValueError(f"{str(path)!r} is truncated: it ends inside its {length}-byte header. {fix}")
    header, data_start = read_safetensors_header(path)  # a SourceError (a ValueError) naming the file
    end = 0
    for key, entry in header.items():
        if not _valid_entry(entry):
            raise ValueError(
                f"{str(path)!r}: the header entry of tensor {key!r} is malformed; the file is corrupt. {fix}"
            )
        end = max(end, entry["data_offsets"][1])
    if data_start + end > size:
        raise ValueError(
            f"{str(path)!r} is truncated: its header describes {data_start + end} bytes, the file has {size}. {fix}"
        )
    if data_start + end < size:
        raise ValueError(
            f"{str(path)!r} is corrupt: it has {size - data_start - end} bytes after the data its header describes. "
            f"{fix}"
        )


def check_tokenizer_files(folder: str | os.PathLike, *, required: bool) -> None:
    """The tokenizer's JSON files parse; with `required`, the folder has a tokenizer at all.

    Raises:
        FileNotFoundError: `required` and the folder holds no tokenizer vocabulary.
        ValueError: a tokenizer JSON file that does not parse, or is not a JSON object.
    """
    folder = Path(folder)
    if required and not any((folder / name).is_file() for name in _TOKENIZER_VOCABULARIES):
        raise FileNotFoundError(
            f"{str(folder)!r} has no tokenizer (none of {', '.join(_TOKENIZER_VOCABULARIES)}); save it beside the "
            "model with `tokenizer.save_pretrained(folder)`."
        )
    fix = "the tokenizer is damaged: save it again with `tokenizer.save_pretrained(folder)`"
    for name in TOKENIZER_FILES:
        path = folder / name
        if name.endswith(".json") and path.is_file() and not isinstance(_read_json(path, fix), dict):
            raise ValueError(f"{str(path)!r} is not a JSON object; {fix}.")


def checkpoint_task(folder: str | os.PathLike, config: dict[str, Any]) -> EmbFuseTask:
    """The task whose wrapper loads the checkpoint, from its config's `architectures`."""
    wrapper = (config.get("architectures") or ["EmbFuseModel"])[0]
    try:
        return task_of(wrapper)
    except ValueError as error:
        raise ValueError(f"{str(folder)!r} names architecture {error}") from None


def load_embfuse_folder(folder: str | os.PathLike, not_embfuse_hint: str = "") -> PreTrainedModel:
    """Load an EmbFuse checkpoint folder with this package's wrapper classes, after checking it is one.

    Args:
        folder: the checkpoint folder.
        not_embfuse_hint: what to suggest when the folder holds another model type.

    Raises:
        FileNotFoundError: the folder, its `config.json` or its weights are missing.
        ValueError: the folder is not an EmbFuse checkpoint (a plain model, a PEFT adapter, ...).
    """
    from .wrap import wrapper_class

    folder = Path(folder)
    task = checkpoint_task(folder, read_checkpoint_config(folder, not_embfuse_hint))
    return wrapper_class(task).from_pretrained(folder, dtype="auto")


def content_hash(folder: str | os.PathLike) -> str:
    """SHA-256 over the weights files of a checkpoint (names and bytes), for reproducibility checks."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def mean_mixing_weights(folder: str | os.PathLike, config: EmbFuseConfig | None = None) -> list[float] | None:
    """Mean mixing weight per source (base first, 4 decimals), from the saved embedding module alone.

    Reads only the fused embedding's tensors, never the whole model. `None` when the weights do not hold
    exactly one fused embedding.
    """
    from safetensors import safe_open

    from .modeling_embfuse import MultiSourceEmbedding

    folder = Path(folder)
    config = config if config is not None else EmbFuseConfig.from_pretrained(folder)
    keys = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            keys.update(dict.fromkeys(handle.keys(), path))
    coverage_keys = [key for key in keys if key.endswith(".coverage")]
    if len(coverage_keys) != 1:
        return None
    prefix = coverage_keys[0][: -len("coverage")]
    state = {}
    for key, path in keys.items():
        if key.startswith(prefix):
            with safe_open(path, "pt") as handle:
                state[key[len(prefix) :]] = handle.get_tensor(key)
    num_rows, width = state["weight"].shape
    embedding = MultiSourceEmbedding(config, num_rows, width)
    embedding.load_state_dict(state, strict=False)
    return [round(float(weight), 4) for weight in embedding.mean_mixing_weights()]
