"""`hf-embfuse upgrade DIR`: rewrite a format-1 EmbFuse checkpoint in the current format.

Format 1 wrappers adopted the base model's children, so their keys were the base model's own
(`bert.embeddings.word_embeddings.mixer.logits`, `classifier.weight`). Format 2 wrappers hold the base model
as a submodule under its `base_model_prefix`, so every key gains that prefix (`bert.bert.embeddings...`,
`bert.classifier.weight`). Nothing else changed: the tensors are copied as they are.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors import safe_open

from .atomic import atomic_output_dir
from .configuration_embfuse import FORMAT_VERSION, EmbFuseConfig

# Written anew by `save_pretrained`; everything else in the folder (tokenizer, card, report, ...) is copied.
_REWRITTEN = ("config.json", "configuration_embfuse.py", "modeling_embfuse.py")


def upgrade_checkpoint(folder: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Rewrite the format-1 checkpoint in `folder` as format 2, into `out_dir` (default: in place, atomically).

    Returns:
        The folder written.

    Raises:
        FileNotFoundError / ValueError: `folder` is not an EmbFuse checkpoint, is already current, or its
            weights do not match its config.
    """
    from accelerate import init_empty_weights

    from .modeling_embfuse import task_of
    from .wrap import wrapper_class

    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json; expected an EmbFuse checkpoint folder.")
    try:
        config_dict = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(config_file)!r} is not valid JSON ({error}).") from None
    if not isinstance(config_dict, dict) or config_dict.get("model_type") != EmbFuseConfig.model_type:
        raise ValueError(
            f"{str(folder)!r} is not an EmbFuse checkpoint (config.json has no model_type 'embfuse')."
        )
    version = config_dict.get("format_version", 1)
    if version == FORMAT_VERSION:
        raise ValueError(f"{str(folder)!r} is already in format {FORMAT_VERSION}; nothing to upgrade.")
    if version != 1:
        raise ValueError(f"{str(folder)!r} is in format {version!r}; this command upgrades format 1 only.")

    config_dict = {key: value for key, value in config_dict.items() if key != "auto_map"}
    config = EmbFuseConfig.from_dict({**config_dict, "format_version": FORMAT_VERSION})
    wrapper = wrapper_class(task_of((config.architectures or ["EmbFuseModel"])[0]))
    with init_empty_weights():
        model = wrapper(config)
    prefix = model.base_model_prefix
    state = {f"{prefix}.{key}": tensor for key, tensor in _read_weights(folder).items()}
    expected = set(model.state_dict())
    unexpected = sorted(set(state) - expected)
    missing = sorted(expected - set(state) - set(model.all_tied_weights_keys))
    if unexpected or missing:
        raise ValueError(
            f"The weights in {str(folder)!r} do not match a format-1 {wrapper.__name__}: unexpected "
            f"{unexpected[:3]}, missing {missing[:3]}."
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    target = Path(out_dir) if out_dir is not None else folder
    with atomic_output_dir(target, overwrite=target == folder) as staging:
        model.save_pretrained(staging)
        for path in folder.iterdir():
            if path.name in _REWRITTEN or path.name.endswith((".safetensors", ".safetensors.index.json")):
                continue
            copy = shutil.copytree if path.is_dir() else shutil.copy2
            copy(path, staging / path.name)
    return target


def _read_weights(folder: Path) -> dict:
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    files = [folder / name for name in files] or [folder / "model.safetensors"]
    state = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{str(file)!r} is missing; the checkpoint's weights are incomplete.")
        with safe_open(file, "pt") as handle:
            state.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    return state


__all__ = ["upgrade_checkpoint"]
