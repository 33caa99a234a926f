"""Write an output folder all at once: build it beside the target, rename it into place when complete."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


class OutputExistsError(FileExistsError):
    """The output exists and overwriting was not asked for.

    The message names the Python argument (`overwrite=True`); `cli_message()` names the CLI flag instead.
    """

    def __init__(self, path: str | os.PathLike, kind: str = "folder") -> None:
        self.path, self.kind = Path(path), kind
        super().__init__(f"Output {kind} {str(path)!r} already exists; pass overwrite=True to replace it.")

    def cli_message(self) -> str:
        return f"Output {self.kind} {str(self.path)!r} already exists; pass --overwrite to replace it."


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", platform.node() or "host")


def _prefix(target: Path, kind: str) -> str:
    # The owner (host, pid) is part of the name so that a later run can tell a dead run's leftovers
    # from a live concurrent one; mkdtemp's random suffix never contains "-".
    return f".{target.name}.{kind}-{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(target: str | os.PathLike) -> list[Path]:
    """Remove the staging folders a killed run left beside `target`; return what was removed.

    Only folders named by this module (`.<name>.tmp-<host>-<pid>-*`, `.<name>.old-<host>-<pid>-*`) whose
    process ran on this host and no longer exists are touched. A run killed in the middle of swapping
    an old output for a new one leaves the old output in its `.old-*` folder and no `target`: that old
    output is put back, so `target` is again the previous complete output.
    """
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(.+)-(\d+)-[^-]+$")
    host = _host()
    for path in sorted(target.parent.iterdir()):
        match = pattern.match(path.name)
        if match is None or not path.is_dir():
            continue
        kind, owner_host, pid = match.group(1), match.group(2), int(match.group(3))
        if owner_host != host or pid == os.getpid() or _pid_alive(pid):
            continue
        previous = path / target.name
        if kind == "old" and previous.is_dir() and not target.exists():
            os.replace(previous, target)
            logger.warning("Restored %s from an interrupted overwrite (process %d).", target, pid)
        shutil.rmtree(path, ignore_errors=True)
        logger.info("Removed %s, left by process %d, which no longer runs.", path, pid)
        removed.append(path)
    return removed


def _new_folder_mode(parent: Path) -> int:
    """The permission bits a folder made now with `os.mkdir` gets (0o777 less the umask), measured with a
    probe folder: reading the umask with `os.umask` would briefly change it for every thread."""
    probe = parent / ".mode-probe"
    probe.mkdir()
    try:
        return stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.rmdir()


@contextlib.contextmanager
def atomic_output_dir(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it replaces `target` in one rename.

    If the body raises (or the process dies), `target` is untouched: either absent or the previous
    complete output. The temporary folder is removed on error; a killed process leaves only a hidden
    `.<name>.tmp-<host>-<pid>-*` folder, never a partial `target`, and the next run for the same
    target removes it (`remove_stale_staging`).
    """
    target = Path(target)
    remove_stale_staging(target)
    if target.exists() and not overwrite:
        raise OutputExistsError(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_prefix(target, "tmp"), dir=target.parent))
    # mkdtemp makes the folder private (0o700); the output gets what any new folder gets here
    # (what `save_pretrained` gives its folder), since it is renamed into place as it is.
    staging.chmod(_new_folder_mode(staging))
    try:
        yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=_prefix(target, "old"), dir=target.parent))
            os.replace(target, retired / target.name)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(retired / target.name, target)  # keep the previous output
                retired.rmdir()
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
