"""Readers that load only a source's input-embedding table (HF checkpoints, GGUF, static vectors)."""

from .table import SourceTable

__all__ = ["SourceTable"]
