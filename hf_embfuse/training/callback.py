"""`MixingWeightsCallback`: log how much each source contributes while the Trainer trains."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from ._modules import find_fused_embedding, readable_name, source_names
from .distributed import check_config_consistency

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

HISTORY_FILE = "mixing_weights.json"
PLOT_FILE = "mixing_weights.png"


@torch.no_grad()
def mixing_statistics(
    model: nn.Module, *, max_tokens: int | None = 50_000, chunk_size: int = 8192
) -> dict[str, Any] | None:
    """Mean and standard deviation over the vocabulary of each source's mixing weight.

    Args:
        model: an EmbFuse model, or a PEFT/DDP wrapper around one.
        max_tokens: above this vocabulary size, use this many evenly spaced token ids instead of all of them
            (the same ids every call and on every rank). `None`: always the whole vocabulary.
        chunk_size: token ids per forward pass of the mixer.

    Returns:
        `{"sources": [...], "mixing": mode, "mean": [...], "std": [...], "gate_norm": [...] or None}`, or `None`
        when the mixing parameters are sharded on this rank (ZeRO-3, FSDP1 flat parameters) and cannot be read.
        Under FSDP2 the embedding's parameters are gathered for the computation (a collective).
    """
    _, embedding = find_fused_embedding(model)
    num_sources = embedding.num_sources
    if embedding.mixer.logits.numel() != num_sources:
        return None  # ZeRO-3 / FSDP1 flat parameters: this rank holds a slice, or nothing
    sharded = type(embedding.mixer.logits).__name__ == "DTensor"
    if sharded and not hasattr(embedding, "unshard"):
        return None
    vocab = embedding.num_embeddings
    device = embedding.weight.device
    if max_tokens is not None and vocab > max_tokens:
        ids = torch.linspace(0, vocab - 1, max_tokens, device=device).long()
    else:
        ids = torch.arange(vocab, device=device)
    total = torch.zeros(num_sources, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    if sharded:
        embedding.unshard()  # FSDP2: a collective; every rank logs, so every rank gets here
    try:
        # float64 on the CPU (MPS has none): sums over a whole vocabulary.
        multiplicity = torch.ones(len(ids), dtype=torch.float64)
        if embedding.mixer.mode in ("fixed", "learned"):
            # These weights depend only on which sources cover a token: one id per coverage pattern,
            # counted, instead of projecting every token's rows (0.30 s -> 0.04 s per log for MiniLM).
            ids, multiplicity = _one_id_per_coverage_pattern(embedding.coverage, ids)
        for chunk, times in zip(ids.split(chunk_size), multiplicity.split(chunk_size), strict=True):
            weights = embedding.mix(chunk)[1].to("cpu", torch.float64)
            total += (weights * times[:, None]).sum(dim=0)
            total_sq += (weights.pow(2) * times[:, None]).sum(dim=0)
        gate = getattr(embedding.mixer, "gate", None)
        gate_norm = None if gate is None else gate.detach().float().norm(dim=-1).tolist()
    finally:
        if sharded:
            embedding.reshard()
    count = float(multiplicity.sum())
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt()
    return {
        "sources": source_names(model, num_sources),
        "mixing": embedding.mixer.mode,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "gate_norm": gate_norm,
    }


def _one_id_per_coverage_pattern(
    coverage: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first of `ids` with each distinct coverage row, and how many of `ids` share that row."""
    _, pattern_of, counts = torch.unique(coverage[ids], dim=0, return_inverse=True, return_counts=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full_like(counts, len(ids)).scatter_reduce(0, pattern_of, positions, "amin")
    return ids[first], counts.to("cpu", torch.float64)


class MixingWeightsCallback(TrainerCallback, ExportableState):
    """Log each source's mean mixing weight during training; write its history and a plot at the end.

    On every log, adds `mixing/<source>` (the weight averaged over the vocabulary) to the Trainer's logs,
    and for `gated` mixing also `mixing_std/<source>` (how much the weight varies across tokens) and
    `mixing_gate_norm/<source>`. At the end of training the main process writes `mixing_weights.json`
    (the history) and `mixing_weights.png` (weights over steps; needs matplotlib) into `args.output_dir`.

    The Trainer calls callbacks in order and reporting integrations (TensorBoard, W&B, ...) come before
    callbacks passed in `callbacks=`, so with a plain `Trainer` the values reach `trainer.state.log_history`,
    the progress bar and later callbacks but not those reporters. `EmbFuseTrainer` puts this callback first,
    so every reporter sees them.

    The history is part of each checkpoint's `trainer_state.json` (an `ExportableState`), so after
    `trainer.train(resume_from_checkpoint=...)` the JSON and the plot still start at step 0.

    Args:
        plot: write `mixing_weights.png` at the end of training (needs `pip install 'hf-embfuse[plot]'`).
        max_tokens: vocabulary subsample size for the statistics (see `mixing_statistics`).
        check_consistency: at the start of training under `torch.distributed`, verify that every rank built
            the same EmbFuse model (`check_config_consistency`).
    """

    def __init__(self, plot: bool = True, max_tokens: int | None = 50_000, check_consistency: bool = True):
        self.plot = plot
        self.max_tokens = max_tokens
        self.check_consistency = check_consistency
        self.history: list[dict[str, Any]] = []
        self.sources: list[str] = []
        self.mixing: str | None = None
        self._warned_sharded = False
        if plot and importlib.util.find_spec("matplotlib") is None:
            logger.warning(
                "matplotlib is not installed, so %s will not be written; `pip install 'hf-embfuse[plot]'` "
                "(or pass plot=False to silence this).",
                PLOT_FILE,
            )
            self.plot = False

    def _record(self, model: nn.Module, step: int) -> dict[str, float]:
        stats = mixing_statistics(model, max_tokens=self.max_tokens)
        if stats is None:
            if not self._warned_sharded:
                logger.warning(
                    "The mixing parameters are sharded on this rank (ZeRO-3 or FSDP flat parameters), so "
                    "MixingWeightsCallback logs nothing; use ZeRO-2 / FSDP2 to see the mixing weights."
                )
                self._warned_sharded = True
            return {}
        self.sources, self.mixing = stats["sources"], stats["mixing"]
        record = {"step": step, "mean": dict(zip(self.sources, stats["mean"], strict=True))}
        if stats["mixing"] == "gated":
            record["std"] = dict(zip(self.sources, stats["std"], strict=True))
            record["gate_norm"] = dict(zip(self.sources, stats["gate_norm"], strict=True))
        if self.history and self.history[-1]["step"] == step:
            self.history[-1] = record
        else:
            self.history.append(record)
        logs = {f"mixing/{name}": value for name, value in record["mean"].items()}
        for key in ("std", "gate_norm"):
            logs.update({f"mixing_{key}/{name}": value for name, value in record.get(key, {}).items()})
        return logs

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (`TrainerState.stateful_callbacks`): its history."""
        return {
            "args": {
                "plot": self.plot,
                "max_tokens": self.max_tokens,
                "check_consistency": self.check_consistency,
            },
            "attributes": {"history": list(self.history), "sources": self.sources, "mixing": self.mixing},
        }

    def _history_until(self, state: TrainerState) -> list[dict[str, Any]]:
        """The records a resumed run starts from: the checkpoint's, up to its step. None on a fresh run."""
        if state.global_step == 0:
            return []
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):  # several callbacks of this class: the Trainer keeps a list
            saved = saved[0] if saved else None
        history = (saved or {}).get("attributes", {}).get("history") or []
        return [record for record in history if record["step"] <= state.global_step]

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs["model"]
        if self.check_consistency:
            check_config_consistency(model)
        # The Trainer restores callback state only with `restore_callback_states_from_checkpoint=True`
        # (and then re-creates the callback at the end of the list); read the checkpoint's state ourselves.
        self.history = self._history_until(state)
        self._record(model, state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        values = self._record(kwargs["model"], state.global_step)
        if logs is not None:
            logs.update(values)
        # The Trainer appended a copy of `logs` to the history just before calling us: complete it too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._record(kwargs["model"], state.global_step)
        if not state.is_world_process_zero or not self.history:
            return
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        history = {"mixing": self.mixing, "sources": self.sources, "history": self.history}
        _write_atomically(output_dir / HISTORY_FILE, json.dumps(history, indent=2).encode())
        if self.plot:
            plot_mixing_history(history, output_dir / PLOT_FILE)


def plot_mixing_history(history: dict[str, Any], path: str | os.PathLike) -> Path:
    """Plot the mean mixing weight of each source over training steps (±1 std band when gated) to a PNG.

    Args:
        history: the content of `mixing_weights.json` as written by `MixingWeightsCallback`.
        path: the PNG file to write.
    """
    figure = mixing_history_figure(history)
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    figure.savefig(staging, format="png")
    os.replace(staging, path)
    return path


def mixing_history_figure(history: dict[str, Any]) -> Figure:
    """The matplotlib `Figure` that `plot_mixing_history` writes: one line (and legend entry) per source."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Plotting the mixing weights needs matplotlib: `pip install 'hf-embfuse[plot]'`."
        ) from error
    records = history["history"]
    steps = [record["step"] for record in records]
    # A bare Figure with its own Agg canvas: no pyplot global state, no GUI backend.
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    banded = all("std" in record for record in records)
    for name in history["sources"]:
        mean = [record["mean"][name] for record in records]
        # readable_name again for histories written before names were: a leading `_` hides a label.
        (line,) = axes.plot(steps, mean, marker="o", markersize=3, label=readable_name(name) or name)
        if banded:
            low = [max(m - record["std"][name], 0.0) for m, record in zip(mean, records, strict=True)]
            high = [min(m + record["std"][name], 1.0) for m, record in zip(mean, records, strict=True)]
            axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    axes.set_xlabel("step")
    axes.set_ylabel("mean mixing weight" + (" (band: ±1 std over tokens)" if banded else ""))
    axes.set_ylim(0, 1)
    axes.set_title(f"Mixing weights per source ({history.get('mixing')})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _write_atomically(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    os.replace(staging, path)
