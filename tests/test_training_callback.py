"""MixingWeightsCallback and EmbFuseTrainer: mixing weights in the Trainer's logs, history JSON and plot."""

import json
import sys

import pytest
import torch
from transformers import Trainer, TrainerCallback

from hf_embfuse.training import EmbFuseTrainer, MixingWeightsCallback, mixing_statistics, plot_mixing_history
from hf_embfuse.training._modules import source_names
from tests.fixtures_models import tiny_fused
from tests.fixtures_training import TinyTask, tiny_training_args

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Recorder(TrainerCallback):
    """Stands in for a reporting integration: keeps a copy of every `logs` dict it is shown."""

    def __init__(self):
        self.seen = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append(dict(logs))


@pytest.mark.parametrize("mixing", ["learned", "gated"])
def test_plain_trainer_gets_mixing_keys_history_and_plot(tmp_path, mixing):
    model = tiny_fused("bert", "sequence-classification", mixing=mixing)
    names = source_names(model, 3)
    trainer = Trainer(
        model=model,
        args=tiny_training_args(tmp_path, learning_rate=5e-2),
        train_dataset=TinyTask(),
        callbacks=[MixingWeightsCallback()],
    )
    trainer.train()

    step_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in step_logs] == [2, 4]
    for entry in step_logs:
        weights = [entry[f"mixing/{name}"] for name in names]
        assert sum(weights) == pytest.approx(1.0, abs=1e-6)
        has_std = all(f"mixing_std/{name}" in entry for name in names)
        assert has_std == (mixing == "gated")

    history = json.loads((tmp_path / "mixing_weights.json").read_text())
    assert history["mixing"] == mixing and history["sources"] == names
    assert [record["step"] for record in history["history"]] == [0, 2, 4]
    first, last = history["history"][0]["mean"], history["history"][-1]["mean"]
    assert first != last  # the mixture moved, and the history shows it
    assert (tmp_path / "mixing_weights.png").read_bytes()[:8] == PNG_MAGIC


def test_embfuse_trainer_puts_the_callback_before_reporters(tmp_path):
    recorder = Recorder()
    trainer = EmbFuseTrainer(
        model=tiny_fused("bert", "sequence-classification"),
        args=tiny_training_args(tmp_path),
        train_dataset=TinyTask(),
        callbacks=[recorder],
    )
    names = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    assert names.index("MixingWeightsCallback") < names.index("Recorder")
    trainer.train()
    assert recorder.seen and all(any(key.startswith("mixing/") for key in logs) for logs in recorder.seen)
    assert (tmp_path / "mixing_weights.png").is_file()


