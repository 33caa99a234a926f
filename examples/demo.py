"""`make demo`: build a fused MiniLM from SmolLM2 (GGUF) and GloVe-50d, then prove the checkpoint
stands alone by reloading it with `trust_remote_code` in a fresh process that cannot import hf_embfuse.

    python examples/demo.py [--out outputs/fused-minilm]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from hf_embfuse import build_to_folder, load_recipe
from hf_embfuse.inspection import describe_checkpoint, format_description

HERE = Path(__file__).resolve().parent
# The fresh-process check is test infrastructure, kept in the checkout's tests/, not in the package.
sys.path.insert(0, str(HERE.parent))
from tests.fresh_process import load_in_fresh_process  # noqa: E402

CARD_LINES = 18  # the metadata (base_model, library_name, pipeline_tag), the title and what it is
SENTENCES = ["Fused embeddings carry other models' knowledge.", "The cat sat on the mat."]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default=HERE / "fused_minilm.yaml", type=Path)
    parser.add_argument("--out", default=Path("outputs/fused-minilm"), type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    recipe = load_recipe(args.recipe)
    result = build_to_folder(recipe, args.out, overwrite=True, show_progress=True)
    print(f"\nbuilt {args.out} in {time.perf_counter() - start:.1f} s\n")
    for report in result.reports:
        print(report.alignment, end="\n\n")
    print(format_description(describe_checkpoint(args.out)))
    card = (args.out / "README.md").read_text(encoding="utf-8").splitlines()
    print(f"\nmodel card ({args.out / 'README.md'}), first lines:\n" + "\n".join(card[:CARD_LINES]) + "\n...")

    input_ids = result.tokenizer(SENTENCES, return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        expected = result.model.eval()(input_ids=input_ids).last_hidden_state
    workdir = args.out.parent / ".demo-check"
    (reloaded,) = load_in_fresh_process([(args.out.resolve(), "AutoModel", input_ids)], workdir)
    difference = (reloaded - expected).abs().max().item()
    print(
        f"\nreloaded in a fresh process with trust_remote_code (hf_embfuse not importable): max |Δ| = {difference:.2e}"
    )
    if difference > 1e-5:
        raise SystemExit("the reloaded model's outputs differ from the built model's")
    print("demo OK")


if __name__ == "__main__":
    main()
