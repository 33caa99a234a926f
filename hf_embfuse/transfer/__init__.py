"""Vocabulary transfer: give a base model another tokenizer (or added tokens), built from its own table and donors'.

`hf_embfuse.fuse(base, sources, tokenizer=TARGET)` (recipe: `tokenizer:` / `added_tokens:`) lays every
table on the target vocabulary (see `hf_embfuse.build`): the base's own as source 0 (copied where it
matches, decomposed by the base tokenizer elsewhere, masked where it has nothing), donors carried into the
base space through the anchors both sides share (transport or OMP), and the LM head rebuilt or tied. This
package holds the target's side: resolving the tokenizer, adding tokens, installing the tables.
"""

from .added_tokens import AddedTokensReport, add_tokens, read_added_tokens
from .errors import TargetError
from .install import install_tables, set_vocabulary_config
from .report import format_rows, row_counts
from .target import Target, load_target_tokenizer, resolve_target

__all__ = [
    "AddedTokensReport",
    "Target",
    "TargetError",
    "add_tokens",
    "format_rows",
    "install_tables",
    "load_target_tokenizer",
    "read_added_tokens",
    "resolve_target",
    "row_counts",
    "set_vocabulary_config",
]