def test_embfuse_trainer_can_leave_the_callback_out(tmp_path):
    trainer = EmbFuseTrainer(
        model=tiny_fused("bert", "sequence-classification"),
        args=tiny_training_args(tmp_path, steps=2),
        train_dataset=TinyTask(),
        mixing_callback=False,
    )
    assert "MixingWeightsCallback" not in [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    trainer.train()
    assert not (tmp_path / "mixing_weights.json").exists()


def test_without_matplotlib_the_history_is_still_written(tmp_path, monkeypatch, caplog):
    # Any `import matplotlib...` now fails, also of submodules an earlier test imported.
    for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with caplog.at_level("WARNING"):
        callback = MixingWeightsCallback()
    assert "pip install 'hf-embfuse[plot]'" in caplog.text
    trainer = Trainer(
        model=tiny_fused("bert", "sequence-classification"),
        args=tiny_training_args(tmp_path, steps=2),
        train_dataset=TinyTask(),
        callbacks=[callback],
    )
    trainer.train()
    assert (tmp_path / "mixing_weights.json").is_file()
    assert not (tmp_path / "mixing_weights.png").exists()
    history = json.loads((tmp_path / "mixing_weights.json").read_text())
    with pytest.raises(ImportError, match=r"pip install 'hf-embfuse\[plot\]'"):
        plot_mixing_history(history, tmp_path / "plot.png")


@pytest.mark.parametrize("mixing", ["fixed", "learned", "gated"])
def test_statistics_match_the_model_and_subsampling_stays_close(mixing):
    model = tiny_fused("llama", "causal-lm", mixing=mixing)
    embedding = model.get_input_embeddings()
    if mixing == "gated":
        torch.nn.init.normal_(embedding.mixer.gate, std=0.5)
    stats = mixing_statistics(model, max_tokens=None)
    assert stats["mixing"] == mixing
    assert torch.allclose(torch.tensor(stats["mean"]).float(), embedding.mean_mixing_weights(), atol=1e-6)
    assert (stats["gate_norm"] is None) == (mixing != "gated")
    every_token = embedding.mix(torch.arange(embedding.num_embeddings))[1].double()
    assert torch.allclose(
        torch.tensor(stats["std"], dtype=torch.float64), every_token.std(dim=0, unbiased=False), atol=1e-6
    )
    sampled = mixing_statistics(model, max_tokens=50)
    assert torch.allclose(torch.tensor(sampled["mean"]), torch.tensor(stats["mean"]), atol=0.15)


def name_sources(model, *names):
    for entry, name in zip(model.config.sources, names, strict=True):
        entry["name"] = name
    return model


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (
            (
                "/home/someone/models/all-MiniLM-L6-v2/",
                "sentence-transformers/all-mpnet-base-v2",
                "/data/_glove.txt",
            ),
            ["all-MiniLM-L6-v2", "sentence-transformers/all-mpnet-base-v2", "glove.txt"],
        ),
        (
            ("/abs/minilm", "C:\\models\\minilm", "word vectors.vec"),
            ["minilm", "minilm-1", "word_vectors.vec"],
        ),
        (("", "_", "BertModel"), ["base", "source1", "BertModel"]),
    ],
)
def test_source_names_are_readable_and_never_start_with_an_underscore(names, expected):
    model = name_sources(tiny_fused("bert"), *names)
    assert source_names(model, 3) == expected


def test_the_plot_legend_names_every_source_the_base_included(tmp_path):
    from hf_embfuse.training import mixing_history_figure

    model = name_sources(
        tiny_fused("bert", "sequence-classification"),
        str(tmp_path / "base-model"),
        "org/source-a",
        "/x/_source b",
    )
    trainer = Trainer(
        model=model,
        args=tiny_training_args(tmp_path),
        train_dataset=TinyTask(),
        callbacks=[MixingWeightsCallback()],
    )
    trainer.train()
    history = json.loads((tmp_path / "mixing_weights.json").read_text())
    legend = [text.get_text() for text in mixing_history_figure(history).axes[0].get_legend().get_texts()]
    assert legend == history["sources"] == ["base-model", "org/source-a", "source_b"]
    # A history written with the old munged names (`_tmp_..._base-model`) still gets every entry.
    old = {**history, "sources": ["_tmp_base", "org_source-a", "_x__source_b"]}
    old["history"] = [
        {**r, "mean": dict(zip(old["sources"], r["mean"].values(), strict=True))} for r in history["history"]
    ]
    old_legend = mixing_history_figure(old).axes[0].get_legend().get_texts()
    assert [text.get_text() for text in old_legend] == ["tmp_base", "org_source-a", "x__source_b"]


def test_resume_from_checkpoint_keeps_the_mixing_history_before_the_checkpoint(tmp_path):
    def trainer(restore=False):
        args = tiny_training_args(
            tmp_path,
            learning_rate=5e-2,
            save_strategy="steps",
            save_steps=2,
            restore_callback_states_from_checkpoint=restore,
        )
        model = tiny_fused("bert", "sequence-classification")
        return Trainer(model=model, args=args, train_dataset=TinyTask(), callbacks=[MixingWeightsCallback()])

    trainer().train()
    uninterrupted = json.loads((tmp_path / "mixing_weights.json").read_text())["history"]
    assert [record["step"] for record in uninterrupted] == [0, 2, 4]
    # Whether or not the Trainer restores callback states itself (it then re-creates the callback).
    for restore in (False, True):
        (tmp_path / "mixing_weights.json").unlink()
        resumed = trainer(restore)
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
        history = json.loads((tmp_path / "mixing_weights.json").read_text())["history"]
        assert [record["step"] for record in history] == [0, 2, 4]
        assert history[0] == uninterrupted[0]  # logged before the checkpoint, by the first run
        for record, expected in zip(history[1:], uninterrupted[1:], strict=True):
            assert record["mean"] == pytest.approx(expected["mean"], abs=1e-6)
