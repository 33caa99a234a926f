"""`hf-embfuse`: build, inspect, bake, evaluate and publish fused-embedding models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

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

    _add_optional_commands(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args) or 0
    except (ValueError, OSError, ImportError) as error:
        # Bad input: one clear line, no traceback.
        print(f"hf-embfuse {args.command}: error: {error}", file=sys.stderr)
        return 2


# Commands implemented beside their feature: each module has `add_command(subparsers)`, which adds
# a subparser whose `run(args) -> int` default does the work.
COMMAND_MODULES = ("bake", "evaluation.command", "hub")


def _add_optional_commands(commands: argparse._SubParsersAction) -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"hf_embfuse.{name}").add_command(commands)


def _upgrade(args: argparse.Namespace) -> int:
    from .upgrade import upgrade_checkpoint

    print(f"wrote {upgrade_checkpoint(args.folder, args.out)} (format 2)")
    return 0


def _build(args: argparse.Namespace) -> int:
    from .build import build_to_folder
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe)
    result = build_to_folder(recipe, args.out, overwrite=args.overwrite, show_progress=not args.no_progress)
    for report in result.reports:
        print(report.alignment)
        fit = report.projection
        if fit.get("heldout_cosine") is not None:
            print(f"  projection: {fit['method']}, held-out anchor cosine {fit['heldout_cosine']:.3f}")
        elif fit.get("method") == "transport":
            # Too few anchors to hold any out leaves the linear comparison without a figure.
            linear = fit.get("linear_heldout_cosine")
            reached = "n/a (too few anchors)" if linear is None else f"{linear:.3f}"
            print(f"  projection: transport (k={fit['k']}); a linear map reached {reached}")
    print(f"wrote {args.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import describe_checkpoint, format_description

    description = describe_checkpoint(Path(args.folder))
    print(json.dumps(description, indent=2) if args.json else format_description(description))
    return 0


if __name__ == "__main__":
    sys.exit(main())
