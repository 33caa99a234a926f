"""`hf-embfuse eval`: a saved checkpoint, word-similarity files, JSON out, and every bad input as exit 2."""

from __future__ import annotations

import json

import pytest

from hf_embfuse.cli import main
from hf_embfuse.evaluation.command import write_json_atomic
from tests.fixtures_models import tiny_base, tiny_fused
from tests.test_evaluation_fused import PAIRS, make_tokenizer

ROWS = [
    "fused (learned)",
    "random-0 (identity)",
    "random-1 (identity)",
    "average baseline",
    "concat baseline",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fused")
    tiny_fused("bert").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def wordsim_file(tmp_path):
    path = tmp_path / "toy.tsv"
    path.write_text("word1\tword2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    return path


def test_eval_prints_table_and_writes_json(checkpoint, wordsim_file, tmp_path, capsys):
    out = tmp_path / "reports" / "eval.json"
    assert main(["eval", str(checkpoint), "--wordsim", str(wordsim_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| table | toy | mean |" in printed
    report = json.loads(out.read_text())
    assert report["checkpoint"] == str(checkpoint)
    assert report["metric"] == "spearman"
    tables = report["tables"]
    assert [name for name in tables if not name.endswith("(base)")] == ROWS
    assert len(tables) == len(ROWS) + 1
    for name, entry in tables.items():
        assert entry["datasets"]["toy"]["n_pairs"] == len(PAIRS), name
        assert entry["mean"] == entry["datasets"]["toy"]["spearman"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json"]  # no temporary file left


def test_existing_out_is_refused_unless_overwrite(checkpoint, wordsim_file, tmp_path, capsys):
    out = tmp_path / "eval.json"
    out.write_text("keep me")
    assert main(["eval", str(checkpoint), "--wordsim", str(wordsim_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert out.read_text() == "keep me"
    argv = ["eval", str(checkpoint), "--wordsim", str(wordsim_file), "--out", str(out), "--overwrite"]
    assert main(argv) == 0
    assert json.loads(out.read_text())["metric"] == "spearman"


def test_malformed_file_exits_2_with_line_numbers(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("cat dog 8.0\ncat\nsun moon 6.0\nsun moon high\ncar tree 1.0\n")
    out = tmp_path / "eval.json"
    assert main(["eval", str(checkpoint), "--wordsim", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-embfuse eval: error:")
    assert "line 2" in err and "line 4" in err and "line 3" not in err
    assert str(bad) in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("make_argv", "message"),
    [
        (lambda ckpt, data, tmp: ["eval", str(ckpt)], "--wordsim FILE"),
        (lambda ckpt, data, tmp: ["eval", str(ckpt), "--wordsim", str(tmp / "missing.tsv")], "not found"),
        (lambda ckpt, data, tmp: ["eval", str(tmp), "--wordsim", str(data)], "no config.json"),
        (lambda ckpt, data, tmp: ["eval", str(ckpt), "--wordsim", str(data), str(data)], "two datasets"),
    ],
    ids=["no-data", "missing-file", "not-a-checkpoint", "duplicate-name"],
)
def test_bad_input_exits_2(checkpoint, wordsim_file, tmp_path, capsys, make_argv, message):
    assert main(make_argv(checkpoint, wordsim_file, tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_standard_datasets(checkpoint, tmp_path):
    out = tmp_path / "standard.json"
    assert main(["eval", str(checkpoint), "--standard", "--out", str(out)]) == 0
    fused = json.loads(out.read_text())["tables"]["fused (learned)"]["datasets"]
    assert list(fused) == ["WS353", "SimLex999", "MEN"]
    assert [fused[name]["n_pairs"] for name in fused] == [353, 999, 3000]


def test_plain_checkpoint_is_one_table(tmp_path, wordsim_file):
    folder = tmp_path / "plain"
    tiny_base("bert").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    out = tmp_path / "plain.json"
    assert main(["eval", str(folder), "--wordsim", str(wordsim_file), "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["tables"]) == [f"{tmp_path.name}/plain (input embedding)"]


def test_write_json_atomic_never_clobbers(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    write_json_atomic(path, {"a": 3}, overwrite=True)
    assert json.loads(path.read_text()) == {"a": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
