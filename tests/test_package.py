"""The package's public names: one lazy-import table, `dir()`, and `hf_embfuse.bake` a plain function."""

from __future__ import annotations

import sys

import pytest

import hf_embfuse

# Modules that `import hf_embfuse` must not load: they belong to building, training and publishing.
HEAVY = (
    "peft",
    "pydantic",
    "hf_embfuse.baking",
    "hf_embfuse.build",
    "hf_embfuse.recipe",
    "hf_embfuse.sources",
)


def test_import_is_light_and_dir_lists_every_public_name(fresh_import_report):
    report = fresh_import_report  # one fresh interpreter, shared with the other import-laziness tests
    assert [name for name in HEAVY if name in report["package"]] == []
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


def test_bake_is_a_plain_function_whatever_is_imported():
    import types

    from hf_embfuse.baking import bake, bake_to_folder
    from tests.fixtures_models import tiny_fused

    assert isinstance(hf_embfuse.bake, types.FunctionType) and hf_embfuse.bake is bake
    assert hf_embfuse.bake_to_folder is bake_to_folder
    assert type(sys.modules["hf_embfuse.baking"]) is types.ModuleType  # no module-class swap
    baked = hf_embfuse.bake(tiny_fused("bert"))
    assert type(baked).__name__ == "BertModel"
    assert "Raises:" in hf_embfuse.bake.__doc__


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


def test_recipe_tasks_come_from_the_task_table(monkeypatch):
    import importlib
    from typing import get_args

    import hf_embfuse.modeling_embfuse as m
    import hf_embfuse.recipe
    from hf_embfuse.recipe import Recipe

    assert get_args(Recipe.model_fields["task"].annotation) == tuple(task.name for task in m.TASKS)
    # A task added to the one table is a recipe task at once: nothing else lists the names. The recipe module
    # reads the table when it is imported, so import it afresh; monkeypatch puts the original module back.
    new_task = m.EmbFuseTask(
        "new-task", "EmbFuseModel", m.AutoModel, "feature-extraction", "FEATURE_EXTRACTION"
    )
    monkeypatch.setattr(m, "TASKS", (*m.TASKS, new_task))
    monkeypatch.setattr(hf_embfuse, "recipe", hf_embfuse.recipe)
    monkeypatch.delitem(sys.modules, "hf_embfuse.recipe")
    fresh = importlib.import_module("hf_embfuse.recipe")
    assert (
        fresh.parse_recipe({"base": "b", "task": "new-task", "sources": [{"path": "s"}]}).task == "new-task"
    )


def test_a_folder_naming_an_unknown_wrapper_lists_the_tables_wrappers(tmp_path):
    import pytest

    from hf_embfuse.baking import bake_to_folder
    from hf_embfuse.modeling_embfuse import TASKS
    from tests.fixtures_models import tiny_fused

    tiny_fused("bert").save_pretrained(tmp_path / "fused")
    config_file = tmp_path / "fused" / "config.json"
    config_file.write_text(config_file.read_text().replace('"EmbFuseModel"', '"EmbFuseForQuestionAnswering"'))
    with pytest.raises(ValueError, match="EmbFuseForQuestionAnswering") as caught:
        bake_to_folder(tmp_path / "fused", tmp_path / "out")
    assert ", ".join(task.wrapper for task in TASKS) in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_argparse_lives_in_the_cli(capsys):
    import importlib.util
    from pathlib import Path

    for module in ("hf_embfuse.baking", "hf_embfuse.evaluation.command"):
        source = Path(importlib.util.find_spec(module).origin).read_text()
        assert "argparse" not in source and "add_command" not in source, module
    from hf_embfuse.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for command in ("build", "inspect", "bake", "eval", "push", "upgrade"):
        assert command in help_text, command
