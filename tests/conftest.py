"""Shared test settings: offline, one thread, tiny models. Topic fixtures live in tests/fixtures_*.py."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Remote code loaded in-process is cached as modules, and converted GGUF tokenizers are cached too:
# keep both out of the user's home.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="embfuse-modules-"))
os.environ.setdefault("HF_EMBFUSE_CACHE", tempfile.mkdtemp(prefix="embfuse-cache-"))

import torch

torch.set_num_threads(1)

pytest_plugins = [
    "tests.fixtures_models",
    "tests.fixtures_hub",
    "tests.fixtures_tokenizers",
    "tests.fixtures_imports",
    "tests.fixtures_real",
]
