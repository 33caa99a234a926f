"""No half-written output: `build` and `bake` killed (SIGKILL) at random moments leave the output folder
either absent or complete, and a rerun succeeds and cleans up what the killed run left.

The kills go to children of a fork server (`tests/kill_target.py`) that has imported hf_embfuse once,
so that the random moments fall in the work itself, not in seconds of interpreter start-up. The
final rerun runs the real `python -m hf_embfuse.cli`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import hf_embfuse
from hf_embfuse.atomic import _host, atomic_output_dir, remove_stale_staging
from hf_embfuse.evaluation.command import write_json_atomic
from tests.reliability_helpers import REPO, cli_env, file_hashes, killable_recipe, run_cli

pytestmark = pytest.mark.timeout(600)

RANDOM_KILLS = 5
EXPECTED_FILES = {"config.json", "model.safetensors", "tokenizer.json", "embfuse_report.json"}


class ForkServer:
    """Drives `tests/kill_target.py`: start a CLI command in a forked child, learn its pid and its end."""

    def __init__(self, log: Path) -> None:
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.kill_target"],
            cwd=REPO,
            env=cli_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def start(self, *argv: str) -> int:
        self.process.stdin.write(json.dumps(list(argv)) + "\n")
        self.process.stdin.flush()
        return json.loads(self._line())["pid"]

    def wait(self) -> int:
        """The raw wait status of the child started last."""
        return json.loads(self._line())["status"]

    def _line(self) -> str:
        line = self.process.stdout.readline()
        assert line, f"the fork server died; see {self.log.name}"
        return line

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("fork-server") / "children.log")
    yield server
    server.close()


def staging_of(out: Path, pid: int) -> list[Path]:
    """The staging folders process `pid` made for `out` (named `.out.tmp-<host>-<pid>-*`)."""
    return sorted(out.parent.glob(f".{out.name}.tmp-{_host()}-{pid}-*"))


def leftovers(out: Path) -> list[Path]:
    return sorted(
        p for p in out.parent.iterdir() if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-"))
    )


def _poll(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def timed_run(server: ForkServer, argv: list[str], out: Path) -> tuple[float, float]:
    """Run a command to completion, polling its staging folder; return the seconds from the staging folder's
    appearance to its first file, and to the output's appearance (the window a kill can hit)."""
    pid = server.start(*argv)
    _poll(lambda: staging_of(out, pid) or out.exists(), 300, "the staging folder")
    start = time.monotonic()
    first_file = None
    while not out.exists():
        assert time.monotonic() < start + 300, "the run did not finish"
        if first_file is None and any(any(s.iterdir()) for s in staging_of(out, pid) if s.exists()):
            first_file = time.monotonic() - start
        time.sleep(0.001)
    done = time.monotonic() - start
    assert server.wait() == 0
    assert out.is_dir() and not leftovers(out)
    return first_file if first_file is not None else done, done


def kill_during(server: ForkServer, argv: list[str], out: Path, *, delay: float | None) -> dict:
    """Start `argv`, SIGKILL it `delay` seconds after its staging folder appears (or, for `delay=None`, as soon
    as a file appears in it); report what was on disk just before the kill."""
    pid = server.start(*argv)
    _poll(lambda: staging_of(out, pid) or out.exists(), 300, "the staging folder")
    if delay is None:
        _poll(
            lambda: out.exists() or any(any(s.iterdir()) for s in staging_of(out, pid) if s.exists()),
            300,
            "a file",
        )
    else:
        time.sleep(delay)
    seen = {"out": out.exists(), "partial": any(any(s.iterdir()) for s in staging_of(out, pid) if s.exists())}
    with contextlib.suppress(ProcessLookupError):  # it may have finished first
        os.kill(pid, signal.SIGKILL)
    status = server.wait()
    seen["killed"] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    seen["mid_write"] = seen["killed"] and seen["partial"] and not seen["out"]
    seen["left"] = [p.name for p in staging_of(out, pid)]
    return seen


def absent_or_complete(out: Path, reference: dict[str, str], load) -> str:
    if not out.exists():
        return "absent"
    assert file_hashes(out) == reference, f"{out} exists but is not the complete output"
    load(out)
    return "complete"


@pytest.fixture(scope="module")
def killable(tmp_path_factory):
    folder = tmp_path_factory.mktemp("killable")
    return killable_recipe(folder / "sources"), folder


