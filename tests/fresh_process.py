"""Prove a checkpoint stands alone: run code in a fresh Python process that cannot import hf_embfuse.

The child runs from an empty working directory, with the source checkout removed from `sys.path` and
`hf_embfuse` blocked in `sys.modules`, offline, with stdin closed (a load that stops to ask on the
terminal ends at once instead of hanging), so only the code files saved beside the weights can make a
load work. `load_in_fresh_process` runs model forwards; `run_without_hf_embfuse` any snippet (a tokenizer
load, a pipeline, a `SentenceTransformer`). Used by the tests and by `make demo` (examples/demo.py
imports it from the checkout); it is test infrastructure, not part of the installed package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]  # the checkout this file lives in (tests/..)
# transformers' question when a load meets custom code and trust_remote_code was not passed down.
PROMPT = "Do you wish to run the custom code"
_PREAMBLE = f"""
import os, sys
REPO = {str(REPO)!r}
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != REPO]
sys.modules["hf_embfuse"] = None  # any `import hf_embfuse` now raises ImportError
"""
_FORWARD = r"""
import json
import torch, transformers
from safetensors.torch import load_file, save_file
requests = json.loads(sys.argv[1])
outputs = {}
for index, (folder, auto_class, inputs_file) in enumerate(requests):
    model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True).eval()
    assert "hf_embfuse" not in type(model).__module__, type(model).__module__
    x = load_file(inputs_file)["input_ids"]
    with torch.no_grad():
        out = model(input_ids=x)
    outputs[f"out{index}"] = (out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state).contiguous()
save_file(outputs, sys.argv[2])
"""


def load_in_fresh_process(
    requests: list[tuple[Path, str, torch.Tensor]], workdir: Path, env: dict | None = None
):
    """Run `AutoX.from_pretrained(folder, trust_remote_code=True)(input_ids)` in a clean child; return outputs."""
    from safetensors.torch import load_file, save_file

    workdir = Path(workdir).resolve()  # the child runs inside it: every path handed over must be absolute
    workdir.mkdir(parents=True, exist_ok=True)
    encoded = []
    for index, (folder, auto_class, input_ids) in enumerate(requests):
        inputs_file = workdir / f"inputs{index}.safetensors"
        save_file({"input_ids": input_ids.contiguous()}, inputs_file)
        # A local folder is made absolute (the child runs elsewhere); anything else is a Hub repo id.
        location = str(Path(folder).resolve()) if Path(folder).exists() else str(folder)
        encoded.append((location, auto_class, str(inputs_file)))
    result_file = workdir / "outputs.safetensors"
    run_without_hf_embfuse(_FORWARD, json.dumps(encoded), str(result_file), workdir=workdir, env=env)
    loaded = load_file(result_file)
    return [loaded[f"out{index}"] for index in range(len(requests))]


def run_without_hf_embfuse(
    code: str, *args: str, workdir: Path, timeout: float = 300, env: dict | None = None
) -> str:
    """Run `code` (its `sys.argv[1:]` = `args`) in the isolated child; return its stdout + stderr.

    Raises:
        RuntimeError: the child failed (the message holds the end of its output).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": "", **(env or {})}
    process = subprocess.run(
        [sys.executable, "-c", _PREAMBLE + code, *args],
        cwd=workdir,
        env=child_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = process.stdout + process.stderr
    if process.returncode != 0:
        raise RuntimeError(f"child process failed:\n{output[-4000:]}")
    return output
