"""Two processes on CPU (gloo) under `accelerate launch`: the mixture trains identically on every rank,
and ranks that built different models stop with a clear error."""

import os
import socket
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize(
    ("scenario", "field"),
    [
        ("mismatch-config", "mixing_temperature: rank 0 has 1.0, rank 1 has 2.0"),
        ("mismatch-shape", 'mixing: rank 0 has "learned", rank 1 has "gated"'),
    ],
)
def test_ranks_with_different_models_fail_with_a_clear_error(tmp_path, scenario, field):
    result = launch(tmp_path, scenario)
    assert result.returncode != 0
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.error").read_text()
        assert message.startswith("The EmbFuse model on rank 1 differs from rank 0's")
        assert field in message
    assert not list(tmp_path.glob("rank*.safetensors"))


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
