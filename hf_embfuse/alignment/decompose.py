"""Batch-encode canonical texts into a source tokenizer's pieces, as word starts or continuations.

A tokenizer's own `encode` answers "how is this *text* tokenised", which is not the question: a base
token `##ing` is the *continuation* `ing`, and a plain `encode("ing")` on a SentencePiece or
RoBERTa-style tokenizer quietly turns it into the word-start `▁ing`/`Ġing`. So the encoder is a
derived copy of the fast backend (same model object, nothing re-read) with every automatic
prefix space switched off, and the word-start flag is written explicitly:

| family     | word start            | continuation                                   |
|------------|-----------------------|------------------------------------------------|
| byte-level | `" " + text`          | `text`                                         |
| metaspace  | `" " + text` (-> `▁`) | `text`                                         |
| wordpiece  | `text`                | `"##" + text`, the `##` word kept whole, so    |
|            |                       | the greedy matcher starts with a `##` piece;   |
|            |                       | a text starting with punctuation is a word     |
|            |                       | start to BERT, encoded as such                 |
| word       | `text`                | `text` (no convention to honour)               |

The derived copy also has no post-processor, padding or truncation (BERT checkpoints often ship
with padding to 128 switched on in `tokenizer.json`). The caller checks the result: a WordPiece
continuation whose first piece is not a `##` piece (the greedy matcher fell back to `#`) is
rejected there.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ._strings import take
from .canonical import BYTE_LEVEL, METASPACE, WORDPIECE, TokenizerFamily, encodable_mask, starts_isolated

if TYPE_CHECKING:
    from .vocabulary import Vocabulary

logger = logging.getLogger(__name__)

_BATCH = 8192
# Chunks per `encode_batch` call: enough to keep a many-core machine busy, few enough for a live progress bar.
_CHUNKS_PER_CALL = 16
# Continuation texts for WordPiece arrive as "##" + text: split on whitespace and isolate punctuation
# (BERT's definition: ASCII punctuation and Unicode P*) everywhere except in the leading "##" word,
# so the greedy matcher starts from a "##" piece and the rest is pre-tokenised as BERT would.
_PUNCTUATION = r"[!-/:-@\[-`{-~\p{P}]"
_WORDPIECE_CONTINUATION = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "WhitespaceSplit"},
        {
            "type": "Split",
            "pattern": {"Regex": rf"^##[^\s!-/:-@\[-`{{-~\p{{P}}]*|{_PUNCTUATION}"},
            "behavior": "Isolated",
            "invert": False,
        },
    ],
}


def _switch_off_prefix_space(node: Any) -> Any:
    """A component's JSON with `Prepend` normalisers removed and prefix spaces switched off."""
    if isinstance(node, list):
        return [n for n in (_switch_off_prefix_space(x) for x in node) if n is not None]
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    if kind == "Prepend":
        return None
    node = {k: _switch_off_prefix_space(v) for k, v in node.items()}
    if kind == "ByteLevel":
        node["add_prefix_space"] = False
    elif kind == "Metaspace":
        node["prepend_scheme"] = "never"
        if "add_prefix_space" in node:
            node["add_prefix_space"] = False
    return node


def _components(normalizer: Any, pre_tokenizer: Any) -> tuple[Any, Any]:
    """Build normaliser and pre-tokenizer objects from JSON (the library has no public constructor)."""
    from tokenizers import Tokenizer

    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"},
    }
    holder = Tokenizer.from_str(json.dumps(spec))
    return holder.normalizer, holder.pre_tokenizer


def _state(component: Any) -> Any:
    return None if component is None else json.loads(component.__getstate__())


def _derived(backend: Any, normalizer: Any, pre_tokenizer: Any) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer(backend.model)  # shares the model, copies nothing
    norm, pre = _components(normalizer, pre_tokenizer)
    if norm is not None:
        tok.normalizer = norm
    if pre is not None:
        tok.pre_tokenizer = pre
    return tok


