"""What `import hf_embfuse` (and its light submodules) load, seen once per session from a fresh interpreter.

Import-time laziness can only be observed in a process that has imported nothing yet, but every such check
asks the same child: one run records the modules each step adds, and the tests read their part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Each step runs after the previous ones, so a module a later step loads is never hidden by an earlier one:
# a step can only see more modules than it would alone, never fewer.
CHILD = r"""
import json, sys
report = {}
import hf_embfuse
report["package"] = sorted(sys.modules)
report["dir"] = dir(hf_embfuse)
report["all"] = list(hf_embfuse.__all__)
before = set(sys.modules)
import hf_embfuse.evaluation as evaluation
report["evaluation"] = sorted(set(sys.modules) - before)
evaluation.parse_wordsim(["a b 1"])
report["evaluation after parse_wordsim"] = sorted(set(sys.modules) - before)
import hf_embfuse.sources
report["sources"] = sorted(sys.modules)
print(json.dumps(report))
"""


@pytest.fixture(scope="session")
def fresh_import_report() -> dict:
    """Module names loaded by each import step in one fresh interpreter: keys "package" (after
    `import hf_embfuse`, with its "dir" and "all"), "evaluation" and "evaluation after parse_wordsim" (added
    after the package), "sources" (everything, after `import hf_embfuse.sources`)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
