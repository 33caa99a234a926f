"""`hf-embfuse eval DIR --text FILE [--reference MODEL]`: bits per byte of a causal LM on a text file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..sources.gguf_model import forget_gguf_quantizer
from .bits_per_byte import TextScore, added_token_ids, score_lines

logger = logging.getLogger(__name__)


def load_causal_lm(name: str | Path) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from an EmbFuse folder, a plain HF folder (or Hub id), or a GGUF file.

    A folder without `config.json` holding exactly one `.gguf` file is read as that file.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_embfuse  # noqa: F401  (registers the embfuse model type with the Auto classes)

    path = Path(name)
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise FileNotFoundError(
                f"{str(path)!r} has no config.json and {len(ggufs)} .gguf files; point at a model folder or a "
                "GGUF file"
            )
        path = ggufs[0]
    if path.suffix == ".gguf":
        from ..sources.gguf_model import load_gguf_base

        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
        # Dequantised once, then read from a plain cached folder.
        model, tokenizer = load_gguf_base(path, AutoModelForCausalLM, dtype=torch.float32)
        return model.eval(), tokenizer
    if not path.exists() and (path.is_absolute() or str(name).startswith(".")):
        raise FileNotFoundError(
            f"model {str(name)!r} does not exist; give a model folder, a GGUF file or a Hub id"
        )
    not_causal = ValueError(
        f"{str(name)!r} is not a causal language model, so it has no bits per byte; give one (an EmbFuse folder "
        "built with task 'causal-lm')"
    )
    if not _is_causal_lm(path):
        raise not_causal
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except ValueError as error:
        if "Unrecognized configuration class" not in str(error):
            raise
        raise not_causal from None
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    # A folder someone saved after a GGUF load still names the GGUF quantizer.
    return forget_gguf_quantizer(model).eval(), tokenizer


# Class-name endings of models that predict the next token (what `architectures` in config.json says).
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _is_causal_lm(folder: Path) -> bool:
    """False when the folder's config names only architectures that are not causal LMs (e.g. `BertModel`).

    `AutoModelForCausalLM` would otherwise load an encoder with a fresh, random head. A local folder gets
    the checkpoint check every command runs (config, weights' headers, tokenizer files) on the way.
    """
    if not folder.is_dir():
        return True  # a Hub id: left to from_pretrained
    from ..checkpoint_folder import read_checkpoint_config

    architectures = read_checkpoint_config(folder, any_model=True, tokenizer="required").get("architectures")
    return not architectures or any(name.endswith(_CAUSAL_SUFFIXES) for name in architectures)


def recorded_added_tokens(folder: str | Path) -> list[str] | None:
    """The tokens the build added to the vocabulary, as its config records them; `None` without a record.

    A transplanted tokenizer brings its own added tokens (Gemma's newline runs, ...): only the build's
    record (`added_tokens` of the target in the base source's entry) says which ones the user added.
    """
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # the checkpoint check reports a bad config.json
    sources = config.get("sources") if isinstance(config, dict) else None
    if not sources or not isinstance(sources[0], dict) or "target" not in sources[0]:
        return None
    added = (sources[0]["target"] or {}).get("added_tokens") or {}
    return list(added.get("added") or [])


def evaluate_text(
    model: Any,
    tokenizer: Any,
    lines: list[str],
    *,
    reference: tuple[Any, Any] | None = None,
    start_token: str | None = None,
    added_tokens: list[str] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Bits per byte of `model` (and of `reference`, a `(model, tokenizer)` pair) on `lines`, as a report.

    The report also holds the lines that contain added tokens, with the loss there, when there are any:
    `added_tokens` (the build's record, `recorded_added_tokens`), else the tokenizer's added non-special
    tokens. `start_token` (a token of `tokenizer`) overrides the start rule for `model`; the reference
    keeps its own.
    """
    start = None
    if start_token is not None:
        start = tokenizer.get_vocab().get(start_token)
        if start is None:
            raise ValueError(f"--start-token {start_token!r} is not a token of the model's tokenizer")
    score = score_lines(model, tokenizer, lines, start_token=start, show_progress=show_progress)
    report: dict[str, Any] = {"model": score.to_dict()}
    reference_score: TextScore | None = None
    if reference is not None:
        reference_score = score_lines(*reference, lines, show_progress=show_progress)
        report["reference"] = reference_score.to_dict()
        report["ratio"] = score.bits_per_byte / reference_score.bits_per_byte
    if added_tokens is None:
        added = added_token_ids(tokenizer)
    else:
        vocabulary = tokenizer.get_vocab()
        added = sorted({vocabulary[token] for token in added_tokens if token in vocabulary})
    if added:
        keep = score.lines_containing(added)
        entry: dict[str, Any] = {"added_tokens": len(added), "lines": int(keep.sum())}
        if keep.any():
            entry["model"] = score.subset(keep).to_dict()
            if reference_score is not None:
                entry["reference"] = reference_score.subset(keep).to_dict()
        report["added_token_lines"] = entry
    return report


def format_text_report(report: dict[str, Any], model_name: str, reference_name: str | None) -> str:
    """The report as a Markdown table and a few lines."""
    rows = [("model", model_name, report["model"])]
    if "reference" in report:
        rows.append(("reference", reference_name or "reference", report["reference"]))
    lines = [
        "| model | name | tokens | bits/byte | loss/token (nats) |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {role} | {name} | {entry['tokens']} | {entry['bits_per_byte']:.4f} | {entry['token_loss']:.4f} |"
            for role, name, entry in rows
        ),
        f"{report['model']['lines']} lines, {report['model']['bytes']} bytes",
    ]
    if "ratio" in report:
        lines.append(f"ratio (model / reference bits per byte): {report['ratio']:.4f}")
    added = report.get("added_token_lines")
    if added:
        text = f"lines with the {added['added_tokens']} added tokens: {added['lines']}"
        if "model" in added:
            text += f"; loss/token {added['model']['token_loss']:.4f}, bits/byte {added['model']['bits_per_byte']:.4f}"
        if "reference" in added:
            text += f" (reference bits/byte {added['reference']['bits_per_byte']:.4f})"
        lines.append(text)
    return "\n".join(lines)
