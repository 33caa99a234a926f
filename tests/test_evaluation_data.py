"""Word-similarity loaders: the usual layouts, and malformed lines reported by number."""

from __future__ import annotations

import re

import pytest

from hf_embfuse.evaluation import (
    WordSimFormatError,
    find_wordsim_files,
    load_standard_wordsim,
    load_wordsim,
    parse_wordsim,
)

SIMLEX_HEADER = "word1\tword2\tPOS\tSimLex999\tconc(w1)\tconc(w2)\tconcQ\tAssoc(USF)\tSimAssoc333\tSD(SimLex)"


@pytest.mark.parametrize(
    ("text", "kwargs", "pairs", "column"),
    [
        ("love\tsex\t6.77\ntiger\tcat\t7.35\n", {}, [("love", "sex", 6.77), ("tiger", "cat", 7.35)], 2),
        (
            "sun sunlight 50.000000\nautomobile  car 50\n",
            {},
            [("sun", "sunlight", 50.0), ("automobile", "car", 50.0)],
            2,
        ),
        (
            "# WordSim\n# Word 1\tWord 2\tHuman (mean)\nlove\tsex\t6.77\n\n#x\ttiger\t1\ntiger\tcat\t7.35\n",
            {},
            [("love", "sex", 6.77), ("tiger", "cat", 7.35)],
            2,
        ),
        ("# MEN\nword1\tword2\tscore\nsun\tsunlight\t50.0\n", {}, [("sun", "sunlight", 50.0)], "score"),
        (
            f"{SIMLEX_HEADER}\nold\tnew\tA\t1.58\t2.72\t2.81\t2\t7.25\t1\t0.41\n",
            {},
            [("old", "new", 1.58)],
            "SimLex999",
        ),
        (
            f"{SIMLEX_HEADER}\nold\tnew\tA\t1.58\t2.72\t2.81\t2\t7.25\t1\t0.41\n",
            {"score_column": "assoc(usf)"},
            [("old", "new", 7.25)],
            "Assoc(USF)",
        ),
        ("a b x 3.5 9\nc d y 1 2\n", {"score_column": 3}, [("a", "b", 3.5), ("c", "d", 1.0)], 3),
        ("a\tb\t1\r\nc\td\t-2e-1\r\n", {}, [("a", "b", 1.0), ("c", "d", -0.2)], 2),
        ("a;b;1\nc;d;2\n", {"delimiter": ";"}, [("a", "b", 1.0), ("c", "d", 2.0)], 2),
        ("new york\tcity\t8\n", {}, [("new york", "city", 8.0)], 2),
    ],
    ids=[
        "tab",
        "space",
        "comments",
        "header",
        "simlex-columns",
        "named-column",
        "index-column",
        "crlf",
        "delimiter",
        "phrase",
    ],
)
def test_layouts(text, kwargs, pairs, column):
    dataset = parse_wordsim(text.splitlines(keepends=True), name="d", **kwargs)
    assert list(dataset) == pairs
    assert len(dataset) == len(pairs)
    assert dataset.score_column == column


@pytest.mark.parametrize(
    ("text", "kwargs", "lines", "message"),
    [
        (
            "a\tb\t1\nc\td\n#\ne\tf\t2\ng\th\tx\n",
            {},
            [2, 5],
            r"line 2: expected at least 3 columns, got 2; line 5: score 'x'",
        ),
        ("w1 w2 score\na b 1\nc d nan\n", {}, [3], "score 'nan' is not a finite number"),
        ("a\t\t1\n", {}, [1], "line 1: empty word"),
        ("word1\tword2\n", {}, [1], "header has 2 columns, no score column"),
    ],
)
def test_malformed_lines_are_listed_by_number(text, kwargs, lines, message):
    with pytest.raises(WordSimFormatError, match=message) as info:
        parse_wordsim(text.splitlines(), name="bad.tsv", **kwargs)
    assert [number for number, _ in info.value.errors] == lines
    assert isinstance(info.value, ValueError) and "bad.tsv" in str(info.value)


def test_many_errors_are_summarised():
    text = ["a b 1"] + [f"w{i} only" for i in range(30)]
    with pytest.raises(WordSimFormatError, match=r"30 malformed line.*line 21: .*and 10 more") as info:
        parse_wordsim(text)
    assert len(info.value.errors) == 30


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("# only comments\n\n", {}, "no word pairs found"),
        (
            "w1\tw2\tscore\na\tb\t1\n",
            {"score_column": "rating"},
            "no column 'rating' in the header on line 1",
        ),
    ],
)
def test_unusable_files(text, kwargs, message):
    with pytest.raises(WordSimFormatError, match=message):
        parse_wordsim(text.splitlines(), **kwargs)


def test_score_column_index_must_not_be_a_word_column():
    with pytest.raises(ValueError, match="`score_column` 1 would read a word column"):
        parse_wordsim(["a b 1"], score_column=1)


def test_load_wordsim_reads_a_file_and_names_it(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# c\nx y 2\n", encoding="utf-8")
    dataset = load_wordsim(path)
    assert dataset.name == "mine" and list(dataset) == [("x", "y", 2.0)] and dataset.words == ["x", "y"]
    path.write_text("x y\n", encoding="utf-8")
    with pytest.raises(WordSimFormatError, match=re.escape(str(path))):
        load_wordsim(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.tsv"):
        load_wordsim(tmp_path / "missing.tsv")


def test_find_and_load_standard_files_under_a_root(tmp_path):
    folder = tmp_path / "hyperhyper" / "evaluation_datasets" / "en" / "ws"
    folder.mkdir(parents=True)
    (folder / "bruni_men.tsv").write_text("word1\tword2\tscore\nsun\tsunlight\t50\n", encoding="utf-8")
    assert set(find_wordsim_files(tmp_path)) == {"MEN"}
    assert list(load_standard_wordsim(["MEN"], root=tmp_path)["MEN"]) == [("sun", "sunlight", 50.0)]
    with pytest.raises(FileNotFoundError, match=r"'WS353' not found\. Run `make install`"):
        load_standard_wordsim(["WS353"], root=tmp_path)
    with pytest.raises(ValueError, match="Unknown standard dataset 'RW'"):
        load_standard_wordsim(["RW"], root=tmp_path)


def test_importing_the_package_loads_no_evaluation_machinery(fresh_import_report):
    # The loaders are standard library only; torch-using modules load on first use of their names.
    assert fresh_import_report["evaluation"] == ["hf_embfuse.evaluation"]
    new = {name for name in fresh_import_report["evaluation after parse_wordsim"] if "hf_embfuse" in name}
    assert new == {"hf_embfuse.evaluation", "hf_embfuse.evaluation.wordsim_data"}, new


@pytest.mark.integration
def test_the_installed_standard_datasets_load_completely():
    datasets = load_standard_wordsim()
    assert {name: len(d) for name, d in datasets.items()} == {"WS353": 353, "SimLex999": 999, "MEN": 3000}
    assert next(iter(datasets["WS353"])) == ("love", "sex", 6.77)
    assert datasets["MEN"].score_column == "score"