def test_killed_builds_leave_nothing_partial_and_a_rerun_succeeds(server, killable):
    recipe, folder = killable
    out = folder / "model"
    argv = ["build", str(recipe), "--out", str(out), "--no-progress", "--overwrite"]
    to_first_file, window = timed_run(server, argv, out)
    reference = file_hashes(out)
    assert set(reference) >= EXPECTED_FILES

    def load(path: Path) -> None:
        hf_embfuse.EmbFuseForSequenceClassification.from_pretrained(path)

    rng = random.Random(20240611)
    delays = [rng.uniform(0, window) for _ in range(RANDOM_KILLS)]
    outcomes = []
    for delay in [*delays, None, None, None]:
        if delay is None and any(o["mid_write"] for o in outcomes):
            break  # one kill in the middle of writing files is enough
        if out.exists():
            shutil.rmtree(out)  # so that "complete" can only come from this run
        seen = kill_during(server, argv, out, delay=delay)
        seen["result"] = absent_or_complete(out, reference, load)
        if seen["killed"] and seen["result"] == "absent":
            assert seen["left"], "a killed run leaves its staging folder (removed by the next run)"
        outcomes.append(seen)
    summary = [(o["killed"], o["mid_write"], o["result"]) for o in outcomes]
    assert any(o["killed"] for o in outcomes), summary
    assert any(o["mid_write"] for o in outcomes), f"no kill hit the writing of files: {summary}"
    assert leftovers(out), "the killed runs' staging folders should still be there before the rerun"

    result = run_cli(*argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert file_hashes(out) == reference
    assert not leftovers(out), "the rerun should remove staging folders of dead processes"
    print(f"build: window {window:.3f}s (first file after {to_first_file:.3f}s); kills {summary}")


def test_killed_bake_leaves_nothing_partial_and_a_rerun_succeeds(server, killable, tmp_path):
    recipe, _ = killable
    fused = tmp_path / "fused"
    assert run_cli("build", str(recipe), "--out", str(fused), "--no-progress").returncode == 0
    out = tmp_path / "baked"
    argv = ["bake", str(fused), "--out", str(out), "--overwrite"]
    _, window = timed_run(server, argv, out)
    reference = file_hashes(out)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(reference)
    assert not list(out.glob("*.py"))

    def load(path: Path) -> None:
        AutoModelForSequenceClassification.from_pretrained(path)  # plain: no remote code

    outcomes = []
    for delay in (random.Random(7).uniform(0, window), None, None, None):
        if delay is None and any(o["mid_write"] for o in outcomes):
            break
        shutil.rmtree(out, ignore_errors=True)
        seen = kill_during(server, argv, out, delay=delay)
        seen["result"] = absent_or_complete(out, reference, load)
        outcomes.append(seen)
    assert any(o["mid_write"] for o in outcomes), outcomes

    pid = server.start(*argv)
    assert server.wait() == 0, "the rerun failed"
    assert file_hashes(out) == reference and not leftovers(out), pid
    baked = AutoModelForSequenceClassification.from_pretrained(out).eval()
    model = hf_embfuse.EmbFuseForSequenceClassification.from_pretrained(fused).eval()
    ids = torch.tensor([[2, 10, 500, 7000, 3]])
    with torch.no_grad():
        assert torch.allclose(baked(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_staging_cleanup_touches_only_dead_runs_of_this_host(tmp_path):
    out = tmp_path / "model"
    dead, host = _dead_pid(), _host()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        names = {
            "dead": f".model.tmp-{host}-{dead}-abc123",
            "live": f".model.tmp-{host}-{sleeper.pid}-abc123",
            "mine": f".model.tmp-{host}-{os.getpid()}-abc123",
            "other host": f".model.tmp-elsewhere-{dead}-abc123",
            "old naming": ".model.tmp-abc123",
            "other target": f".model2.tmp-{host}-{dead}-abc123",
        }
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.safetensors").write_bytes(b"partial")
        removed = remove_stale_staging(out)
        assert [p.name for p in removed] == [names["dead"]]
        assert {p.name for p in tmp_path.iterdir()} == set(names.values()) - {names["dead"]}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_killed_while_swapping_outputs_gets_the_previous_output_back(tmp_path):
    """Killed between moving the old output aside and renaming the new one in: the next run restores the old."""
    out = tmp_path / "model"
    retired = tmp_path / f".model.old-{_host()}-{_dead_pid()}-xyz"
    (retired / "model").mkdir(parents=True)
    (retired / "model" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="overwrite=True"), atomic_output_dir(out):
        pass
    assert (out / "config.json").read_text() == "{}" and not retired.exists()


def test_a_failed_swap_keeps_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".model.tmp-"):
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"), atomic_output_dir(out, overwrite=True) as staging:
        (staging / "config.json").write_text("new")
    assert (out / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_eval_json_that_fails_mid_write_leaves_no_file(tmp_path, monkeypatch, overwrite):
    path = tmp_path / "eval.json"
    if overwrite:
        path.write_text('{"old": true}')

    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"tables": {}}, overwrite=overwrite)
    assert [p.name for p in tmp_path.iterdir()] == (["eval.json"] if overwrite else [])
    if overwrite:
        assert json.loads(path.read_text()) == {"old": True}
