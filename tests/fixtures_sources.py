"""Tiny on-disk sources for the reader tests: HF checkpoints, GGUF files, static vector files.

Everything is generated in `tmp_path`: hidden size 16, vocabularies of a few hundred at most.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import BertConfig, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, T5Config

from tests.fixtures_tokenizers import make_wordpiece_tokenizer

HIDDEN = 16
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "##s", "##ing", *[f"w{i}" for i in range(52)]]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = len(SPECIALS) + len(WORDS)  # 65


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A cased WordPiece tokenizer over `SPECIALS + WORDS`, built in memory."""
    return make_wordpiece_tokenizer(WORDS, lowercase=False, specials=SPECIALS)


def tiny_config(arch: str) -> transformers.PretrainedConfig:
    common = {"vocab_size": VOCAB}
    if arch == "bert":
        return BertConfig(
            **common, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24
        )
    if arch == "gpt2":
        return GPT2Config(
            **common, n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=32, bos_token_id=2, eos_token_id=3
        )
    if arch == "llama":
        return LlamaConfig(
            **common,
            hidden_size=HIDDEN,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=False,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        )
    if arch == "t5":
        return T5Config(
            **common, d_model=HIDDEN, d_ff=24, d_kv=8, num_layers=1, num_heads=2, decoder_start_token_id=0
        )
    raise ValueError(arch)


def save_tiny_checkpoint(
    folder: Path,
    arch: str = "bert",
    model_class: str = "AutoModel",
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Save a random tiny model and tokenizer with `save_pretrained`; return its input-embedding weight.

    Args:
        folder: where to save.
        arch: one of bert, gpt2, llama, t5.
        model_class: a transformers class name (`BertForMaskedLM`...) or `AutoModel`.
        dtype: dtype of the saved weights.
        max_shard_size: shard the weights (e.g. `"20KB"`).
    """
    torch.manual_seed(seed)
    config = tiny_config(arch)
    if model_class == "AutoModel":
        model = transformers.AutoModel.from_config(config)
    else:
        model = getattr(transformers, model_class)(config)
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    tiny_tokenizer().save_pretrained(folder)
    return model.get_input_embeddings().weight.detach().float().clone()


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def random_table(rows: int, width: int, seed: int = 0) -> np.ndarray:
    """Float32 values whose 9-significant-digit text form round-trips exactly."""
    return np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)


def vector_lines(words: list[str], values: np.ndarray, trailing: str = "") -> list[str]:
    return [
        w + " " + " ".join(f"{x:.9g}" for x in row) + trailing for w, row in zip(words, values, strict=True)
    ]


def write_word2vec_binary(
    path: Path, words: list[str], values: np.ndarray, header_count: int | None = None
) -> None:
    """The word2vec.c layout: `count dim\\n`, then per word `word ` + float32 LE bytes + `\\n`."""
    count = len(words) if header_count is None else header_count
    with open(path, "wb") as f:
        f.write(f"{count} {values.shape[1]}\n".encode())
        for word, row in zip(words, values, strict=True):
            f.write(word.encode("utf-8") + b" " + row.astype("<f4").tobytes() + b"\n")


GGUF_SPECIALS = ["<unk>", "<s>", "</s>"]
GGUF_MERGES = ["Ġ t", "Ġt h", "Ġth e"]
GGUF_WIDTH = 64  # a multiple of the 32-value quantisation blocks


def gguf_tokens() -> list[str]:
    """A byte-level BPE vocabulary: specials, the 256 byte symbols, then a few merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = bytes_to_unicode()
    return GGUF_SPECIALS + [symbols[b] for b in range(256)] + ["Ġt", "Ġth", "Ġthe"]


def write_tiny_gguf(
    path: Path,
    qtype: str = "Q8_0",
    *,
    transposed: bool = False,
    with_embedding: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Write a tiny Llama-architecture GGUF with a tokenizer; return the float32 table before quantisation.

    Args:
        qtype: the `token_embd.weight` storage type (a `gguf.GGMLQuantizationType` name).
        transposed: store the table as (width, vocab), as some converters do.
        with_embedding: leave `token_embd.weight` out when False.
    """
    import gguf
    from gguf.quants import quantize

    tokens = gguf_tokens()
    table = random_table(len(tokens), GGUF_WIDTH, seed)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tiny test model")
    writer.add_block_count(1)
    writer.add_embedding_length(GGUF_WIDTH)
    writer.add_context_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(GGUF_SPECIALS) + [1] * (len(tokens) - len(GGUF_SPECIALS)))
    writer.add_token_merges(GGUF_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    if with_embedding:
        stored = np.ascontiguousarray(table.T) if transposed else table
        kind = gguf.GGMLQuantizationType[qtype]
        data = quantize(stored, kind)
        writer.add_tensor("token_embd.weight", data, raw_shape=data.shape, raw_dtype=kind)
    writer.add_tensor("output_norm.weight", np.ones(GGUF_WIDTH, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return table
