"""Readers that load only a source's input-embedding table (HF checkpoints, GGUF, static vectors).

Importing this package stays light: transformers, gguf and pyarrow are imported by the readers
when they run.
"""

from .cache import cache_root
from .dispatch import SOURCE_KINDS, detect_source_kind, read_source, read_source_tokenizer
from .errors import SourceError
from .gguf import read_gguf_source
from .hf import read_hf_source
from .table import SourceTable
from .vectors import VECTOR_FORMATS, read_vectors_source

__all__ = [
    "SOURCE_KINDS",
    "VECTOR_FORMATS",
    "SourceError",
    "SourceTable",
    "cache_root",
    "detect_source_kind",
    "read_gguf_source",
    "read_hf_source",
    "read_source",
    "read_source_tokenizer",
    "read_vectors_source",
]
