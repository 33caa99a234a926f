"""`hf-embfuse`: build, inspect, bake, evaluate and publish fused-embedding models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .atomic import OutputExistsError

logger = logging.getLogger("hf_embfuse")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-embfuse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build a fused model from a YAML recipe")
    build.add_argument("recipe", help="YAML recipe (see examples/)")
    build.add_argument("--out", required=True, help="output folder (written all at once)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    build.set_defaults(run=_build)

    inspect = commands.add_parser("inspect", help="show a fused model's sources, coverage and mixing weights")
    inspect.add_argument("folder")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of tables")
    inspect.set_defaults(run=_inspect)

    upgrade = commands.add_parser(
        "upgrade", help="rewrite a checkpoint saved by an older hf-embfuse (format 1)"
    )
    upgrade.add_argument("folder", help="the checkpoint folder (rewritten in place unless --out is given)")
    upgrade.add_argument("--out", help="write the upgraded checkpoint here instead")
    upgrade.set_defaults(run=_upgrade)

    bake = commands.add_parser(
        "bake", help="write a plain base-architecture checkpoint with the fused embedding"
    )
    bake.add_argument("folder", help="an EmbFuse checkpoint folder")
    bake.add_argument("--out", required=True, help="output folder (written all at once)")
    bake.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    bake.set_defaults(run=_bake)

    _add_eval_command(commands)
    _add_push_command(commands)
    args = parser.parse_args(argv)
    # torch and transformers load only now, after the arguments are read: `--help` answers at once.
    from . import _register

    _register()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args) or 0
    except (ValueError, OSError, ImportError) as error:
        # Bad input: one clear line, no traceback; the library's `overwrite=True` is the CLI's --overwrite.
        message = error.cli_message() if isinstance(error, OutputExistsError) else error
        print(f"hf-embfuse {args.command}: error: {message}", file=sys.stderr)
        return 2


def _upgrade(args: argparse.Namespace) -> int:
    from .upgrade import upgrade_checkpoint

    print(f"wrote {upgrade_checkpoint(args.folder, args.out)} (format 2)")
    return 0


def _projection_line(fit: dict) -> str:
    """One line on how a source reached the base space, whatever the method."""
    method = fit.get("method", "?")
    if fit.get("heldout_cosine") is not None:
        return f"{method}, held-out anchor cosine {fit['heldout_cosine']:.3f}"
    if method in ("transport", "omp"):
        size = f"k={fit['k']}" if method == "transport" else f"{fit['atoms']} atoms"
        recall = f", search recall {fit['search_recall']:.3f}" if "search_recall" in fit else ""
        return f"{method} ({size}): {fit['rows']:,} rows from {fit['anchors']:,} anchors, {fit['search']} search{recall}"
    return method


def _build(args: argparse.Namespace) -> int:
    from .build import build_to_folder
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe)
    result = build_to_folder(recipe, args.out, overwrite=args.overwrite, show_progress=not args.no_progress)
    for report in result.reports:
        print(report.alignment)
        print("  projection: " + _projection_line(report.projection))
    if result.transfer is not None:
        from .transfer import format_rows

        target = result.transfer
        print(
            f"target vocabulary {target['tokenizer']} ({target['size']:,} tokens; {target['overlap']:.2%} shared with "
            f"the base one to one; LM head {target['head'] or 'none'}):"
        )
        for name, rows in target["rows"].items():
            print("  " + format_rows(name, rows))
    print(f"wrote {args.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import describe_checkpoint, format_description

    description = describe_checkpoint(Path(args.folder))
    print(json.dumps(description, indent=2) if args.json else format_description(description))
    return 0


def _bake(args: argparse.Namespace) -> int:
    from .baking import bake_to_folder

    out = bake_to_folder(args.folder, args.out, overwrite=args.overwrite)
    print(f"wrote {out}: a plain checkpoint of the base architecture; loads without trust_remote_code")
    return 0


def _add_push_command(commands: argparse._SubParsersAction) -> None:
    push = commands.add_parser(
        "push",
        help="publish a fused checkpoint folder with its model card to the Hugging Face Hub",
        description=(
            "Upload a checkpoint folder (weights, config, code files, tokenizer, report, evaluation results, "
            "mixing-weights plot, sentence-transformers modules) and a generated model card to a Hub repository "
            "in one commit. Prints the commit URL, or 'no changes'."
        ),
    )
    push.add_argument("folder", help="checkpoint folder (written by `hf-embfuse build` or save_pretrained)")
    push.add_argument("repo", help="repository id, `namespace/name`")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created if missing)")
    push.add_argument("--message", metavar="MSG", help="commit message")
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)")
    push.add_argument(
        "--eval-results",
        type=Path,
        metavar="FILE.json",
        help="evaluation results for the card (`hf-embfuse eval --out`; default: the folder's embfuse_eval.json)",
    )
    push.set_defaults(run=_push)


def _push(args: argparse.Namespace) -> int:
    from .hub import check_checkpoint_folder, push_to_hub
    from .model_card import read_eval_results

    # Everything local is checked before the first request: folder, repository name, results file.
    check_checkpoint_folder(args.folder)
    eval_results = read_eval_results(args.eval_results) if args.eval_results is not None else None
    commit = push_to_hub(
        args.folder,
        args.repo,
        private=args.private,
        revision=args.revision,
        commit_message=args.message,
        token=args.token,
        eval_results=eval_results,
    )
    print("no changes" if commit is None else commit.commit_url)
    return 0


def _add_eval_command(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "eval",
        help="word similarity of a fused model vs each of its sources and simple baselines",
        description=(
            "Spearman's ρ on word-similarity data of the fused table, the base table, each source alone "
            "(in the base space, covered rows only) and the average/concatenation baselines. A plain "
            "(e.g. baked) checkpoint is evaluated as one table. With --text: bits per byte of a causal LM."
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
    command.add_argument(
        "--start-token",
        metavar="TOKEN",
        help="with --text: the token put before each line (default: the one the tokenizer adds itself, else "
        "<|endoftext|>, else bos); a transplanted body may expect its own under another name",
    )
    command.add_argument("--no-progress", action="store_true", help="no progress bars")
    command.add_argument("--out", type=Path, metavar="FILE.json", help="write the results as JSON")
    command.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    command.add_argument(
        "--word-prefix",
        default="",
        help="text put before each word before tokenising (' ' for byte-level BPE tokenizers)",
    )
    command.set_defaults(run=_eval)


def _eval(args: argparse.Namespace) -> int:
    """`hf-embfuse eval`: bad input raises ValueError / OSError, which `main` reports in one line."""
    from .evaluation.command import write_json_atomic

    if args.reference and args.text is None:
        raise ValueError("--reference needs --text FILE")
    if not args.wordsim and not args.standard and args.text is None:
        raise ValueError(
            "give --text FILE, or word-similarity data: --wordsim FILE [FILE ...] and/or --standard"
        )
    if args.text is not None and (args.wordsim or args.standard):
        raise ValueError("--text and word-similarity data are separate runs; give one of them")
    if args.out is not None and args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{str(args.out)!r} already exists; pass --overwrite to replace it")
    report = _eval_text(args) if args.text is not None else _eval_wordsim(args)
    if args.out is not None:
        write_json_atomic(args.out, {"checkpoint": str(args.folder), **report}, overwrite=args.overwrite)
        print(f"wrote {args.out}")
    return 0


def _eval_wordsim(args: argparse.Namespace) -> dict:
    from .evaluation.command import evaluate_checkpoint, load_checkpoint, load_datasets

    # The data before the model: a malformed file should fail in a second, not after loading.
    datasets = load_datasets(args.wordsim, standard=args.standard)
    model, tokenizer = load_checkpoint(Path(args.folder))
    table = evaluate_checkpoint(model, tokenizer, datasets, word_prefix=args.word_prefix)
    print(table.to_markdown())
    return {"word_prefix": args.word_prefix, **table.to_dict()}


def _eval_text(args: argparse.Namespace) -> dict:
    from .evaluation.bits_per_byte import read_text_lines
    from .evaluation.text_command import (
        evaluate_text,
        format_text_report,
        load_causal_lm,
        recorded_added_tokens,
    )

    if args.max_lines is not None and args.max_lines < 1:
        raise ValueError(f"--max-lines must be at least 1, got {args.max_lines}")
    lines = read_text_lines(args.text)[: args.max_lines]  # before any model: a bad file fails in a second
    model, tokenizer = load_causal_lm(args.folder)
    reference = load_causal_lm(args.reference) if args.reference else None
    report = evaluate_text(
        model,
        tokenizer,
        lines,
        reference=reference,
        start_token=args.start_token,
        added_tokens=recorded_added_tokens(args.folder),
        show_progress=not args.no_progress,
    )
    print(format_text_report(report, str(args.folder), args.reference))
    return {"text": str(args.text), "reference_model": args.reference, **report}


if __name__ == "__main__":
    sys.exit(main())
