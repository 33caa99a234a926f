"""Where hf_embfuse keeps derived files (converted tokenizers, benchmark checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder: `$HF_EMBFUSE_CACHE`, else `$XDG_CACHE_HOME/hf_embfuse`, else `~/.cache/hf_embfuse`."""
    explicit = os.environ.get("HF_EMBFUSE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hf_embfuse"
