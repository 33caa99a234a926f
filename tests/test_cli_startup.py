"""`hf-embfuse --help` answers at once: the command parses its arguments before importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ["build", "inspect", "upgrade", "bake", "eval", "push"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

# One child process: it starts as the console script does (`sys.argv[0]` is the command), asks for every
# help text, then lists what it imported.
CHILD = f"""
import sys
sys.argv = ["hf-embfuse"]
from hf_embfuse.cli import main
for command in ([],) + tuple([name] for name in {COMMANDS!r}):
    try:
        main([*command, "--help"])
    except SystemExit as stop:
        assert stop.code == 0, (command, stop.code)
print(sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "transformers")))
"""


def test_every_help_text_imports_neither_torch_nor_transformers():
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("usage: hf-embfuse") == 1 + len(COMMANDS)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_console_script_answers_help_about_as_fast_as_python_starts():
    script = Path(sys.executable).with_name("hf-embfuse")

    def seconds(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=ENV, timeout=120)
        return time.perf_counter() - start

    bare = seconds([sys.executable, "-c", "pass"])
    # Importing torch alone takes ~30x a bare start; argparse and the package's own modules take ~3x.
    assert seconds([str(script), "--help"]) < 1.5 + 10 * bare
