"""A fork server for the kill tests: import `hf_embfuse.cli` once, run each command in a forked child.

Starting `python -m hf_embfuse.cli` costs seconds of imports (torch, transformers) before any work
starts; killing a dozen such processes at random moments would mostly kill imports. This server
pays the imports once; each child it forks runs `hf_embfuse.cli.main(argv)`, the same code as the
console script, and can be SIGKILLed by the test at any moment of the real work.

Protocol, one JSON line each way on stdin/stdout:
    test -> server: `["build", "recipe.yaml", "--out", "out", ...]` (the CLI's argv)
    server -> test: `{"pid": N}` when the child starts, then `{"pid": N, "status": S}` when it ends,
                    S being the raw `os.waitpid` status (a signal number for a killed child).
The children's own output goes to the server's stderr.

Run as `python -m tests.kill_target` from the repository root.
"""

from __future__ import annotations

import json
import os
import sys

import safetensors.torch
import transformers

import hf_embfuse.baking
import hf_embfuse.build
import hf_embfuse.cli

# What every child would import lazily on first use: the tiny builds' architecture and tokenizer.
_WARM = (transformers.BertModel, transformers.PreTrainedTokenizerFast, safetensors.torch.save_file)


def _child(argv: list[str]) -> None:
    os.dup2(2, 1)  # stdout carries the protocol: the child's prints go to stderr
    code = 1
    try:
        code = hf_embfuse.cli.main(argv)
    finally:
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(argv)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "status": status}), flush=True)


if __name__ == "__main__":
    serve()
