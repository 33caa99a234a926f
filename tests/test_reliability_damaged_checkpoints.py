"""Damaged checkpoint folders, for every command that reads one: one line naming the file, exit 2, nothing written.

Table-driven over (damage x command). The commands are `inspect`, `bake`, `push` and `eval` through the CLI,
and `hf_embfuse.load_embfuse_folder` through the API. What each command needs of the tokenizer decides the
tokenizer cases: `eval` loads it (missing or corrupt is an error), `bake` and `push` copy it (a missing one is
fine, a corrupt one is refused rather than copied), `inspect` and loading do not read it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

import hf_embfuse
from hf_embfuse.cli import main
from hf_embfuse.hub import check_checkpoint_folder
from tests.fixtures_models import tiny_fused
from tests.test_evaluation_fused import PAIRS, make_tokenizer

pytestmark = pytest.mark.timeout(120)

COMMANDS = ("inspect", "bake", "push", "eval", "load")


def _save(folder: Path, **save_kwargs) -> Path:
    tiny_fused("bert", "sequence-classification").save_pretrained(folder, **save_kwargs)
    make_tokenizer().save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- damages: (folder) -> offending path


def _truncate(folder: Path) -> Path:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return weights


def _cut_inside_header(folder: Path) -> Path:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    return weights


def _empty(folder: Path) -> Path:
    weights = folder / "model.safetensors"
    weights.write_bytes(b"")
    return weights


def _garbage_header(folder: Path) -> Path:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + length] = b"\xff" * length  # same size, not JSON
    weights.write_bytes(bytes(data))
    return weights


def _garbage_length(folder: Path) -> Path:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = b"\xff" * 8
    weights.write_bytes(bytes(data))
    return weights


def _extra_bytes(folder: Path) -> Path:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0" * 64)
    return weights


def _missing_shard(folder: Path) -> Path:
    index = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    (folder / shards[-1]).unlink()
    return index


def _index_not_json(folder: Path) -> Path:
    index = folder / "model.safetensors.index.json"
    index.write_text("{not json")
    return index


def _config_not_json(folder: Path) -> Path:
    (folder / "config.json").write_text('{"model_type": "embfuse", ')
    return folder / "config.json"


def _config_list(folder: Path) -> Path:
    (folder / "config.json").write_text("[1, 2, 3]")
    return folder / "config.json"


def _edit_config(folder: Path, edit: Callable[[dict], None]) -> Path:
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    edit(config)
    config_file.write_text(json.dumps(config))
    return config_file


def _sources_not_list(folder: Path) -> Path:
    return _edit_config(folder, lambda config: config.update(sources="three sources"))


def _source_without_width(folder: Path) -> Path:
    return _edit_config(folder, lambda config: config["sources"][1].pop("width"))


def _base_config_not_object(folder: Path) -> Path:
    return _edit_config(folder, lambda config: config.update(base_config=["bert"]))


def _no_modeling_file(folder: Path) -> Path:
    (folder / "modeling_embfuse.py").unlink()
    return folder


def _no_code_files(folder: Path) -> Path:
    (folder / "modeling_embfuse.py").unlink()
    (folder / "configuration_embfuse.py").unlink()
    return folder


def _no_tokenizer(folder: Path) -> Path:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    return folder


def _tokenizer_garbage(folder: Path) -> Path:
    (folder / "tokenizer.json").write_bytes(b"\x00\xff\xfe garbage")
    return folder / "tokenizer.json"


def _tokenizer_config_not_json(folder: Path) -> Path:
    (folder / "tokenizer_config.json").write_text("{oops")
    return folder / "tokenizer_config.json"


def _tokenizer_wrong_shape(folder: Path) -> Path:
    (folder / "tokenizer.json").write_text('{"model": 3}')  # JSON, but no tokenizer
    return folder


# name -> (damage, sharded checkpoint, message fragment, commands that must refuse it)
EVERY = frozenset(COMMANDS)
USES_TOKENIZER = frozenset({"eval"})
COPIES_TOKENIZER = frozenset({"bake", "push", "eval"})
DAMAGES = {
    "weights truncated": (_truncate, False, "is truncated: its header describes", EVERY),
    "weights cut inside the header": (_cut_inside_header, False, "is truncated: it ends inside its", EVERY),
    "weights of zero length": (_empty, False, "is empty (0 bytes)", EVERY),
    "weights header garbage": (_garbage_header, False, "is not a valid safetensors file", EVERY),
    "weights header length garbage": (_garbage_length, False, "bad header length", EVERY),
    "weights longer than the header says": (_extra_bytes, False, "bytes after the data its header", EVERY),
    "index points at a missing shard": (
        _missing_shard,
        True,
        "which is missing; the checkpoint is incomplete",
        EVERY,
    ),
    "index not JSON": (_index_not_json, True, "is not valid JSON", EVERY),
    "config.json not JSON": (_config_not_json, False, "is not valid JSON", EVERY),
    "config.json a list": (_config_list, False, "holds a JSON list, not an object", EVERY),
    "config sources not a list": (_sources_not_list, False, "`sources` must be a list", EVERY),
    "config source without width": (_source_without_width, False, "['width']` must be a positive int", EVERY),
    "config base_config not an object": (_base_config_not_object, False, "`base_config` must be", EVERY),
    "modeling file missing": (_no_modeling_file, False, "lacks modeling_embfuse.py", EVERY),
    "code files missing": (_no_code_files, False, "configuration_embfuse.py, modeling_embfuse.py", EVERY),
    "tokenizer missing": (_no_tokenizer, False, "has no tokenizer", USES_TOKENIZER),
    "tokenizer.json garbage": (_tokenizer_garbage, False, "is not valid JSON", COPIES_TOKENIZER),
    "tokenizer_config.json not JSON": (
        _tokenizer_config_not_json,
        False,
        "is not valid JSON",
        COPIES_TOKENIZER,
    ),
    "tokenizer.json not a tokenizer": (
        _tokenizer_wrong_shape,
        False,
        "Could not load the tokenizer",
        USES_TOKENIZER,
    ),
}


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("intact")
    return {False: _save(root / "single"), True: _save(root / "sharded", max_shard_size="20KB")}


def _damaged(intact: dict[bool, Path], tmp_path: Path, case: str) -> tuple[Path, Path]:
    import shutil

    damage, sharded, _, _ = DAMAGES[case]
    folder = tmp_path / "ckpt"
    shutil.copytree(intact[sharded], folder)
    return folder, damage(folder)


def _run(command: str, folder: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    """Run `command` on `folder`; (exit status, the error printed or raised)."""
    capsys.readouterr()
    if command == "load":
        try:
            hf_embfuse.load_embfuse_folder(folder)
        except (ValueError, OSError) as error:
            return 2, f"hf_embfuse: error: {error}\n"
        return 0, ""
    if command == "push":
        # Only the local check runs offline; a folder it accepts would be uploaded next.
        argv = ["push", str(folder), "test-user/fused"]
        try:
            check_checkpoint_folder(folder)
        except (ValueError, OSError):
            pass
        else:
            return 0, ""
    elif command == "inspect":
        argv = ["inspect", str(folder)]
    elif command == "bake":
        argv = ["bake", str(folder), "--out", str(tmp_path / "out")]
    else:
        data = tmp_path / "toy.tsv"
        data.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
        argv = ["eval", str(folder), "--wordsim", str(data), "--out", str(tmp_path / "eval.json")]
    status = main(argv)
    return status, capsys.readouterr().err


def _listing(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", list(DAMAGES))
def test_damaged_checkpoint_is_one_line_naming_the_file(intact, tmp_path, capsys, case, command):
    folder, offending = _damaged(intact, tmp_path, case)
    _, _, message, refused_by = DAMAGES[case]
    extra = {"toy.tsv"} if command == "eval" else set()
    before = set(_listing(tmp_path)) | extra
    status, err = _run(command, folder, tmp_path, capsys)
    if command not in refused_by:
        assert status == 0, err  # what this command does not read cannot stop it
        return
    assert status == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"hf-embfuse {command}: error: " if command != "load" else "hf_embfuse: error: "), (
        err
    )
    assert message in err and str(offending) in err, err
    assert set(_listing(tmp_path)) == before  # no output folder, no report, no staging left over


def test_an_intact_checkpoint_passes_every_command(intact, tmp_path, capsys):
    for sharded in (False, True):
        for command in COMMANDS:
            work = tmp_path / f"{sharded}-{command}"
            work.mkdir()
            status, err = _run(command, intact[sharded], work, capsys)
            assert status == 0, (sharded, command, err)
