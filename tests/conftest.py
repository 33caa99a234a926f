"""Shared test settings: offline, one thread, tiny models. Topic fixtures live in tests/fixtures_*.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch

torch.set_num_threads(1)

pytest_plugins = ["tests.fixtures_models", "tests.fixtures_hub", "tests.fixtures_tokenizers"]
