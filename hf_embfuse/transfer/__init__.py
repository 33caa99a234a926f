"""Vocabulary transfer: give a base model another tokenizer (or added tokens), built from its own table and donors'.

`hf_embfuse.fuse(base, sources, tokenizer=TARGET)` (recipe: `tokenizer:` / `added_tokens:`) lays every
table on the target vocabulary: the base's own as source 0 (copied where it matches, decomposed by
the base tokenizer elsewhere, masked where it has nothing), donors carried into the base space
through the anchors both sides share (transport or sparse coding), and the LM head rebuilt or tied.
"""

from .added_tokens import AddedTokensReport, add_tokens, read_added_tokens
from .base_side import BaseOnTarget, align_base, align_onto_target, base_source_table
from .errors import TargetError
from .install import Donor, install_target_vocabulary, mix_rows
from .report import format_rows, row_counts
from .sparse_coding import sparse_coding_plan
from .target import Target, load_target_tokenizer, resolve_target

__all__ = [
    "AddedTokensReport",
    "BaseOnTarget",
    "Donor",
    "Target",
    "TargetError",
    "add_tokens",
    "align_base",
    "align_onto_target",
    "base_source_table",
    "format_rows",
    "install_target_vocabulary",
    "load_target_tokenizer",
    "mix_rows",
    "read_added_tokens",
    "resolve_target",
    "row_counts",
    "sparse_coding_plan",
]
