"""The package's public names: one lazy-import table, `dir()`, and `hf_embfuse.bake` as function and module."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import hf_embfuse

# Modules that `import hf_embfuse` must not load: they belong to building, training and publishing.
HEAVY = ("peft", "pydantic", "hf_embfuse.bake", "hf_embfuse.build", "hf_embfuse.recipe", "hf_embfuse.sources")

CHILD = r"""
import json, sys
import hf_embfuse
loaded = [name for name in json.loads(sys.argv[1]) if name in sys.modules]
print(json.dumps({"loaded": loaded, "dir": dir(hf_embfuse), "all": hf_embfuse.__all__}))
"""


def _in_fresh_process() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(HEAVY)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_is_light_and_dir_lists_every_public_name():
    report = _in_fresh_process()
    assert report["loaded"] == []
    assert set(report["all"]) <= set(report["dir"])
    assert {"bake", "bake_to_folder", "fuse", "push_to_hub", "load_embfuse_folder"} <= set(report["dir"])


def test_every_public_name_resolves():
    for name in hf_embfuse.__all__:
        assert getattr(hf_embfuse, name) is not None, name


def test_unknown_names_raise_attribute_error():
    try:
        hf_embfuse.no_such_name  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("hf_embfuse.no_such_name resolved")


def test_bake_is_the_function_and_the_module():
    from hf_embfuse.bake import bake_to_folder
    from tests.fixtures_models import tiny_fused

    assert hf_embfuse.bake is sys.modules["hf_embfuse.bake"]
    assert hf_embfuse.bake.bake_to_folder is bake_to_folder is hf_embfuse.bake_to_folder
    baked = hf_embfuse.bake(tiny_fused("bert"))
    assert type(baked).__name__ == "BertModel"
    assert "Raises:" in hf_embfuse.bake.__call__.__doc__


def test_test_infrastructure_is_not_in_the_package():
    import importlib.util
    from pathlib import Path

    # verify.py (a fresh-process loader that assumed the source checkout) moved to tests/fresh_process.py.
    assert importlib.util.find_spec("hf_embfuse.verify") is None
    package = Path(hf_embfuse.__file__).parent
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert "from tests" not in text and "import tests" not in text, path


# --------------------------------------------------------------------------- one task table

TASK_CHILD = r"""
import hf_embfuse.modeling_embfuse as m
# A task added to the one table is a recipe task at once: nothing else lists the names.
m.TASKS = (*m.TASKS, m.EmbFuseTask("new-task", "EmbFuseModel", m.AutoModel, "feature-extraction", "FEATURE_EXTRACTION"))
from hf_embfuse.recipe import parse_recipe
print(parse_recipe({"base": "b", "task": "new-task", "sources": [{"path": "s"}]}).task)
"""


def test_recipe_tasks_come_from_the_task_table():
    from typing import get_args

    from hf_embfuse.modeling_embfuse import TASKS
    from hf_embfuse.recipe import Recipe

    assert get_args(Recipe.model_fields["task"].annotation) == tuple(task.name for task in TASKS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", TASK_CHILD], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "new-task"


def test_a_folder_naming_an_unknown_wrapper_lists_the_tables_wrappers(tmp_path):
    import pytest

    from hf_embfuse.bake import bake_to_folder
    from hf_embfuse.modeling_embfuse import TASKS
    from tests.fixtures_models import tiny_fused

    tiny_fused("bert").save_pretrained(tmp_path / "fused")
    config_file = tmp_path / "fused" / "config.json"
    config_file.write_text(config_file.read_text().replace('"EmbFuseModel"', '"EmbFuseForQuestionAnswering"'))
    with pytest.raises(ValueError, match="EmbFuseForQuestionAnswering") as caught:
        bake_to_folder(tmp_path / "fused", tmp_path / "out")
    assert ", ".join(task.wrapper for task in TASKS) in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_argparse_lives_in_the_cli():
    import importlib.util
    from pathlib import Path

    for module in ("hf_embfuse.bake", "hf_embfuse.evaluation.command"):
        source = Path(importlib.util.find_spec(module).origin).read_text()
        assert "argparse" not in source and "add_command" not in source, module
    help_text = subprocess.run(
        [sys.executable, "-m", "hf_embfuse.cli", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    for command in ("build", "inspect", "bake", "eval", "push", "upgrade"):
        assert command in help_text, command
