"""Measure how much a piece of code raises a process's peak memory, in a child process of its own.

The child runs `setup` (imports, small objects), records its peak RSS, runs `code`, and reports the rise
of the peak. Imports alone cost hundreds of MB (torch ~220 MiB), so only the rise says whether `code`
held a checkpoint's body. Pages of a memory-mapped file count in RSS once touched, so an mmap-based load
shows up here as well as a copy does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_MARKER = "PEAK_RISE_BYTES="
# The peak is read from /proc/self/status (VmHWM), not getrusage: ru_maxrss survives exec, so a child of a
# large process (pytest after a few hundred tests) starts with its parent's peak and would show no rise.
# Writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS, so setup's own peak is not counted.
_TEMPLATE = """
import sys
sys.path.insert(0, {repo!r})
{setup}
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the peak restarts from the current RSS
except OSError:
    pass  # then setup's own peak is the baseline
_baseline = _peak()
{code}
print({marker!r} + str(_peak() - _baseline), flush=True)
"""


def peak_rise(code: str, setup: str = "", *, timeout: float = 600) -> int:
    """Bytes by which running `code` raises the peak RSS of a fresh Python process, after `setup` ran.

    Args:
        code: the statements to measure (dedented).
        setup: statements run first and not counted, e.g. the imports.
        timeout: seconds before the child is killed.

    Raises:
        RuntimeError: the child failed; the message holds its stderr.
    """
    script = _TEMPLATE.format(
        repo=str(REPO), setup=textwrap.dedent(setup), code=textwrap.dedent(code), marker=_MARKER
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(_MARKER)]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"the measured child failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return int(lines[-1][len(_MARKER) :])
