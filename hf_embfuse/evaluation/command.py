"""`hf-embfuse eval`: word similarity of a saved checkpoint, its sources and the simple baselines."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand to the `hf-embfuse` parser."""
    command = subparsers.add_parser(
        "eval",
        help="word similarity of a fused model vs each of its sources and simple baselines",
        description=(
            "Spearman's ρ on word-similarity data of the fused table, the base table, each source alone "
            "(in the base space, covered rows only) and the average/concatenation baselines. A plain "
            "(e.g. baked) checkpoint is evaluated as one table."
        ),
    )
    command.add_argument("folder", help="checkpoint folder (model and tokenizer)")
    command.add_argument(
        "--wordsim",
        nargs="+",
        default=[],
        metavar="FILE",
        help="word-similarity files (`word1 word2 ... score`)",
    )
    command.add_argument(
        "--standard", action="store_true", help="also evaluate on WordSim-353, SimLex-999 and MEN"
    )
    command.add_argument(
        "--text",
        type=Path,
        metavar="FILE",
        help="UTF-8 text, one passage a line: bits per byte of the model (a causal LM) on it",
    )
    command.add_argument(
        "--reference",
        metavar="MODEL",
        help="with --text: also score this model (folder, GGUF file or Hub id) with its own tokenizer, and the ratio",
    )
    command.add_argument("--max-lines", type=int, metavar="N", help="with --text: only the first N lines")
    command.add_argument("--no-progress", action="store_true", help="no progress bars")
    command.add_argument("--out", type=Path, metavar="FILE.json", help="write the results as JSON")
    command.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    command.add_argument(
        "--word-prefix",
        default="",
        help="text put before each word before tokenising (' ' for byte-level BPE tokenizers)",
    )
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run `hf-embfuse eval`; bad input raises ValueError / OSError, which the CLI reports in one line."""
    from . import load_standard_wordsim, load_wordsim

    if args.reference and args.text is None:
        raise ValueError("--reference needs --text FILE")
    if not args.wordsim and not args.standard and args.text is None:
        raise ValueError(
            "give --text FILE, or word-similarity data: --wordsim FILE [FILE ...] and/or --standard"
        )
    if args.out is not None and args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{str(args.out)!r} already exists; pass --overwrite to replace it")
    if args.text is not None and not args.wordsim and not args.standard:
        from .text_command import run_text

        report = run_text(args)
        if args.out is not None:
            write_json_atomic(args.out, {"checkpoint": str(args.folder), **report}, overwrite=args.overwrite)
            print(f"wrote {args.out}")
        return 0
    if args.text is not None:
        raise ValueError("--text and word-similarity data are separate runs; give one of them")
    # Read the data before the model: a malformed file should fail in a second, not after loading.
    datasets = dict(load_standard_wordsim()) if args.standard else {}
    for path in args.wordsim:
        dataset = load_wordsim(path)
        if dataset.name in datasets:
            raise ValueError(f"two datasets are named {dataset.name!r} ({path}); rename one of the files")
        datasets[dataset.name] = dataset

    model, tokenizer = load_checkpoint(Path(args.folder))
    table = evaluate_checkpoint(model, tokenizer, datasets, word_prefix=args.word_prefix)
    print(table.to_markdown())
    if args.out is not None:
        report = {
            "checkpoint": str(args.folder),
            "word_prefix": args.word_prefix,
            **table.to_dict(),
        }
        write_json_atomic(args.out, report, overwrite=args.overwrite)
        print(f"wrote {args.out}")
    return 0


def load_checkpoint(folder: Path) -> tuple[Any, Any]:
    """Load model and tokenizer from `folder` without remote code (importing hf_embfuse registers EmbFuse)."""
    import hf_embfuse  # noqa: F401  (registers the embfuse model type with the Auto classes)

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json; point at a saved checkpoint folder.")
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, trust_remote_code=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
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
            raise FileExistsError(f"{str(path)!r} already exists; pass --overwrite to replace it") from None
        except OSError:  # a filesystem without hard links
            os.replace(temp, path)
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)
