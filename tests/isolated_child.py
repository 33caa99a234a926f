"""Run a Python snippet the way a user without hf_embfuse would: fresh process, no checkout, no stdin.

The same isolation as `tests/fresh_process.py` (checkout off `sys.path`, `hf_embfuse` blocked, offline,
an empty working folder), for checks that are not a model forward: a tokenizer load, a pipeline, a
`SentenceTransformer`. stdin is closed, so a load that stops to ask on the terminal ends at once instead
of hanging, and what it printed is in the output for the test to look at.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fresh_process import REPO

# transformers' question when a load meets custom code and trust_remote_code was not passed down.
PROMPT = "Do you wish to run the custom code"
_PREAMBLE = f"""
import os, sys
REPO = {str(REPO)!r}
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != REPO]
sys.modules["hf_embfuse"] = None  # any `import hf_embfuse` now raises ImportError
"""


def run_without_hf_embfuse(code: str, *args: str, workdir: Path, timeout: float = 300) -> str:
    """Run `code` (its `sys.argv[1:]` = `args`) in the isolated child; return stdout + stderr.

    Raises:
        RuntimeError: the child failed (the message holds the end of its output).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    process = subprocess.run(
        [sys.executable, "-c", _PREAMBLE + code, *args],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = process.stdout + process.stderr
    if process.returncode != 0:
        raise RuntimeError(f"child process failed:\n{output[-4000:]}")
    return output
