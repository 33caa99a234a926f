"""Write an output folder all at once: build it beside the target, rename it into place when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputExistsError(FileExistsError):
    """The output folder exists and overwriting was not asked for."""


@contextlib.contextmanager
def atomic_output_dir(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it replaces `target` in one rename.

    If the body raises (or the process dies), `target` is untouched: either absent or the previous
    complete output. The temporary folder is removed on error; a killed process leaves only a hidden
    `.<name>.tmp-*` folder, never a partial `target`.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"Output folder {str(target)!r} already exists; pass --overwrite to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
