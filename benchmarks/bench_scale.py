"""Build memory and time against the body's size: the transplant onto Gemma-3's tokenizer at 1B, 3B and 8B shapes.

Synthetic checkpoints of real shapes (random bf16, sharded, SmolLM2's tokenizer; `synthetic_checkpoint.py`)
are written under a scratch folder, never committed, and deleted after use unless `--keep`. For each shape
this runs, each in a process of its own under `/usr/bin/time -v`:

- `hf-embfuse build` of `examples/transplant_smollm2_to_gemma3.yaml` with the synthetic body as the base;
- `cp -r` of the base checkpoint: the floor any tool that writes a whole new checkpoint pays;
- `hf-embfuse bake` of the built folder (`--bake`, the 1B shape by default);
- `mergekit-tokensurgeon` on the same body, where `.venv-mergekit` is installed and `--tokensurgeon` given.

    make gemma
    .venv/bin/python benchmarks/bench_scale.py --shapes 1b 3b 8b

Memory and time depend on shapes alone; quality needs real models (`bench_transplant.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from synthetic_checkpoint import SHAPES, smollm2_tokenizer_folder, write_synthetic_checkpoint  # noqa: E402

HF_EMBFUSE = ROOT / ".venv" / "bin" / "hf-embfuse"
TOKENSURGEON = ROOT / ".venv-mergekit" / "bin" / "mergekit-tokensurgeon"
RECIPE = ROOT / "examples" / "transplant_smollm2_to_gemma3.yaml"


def timed(command: list[str], log: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (GiB) of `command`, from GNU time."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    begin = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            ["/usr/bin/time", "-v", *command], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    wall = time.perf_counter() - begin
    text = log.read_text()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}); see {log}:\n{text[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return {"seconds": round(wall, 1), "peak_gib": round(peak_kib / 2**20, 2)}


def recipe_for(base: Path, scratch: Path) -> Path:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(base=str(base), base_hub_id=None)
    for source in recipe["sources"]:
        source["path"] = os.path.expanduser(source["path"])
    path = scratch / f"recipe-{base.name}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if v is not None}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["1b", "3b", "8b"], choices=sorted(SHAPES))
    parser.add_argument("--bake", nargs="*", default=["1b"], help="shapes whose built folder is baked too")
    parser.add_argument(
        "--tokensurgeon", nargs="*", default=[], help="shapes to run mergekit-tokensurgeon on"
    )
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "embfuse-scale")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints and outputs")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_scale.json")
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    tokenizer = smollm2_tokenizer_folder()
    rows = []
    for shape in args.shapes:
        base = args.scratch / f"body-{shape}"
        if not (base / "config.json").exists():
            write_synthetic_checkpoint(base, shape, tokenizer)
        size = sum(p.stat().st_size for p in base.glob("*.safetensors")) / 1e9
        row = {"shape": shape, "checkpoint_gb": round(size, 2)}
        built = args.scratch / f"fused-{shape}"
        shutil.rmtree(built, ignore_errors=True)
        row["build"] = timed(
            [
                str(HF_EMBFUSE),
                "build",
                str(recipe_for(base, args.scratch)),
                "--out",
                str(built),
                "--no-progress",
            ],
            args.scratch / f"build-{shape}.log",
        )
        copy = args.scratch / f"copy-{shape}"
        shutil.rmtree(copy, ignore_errors=True)
        row["copy"] = timed(["cp", "-r", str(base), str(copy)], args.scratch / f"copy-{shape}.log")
        shutil.rmtree(copy, ignore_errors=True)
        if shape in args.bake:
            baked = args.scratch / f"baked-{shape}"
            shutil.rmtree(baked, ignore_errors=True)
            row["bake"] = timed(
                [str(HF_EMBFUSE), "bake", str(built), "--out", str(baked)], args.scratch / f"bake-{shape}.log"
            )
            shutil.rmtree(baked, ignore_errors=True)
        if shape in args.tokensurgeon and TOKENSURGEON.exists():
            donor = os.path.expanduser(yaml.safe_load(RECIPE.read_text())["sources"][0]["path"])
            row["tokensurgeon"] = timed(
                [str(TOKENSURGEON), str(base), donor, str(args.scratch / f"ts-{shape}")],
                args.scratch / f"ts-{shape}.log",
            )
        shutil.rmtree(built, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\nshape | checkpoint | build peak | build wall | copy floor | build / copy | bake peak")
    for row in rows:
        bake = row.get("bake", {}).get("peak_gib", "-")
        ratio = row["build"]["seconds"] / max(row["copy"]["seconds"], 1e-9)
        print(
            f"{row['shape']} | {row['checkpoint_gb']} GB | {row['build']['peak_gib']} GiB | "
            f"{row['build']['seconds']} s | {row['copy']['seconds']} s | {ratio:.1f}x | {bake} GiB"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