class PieceEncoder:
    """Encodes canonical `(text, word_start)` pairs with a source's fast tokenizer, in batches.

    Args:
        tokenizer: the source's transformers tokenizer; it must have a fast backend
            (`backend_tokenizer`), which is left untouched.
        family: its word-boundary convention.
    """

    def __init__(self, tokenizer: Any, family: TokenizerFamily) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                f"Decomposition needs a fast tokenizer with `backend_tokenizer`; got {type(tokenizer).__name__}. "
                "Load the source tokenizer with `AutoTokenizer.from_pretrained(..., use_fast=True)`."
            )
        self.family = family
        normalizer = _switch_off_prefix_space(_state(backend.normalizer))
        pre_tokenizer = _switch_off_prefix_space(_state(backend.pre_tokenizer))
        self._start = _derived(backend, normalizer, pre_tokenizer)
        if family.name == WORDPIECE:
            self._continuation = _derived(backend, normalizer, _WORDPIECE_CONTINUATION)
        else:
            self._continuation = self._start

    def position_free(self, texts: list[str]) -> np.ndarray:
        """Continuation texts the source would split off as a new word anyway: encode them as word starts.

        A WordPiece tokenizer always splits punctuation and CJK ideographs off the word before
        them, so BPE's continuation `"!"` or `"'s"` is, to BERT, the word `"!"` / `"'"` + `"s"`.
        """
        if self.family.name != WORDPIECE:
            return np.zeros(len(texts), dtype=bool)
        return starts_isolated(texts)

    def _prefix(self, word_start: bool) -> str:
        if word_start:
            return " " if self.family.name in (BYTE_LEVEL, METASPACE) else ""
        return self.family.continuation_prefix if self.family.name == WORDPIECE else ""

    def encode(
        self, texts: list[str], word_start: bool, progress: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode texts that all start a word, or all continue one.

        Args:
            texts: canonical texts (valid Unicode, non-empty).
            word_start: their position.
            progress: an optional tqdm bar, advanced by the number of texts encoded.

        Returns:
            `(flat, lengths)`: the piece ids of all texts one after another, and how many each has.
        """
        encoder = self._start if word_start else self._continuation
        prefix = self._prefix(word_start)
        flat, lengths = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for lo in range(0, len(texts), _BATCH * _CHUNKS_PER_CALL):
            group = texts[lo : lo + _BATCH * _CHUNKS_PER_CALL]
            # Each chunk is one pre-tokenised "sentence" whose words are the texts: each word is
            # normalised, pre-tokenised and tokenised on its own, exactly as if encoded alone, but the
            # result is one Encoding per chunk instead of one Python object per text (`word_ids` tells
            # the texts apart). `encode_batch` spreads the chunks over the backend's threads, unless
            # TOKENIZERS_PARALLELISM=false.
            chunks = [[prefix + t for t in group[i : i + _BATCH]] for i in range(0, len(group), _BATCH)]
            for chunk, encoding in zip(
                chunks,
                encoder.encode_batch(chunks, is_pretokenized=True, add_special_tokens=False),
                strict=True,
            ):
                flat.append(np.asarray(encoding.ids, dtype=np.int64))
                words = np.asarray(encoding.word_ids, dtype=np.int64)
                lengths.append(np.bincount(words, minlength=len(chunk)))
            if progress is not None:
                progress.update(len(group))
        return np.concatenate(flat), np.concatenate(lengths)


def decompose_rows(
    base: Vocabulary,
    src: Vocabulary,
    tokenizer: Any,
    rows: np.ndarray,
    usable: np.ndarray,
    show_progress: bool,
    name: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-tokenise base `rows` with the source tokenizer at each token's word position.

    A decomposition is kept only if every piece is a content row of the source table, and a
    continuation really starts with a continuation piece.

    Args:
        base: the base vocabulary.
        src: the source vocabulary.
        tokenizer: the source tokenizer (needs a fast backend; otherwise nothing is decomposed).
        rows: base rows still uncovered.
        usable: source ids that have a row in the source table.
        show_progress: show a tqdm bar.
        name: the source's name, for messages.

    Returns:
        `(rows, flat, lengths)` for the accepted decompositions: their base rows, all piece ids one
        after another, and the number of pieces of each.
    """
    rows = rows[encodable_mask(take(base.texts, rows))]
    try:
        encoder = PieceEncoder(tokenizer, src.family)
    except ValueError as e:
        logger.warning("Source %r: not decomposing %d tokens: %s", name, rows.size, e)
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    good_piece = src.content & usable
    out_rows, out_flat, out_lengths = [], [], []
    with tqdm(total=rows.size, desc=f"Decomposing for {name}", unit="tok", disable=not show_progress) as bar:
        starts = base.word_start[rows].copy()
        starts[~starts] = encoder.position_free(take(base.texts, rows[~starts]))
        for flag in (True, False):
            sel = rows[starts == flag]
            if sel.size == 0:
                continue
            flat, lengths = encoder.encode(take(base.texts, sel), flag, progress=bar)
            # Trust a decomposition only if every piece is a content row the source table has: an
            # [UNK] or any other special piece would put a meaningless row into a content token.
            in_vocab = flat < good_piece.size
            bad_piece = ~in_vocab
            bad_piece[in_vocab] = ~good_piece[flat[in_vocab]]
            bad = np.bincount(np.repeat(np.arange(sel.size), lengths), weights=bad_piece, minlength=sel.size)
            accept = (lengths > 0) & (bad == 0)
            if not flag and src.family.name == WORDPIECE:
                # The greedy WordPiece matcher falls back to a word-start piece ("#") when no
                # continuation piece fits: that is not a continuation any more.
                first = np.cumsum(lengths) - lengths
                nonempty = lengths > 0
                accept[nonempty] &= ~src.word_start[np.minimum(flat[first[nonempty]], len(src) - 1)]
            keep = np.repeat(accept, lengths)
            out_rows.append(sel[accept])
            out_flat.append(flat[keep])
            out_lengths.append(lengths[accept])
    if not out_rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(out_rows), np.concatenate(out_flat), np.concatenate(out_lengths)
