"""Two processes on CPU (gloo) under `accelerate launch`: the mixture trains identically on every rank.
Ranks that built different models stop with a clear error: checked in-process, two ranks on two threads."""

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_embfuse.training import check_config_consistency, embfuse_fingerprint
from tests.fixtures_models import tiny_fused

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "ddp_worker.py"
EXAMPLES = REPO / "examples" / "accelerate"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(out_dir: Path, scenario: str) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu` starts torchrun; without GPUs each rank runs DDP on CPU over gloo."""
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--multi_gpu", "--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())),
        *(str(WORKER), str(out_dir), scenario),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_two_ranks_train_the_same_mixture(tmp_path):
    result = launch(tmp_path, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert set(ranks[0]) == set(ranks[1]) and "after.logits" in ranks[0]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs between ranks"
    assert not torch.allclose(ranks[0]["after.logits"], ranks[0]["before.logits"]), "the mixer did not train"
    # The main process wrote the mixing history; the other did not race it.
    assert (tmp_path / "trainer" / "mixing_weights.json").is_file()


class TwoRankWorld:
    """`torch.distributed` for two ranks run as two threads of this process: `all_gather_object` is a real
    exchange (each rank sends its own object and receives the other's), with no process group to start."""

    def __init__(self) -> None:
        self._slots: list[Any] = [None, None]
        self._barrier = threading.Barrier(2, timeout=60)
        self._rank = threading.local()

    def run_as_rank(self, rank: int, function: Callable[[], Any]) -> Any:
        self._rank.value = rank
        return function()

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self, group: Any = None) -> int:
        return 2

    def all_gather_object(self, gathered: list, obj: Any, group: Any = None) -> None:
        self._slots[self._rank.value] = obj
        self._barrier.wait()
        gathered[:] = list(self._slots)
        self._barrier.wait()  # nobody overwrites a slot before both ranks have read it


def train_rank0_while_rank1_checks(scenario: str, tmp_path: Path, monkeypatch) -> tuple[list, Any]:
    """ddp_worker.py's scenario in one process: rank 0 really trains (Trainer or EmbFuseTrainer) while rank 1,
    on a thread, makes the same consistency call with the model it built. Returns each rank's error and
    rank 0's trainer."""
    from transformers import Trainer

    from hf_embfuse.training import EmbFuseTrainer, MixingWeightsCallback
    from hf_embfuse.training import distributed as distributed_module
    from tests.fixtures_training import TinyTask, tiny_training_args

    peer_kwargs = {"mixing_temperature": 2.0} if scenario == "mismatch-config" else {"mixing": "gated"}
    models = [
        tiny_fused("bert", "sequence-classification", seed=0, mixing="learned").train(),
        tiny_fused("bert", "sequence-classification", seed=0, **{"mixing": "learned", **peer_kwargs}).train(),
    ]
    args = tiny_training_args(tmp_path / "trainer", per_device_train_batch_size=4, dataloader_num_workers=0)
    if scenario == "mismatch-config":
        trainer = Trainer(
            model=models[0], args=args, train_dataset=TinyTask(), callbacks=[MixingWeightsCallback()]
        )
    else:
        trainer = EmbFuseTrainer(model=models[0], args=args, train_dataset=TinyTask(), mixer_lr=5e-2)
    world = TwoRankWorld()
    monkeypatch.setattr(distributed_module, "torch", SimpleNamespace(distributed=world))
    errors: list[Any] = [None, None]

    def rank(index: int, function: Callable[[], Any]) -> None:
        try:
            world.run_as_rank(index, function)
        except ValueError as error:
            errors[index] = error

    peer = threading.Thread(target=rank, args=(1, lambda: check_config_consistency(models[1])))
    peer.start()
    rank(0, trainer.train)
    peer.join(timeout=60)
    return errors, trainer


@pytest.mark.parametrize(
    ("scenario", "field"),
    [
        ("mismatch-config", "mixing_temperature: rank 0 has 1.0, rank 1 has 2.0"),
        ("mismatch-shape", 'mixing: rank 0 has "learned", rank 1 has "gated"'),
    ],
)
def test_ranks_with_different_models_fail_with_a_clear_error(tmp_path, monkeypatch, scenario, field):
    """The plain Trainer's callback (on_train_begin) and EmbFuseTrainer.train (before DDP wraps the model)
    both stop every rank; the messages are built in-process, the launcher adds nothing to them."""
    errors, trainer = train_rank0_while_rank1_checks(scenario, tmp_path, monkeypatch)
    for rank in (0, 1):
        message = str(errors[rank])
        assert message.startswith("The EmbFuse model on rank 1 differs from rank 0's"), message
        assert field in message
    assert trainer.state.global_step == 0, "rank 0 trained although the ranks disagree"


def test_two_rank_world_lets_identical_models_through(tmp_path, monkeypatch):
    """The in-process world is no rubber stamp: identical ranks train (the torchrun test above, in-process)."""
    from hf_embfuse.training import distributed as distributed_module

    world = TwoRankWorld()
    monkeypatch.setattr(distributed_module, "torch", SimpleNamespace(distributed=world))
    models = [tiny_fused("bert"), tiny_fused("bert")]
    peer = threading.Thread(target=world.run_as_rank, args=(1, lambda: check_config_consistency(models[1])))
    peer.start()
    world.run_as_rank(0, lambda: check_config_consistency(models[0]))
    peer.join(timeout=60)
    assert not peer.is_alive()


def test_check_is_a_no_op_without_torch_distributed():
    assert not torch.distributed.is_initialized()
    check_config_consistency(tiny_fused("bert"))  # nothing to compare with: returns quietly


def test_fingerprint_sees_config_and_shape_differences_but_not_paths():
    reference = embfuse_fingerprint(tiny_fused("bert"))
    assert embfuse_fingerprint(tiny_fused("bert")) == reference
    renamed = tiny_fused("bert")
    renamed.config._name_or_path = "/somewhere/else"
    assert embfuse_fingerprint(renamed) == reference
    assert embfuse_fingerprint(tiny_fused("bert", reg_lambda=0.1))["reg_lambda"] == 0.1
    gated = embfuse_fingerprint(tiny_fused("bert", mixing="gated"))
    assert gated["shape of mixer.gate"] == [3, 32] and "shape of mixer.gate" not in reference


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_accelerate_example_configs_are_valid(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(EXAMPLES / name))  # refuses unknown top-level keys
    assert config.distributed_type.value in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    assert config.num_processes >= 2
    # Nested settings become `accelerate launch` flags: each must be one.
    flags = {action.dest for action in launch_command_parser()._actions}
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    nested = {**(raw.get("fsdp_config") or {}), **(raw.get("deepspeed_config") or {})}
    assert set(nested) <= flags, set(nested) - flags
