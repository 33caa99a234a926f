"""Step 4 of the build: the changed tables made chunk by chunk, then installed in memory or streamed to disk.

Every table the build changes is a mixture of row sources (see `tables.py`), made in the base's dtype:

- **source 0** (the base's input table on the target rows): the base's own rows where it has them, the donors'
  build-time mixture where it does not (masked in the learned mixture, but what a head tied to it predicts),
  the base's mean row where nobody has anything;
- **each donor's table**: transport / omp rows read from the base's input table, or its own rows (linear,
  identity) for a map applied at run time;
- **a rebuilt head**: the base's head rows (its own piece rule) mixed with the donors' rows carried into the
  base's output space by the same plans; **an output bias** likewise.

`Assembly.model()` installs them into the base model in memory (`fuse`); `Assembly.write()` builds the wrapper
on the meta device and writes the checkpoint with `checkpoint_stream.write_checkpoint`: the changed tables one
at a time, every other tensor copied byte for byte from the base's shards (`build_to_folder`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .alignment import AlignedSource
from .base_checkpoint import BaseCheckpoint
from .checkpoint_stream import StoredTensor, write_checkpoint
from .configuration_embfuse import EmbFuseConfig
from .layout import BaseLayout
from .modeling_embfuse import EmbFusePreTrainedModel, Mixer
from .projection import Projection
from .recipe import FuseConfig
from .tables import ConstantRow, Layer, MappedRows, PlannedRows, mixed_table
from .transfer.install import install_tables
from .transfer.report import format_rows, row_counts
from .transfer.target import Target
from .wrap import SourceSpec, embedding_state, from_base

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MEAN_CHUNK = 65536


@dataclass
class DonorTables:
    """One source after alignment and projection.

    Attributes:
        aligned: its rows on the target vocabulary, in its own space.
        coverage: the target rows it fills.
        projection: how it reaches the base space.
        weight: its initial mixing weight.
        info: provenance for the config.
    """

    aligned: AlignedSource
    coverage: torch.Tensor
    projection: Projection
    weight: float
    info: dict[str, Any]

    def input_rows(self, layout: BaseLayout) -> MappedRows | PlannedRows:
        """Its rows in the base's input space."""
        if self.projection.plan is not None:
            return PlannedRows(
                self.projection.plan.reindexed(layout.base_row, layout.input_table.shape[0]),
                layout.input_table,
            )
        linear = self.projection.linear
        return MappedRows(self.aligned.table, *((linear.weight, linear.bias) if linear is not None else ()))

    def head_rows(self, layout: BaseLayout) -> PlannedRows | None:
        """Its rows carried into the base's output space (plans only: a map fitted on input rows says nothing there)."""
        plan = self.projection.head_plan
        if plan is None:
            return None
        return PlannedRows(plan.reindexed(layout.base_row, layout.head_table.shape[0]), layout.head_table)


class Assembly:
    """The tables of one build, made on demand (see the module docstring)."""

    def __init__(
        self, base: BaseCheckpoint, target: Target, layout: BaseLayout, recipe: FuseConfig, base_name: str
    ) -> None:
        self.base, self.target, self.layout, self.recipe, self.base_name = (
            base,
            target,
            layout,
            recipe,
            base_name,
        )
        self.donors: list[DonorTables] = []

    def add(self, donor: DonorTables) -> None:
        self.donors.append(donor)

    # --- the tables -----------------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        return self.base.width

    def _donors_have(self) -> torch.Tensor:
        """Target rows at least one donor fills."""
        covered = torch.zeros(self.layout.num_rows, dtype=torch.bool)
        for donor in self.donors:
            covered |= donor.coverage
        return covered

    def _nobody(self) -> torch.Tensor:
        """Target rows neither the base nor any donor has."""
        return ~(self.layout.coverage | self._donors_have())

    def base_coverage(self) -> torch.Tensor:
        """Source 0's coverage: its own rows, and the mean rows it gives what nobody has."""
        return self.layout.coverage | self._nobody()

    def input_table(self) -> torch.Tensor:
        """Source 0 on the target rows, in the base's dtype."""
        layout = self.layout
        if layout.plain:
            return layout.input_table  # every row is its own: nothing to make
        lacks = (~layout.coverage).float()
        layers = [Layer(PlannedRows(layout.input_bags, layout.input_table), layout.coverage.float())]
        layers += [Layer(d.input_rows(layout), d.weight * d.coverage.float() * lacks) for d in self.donors]
        layers.append(Layer(ConstantRow(_mean_row(layout.input_table)), self._nobody().float()))
        return mixed_table(layers, layout.num_rows, self.width, self.base.dtype)

    def head_table(self) -> torch.Tensor | None:
        """The rebuilt head on the target rows (`None` unless the head is rebuilt)."""
        layout = self.layout
        if not layout.rebuilds_head:
            return None
        layers = [
            Layer(
                PlannedRows(layout.head_bags, layout.head_table),
                self.recipe.base_weight * layout.head_coverage.float(),
            )
        ]
        for donor in self.donors:
            rows = donor.head_rows(layout)
            if rows is not None:
                layers.append(Layer(rows, donor.weight * donor.coverage.float()))
        covered = sum(layer.weight for layer in layers) > 0
        layers.append(Layer(ConstantRow(_mean_row(layout.head_table)), (~covered).float()))
        return mixed_table(layers, layout.num_rows, self.width, self.base.dtype)

    def bias(self) -> torch.Tensor | None:
        """The head's bias on the target rows (`None` unless it has one and the vocabulary changes)."""
        layout = self.layout
        if layout.bias_bags is None:
            return None
        bias = self.base.head_bias()
        column = bias.unsqueeze(1)
        layers = [
            Layer(PlannedRows(layout.bias_bags, column), layout.bias_coverage.float()),
            Layer(ConstantRow(column.float().mean(0)), (~layout.bias_coverage).float()),
        ]
        return mixed_table(layers, layout.num_rows, 1, bias.dtype)[:, 0]

    def donor_table(self, donor: DonorTables) -> torch.Tensor:
        """What the model stores for a donor: its rows in the base space (plans), or its own rows (maps)."""
        dtype = _DTYPES[self.recipe.source_dtype]
        if donor.projection.plan is None:
            return donor.aligned.table.to(dtype)
        layer = Layer(donor.input_rows(self.layout), donor.coverage.float())
        return mixed_table([layer], self.layout.num_rows, self.width, dtype)

    # --- the model -----------------------------------------------------------------------------------------

    def _specs(self, table: Callable[[DonorTables], torch.Tensor]) -> list[SourceSpec]:
        specs = []
        for donor in self.donors:
            linear = donor.projection.linear
            info = {**donor.info, "projection_fit": donor.projection.report}
            specs.append(
                SourceSpec(
                    table(donor),
                    donor.coverage,
                    projection="linear" if linear is not None else "identity",
                    projection_weight=None if linear is None else linear.weight,
                    projection_bias=None if linear is None else linear.bias,
                    initialization=donor.projection.method,
                    info=info,
                )
            )
        return specs

    def _wrap(self, model: Any, specs: list[SourceSpec]) -> EmbFusePreTrainedModel:
        recipe = self.recipe
        model.name_or_path = model.config.name_or_path = self.base_name
        base_info = None
        if not self.layout.plain:
            base_info = {"target": self.target.to_dict(), "alignment": self.layout.aligned.report.to_dict()}
        return from_base(
            model,
            specs,
            task=self.base.task.name,
            mixing=recipe.mixing,
            fixed_weights=recipe.initial_weights(),
            mixing_temperature=recipe.mixing_temperature,
            regularizer=recipe.regularizer,
            reg_lambda=recipe.reg_lambda,
            train_sources=recipe.train_sources,
            train_projections=recipe.train_projections,
            source_dtype=recipe.source_dtype,
            base_model_name_or_path=self.base_name,
            base_coverage=None if self.layout.plain else self.base_coverage(),
            base_info=base_info,
        )

    def model(self) -> EmbFusePreTrainedModel:
        """The EmbFuse model in memory, the base's own modules reused."""
        kwargs = {"num_labels": self.recipe.num_labels} if self.recipe.num_labels else {}
        with _seeded(self.recipe.seed):  # heads the base lacks are initialised reproducibly
            model = self.base.materialised(**kwargs)
        if not self.layout.plain:
            install_tables(
                model,
                self.target.saved_tokenizer,
                self.input_table(),
                head_mode=self.layout.head_mode,
                head_table=self.head_table(),
                bias=self.bias(),
            )
        self._log_rows()
        return self._wrap(model, self._specs(self.donor_table))

    def write(self, folder: str | Path) -> tuple[dict[str, Any], torch.Tensor]:
        """Write the checkpoint into `folder`, streaming the body; return the config and the mean mixing weights."""
        if self.base.stored is None:  # a base held in memory (GGUF, a Hub id): saved the ordinary way
            model = self.model()
            model.save_pretrained(folder)
            return model.config.to_dict(), model.get_input_embeddings().mean_mixing_weights()
        layout, skeleton = self.layout, self.base.skeleton
        if not layout.plain:
            install_tables(
                skeleton,
                self.target.saved_tokenizer,
                _meta(layout.num_rows, self.width, self.base.dtype),
                head_mode=layout.head_mode,
                head_table=_meta(layout.num_rows, self.width, self.base.dtype)
                if layout.rebuilds_head
                else None,
                bias=None if layout.bias_bags is None else torch.empty(layout.num_rows, device="meta"),
            )
        dtype = _DTYPES[self.recipe.source_dtype]
        specs = self._specs(
            lambda d: _meta(
                layout.num_rows, d.aligned.table.shape[1] if d.projection.plan is None else self.width, dtype
            )
        )
        wrapper = self._wrap(skeleton, specs)
        wrapper.save_pretrained(folder, state_dict={})  # config, generation config, code files
        for stale in Path(folder).glob("model*.safetensors*"):
            stale.unlink()
        copies, tensors, coverage = self._checkpoint_contents(wrapper)
        self._log_rows()
        write_checkpoint(folder, copies, tensors)
        return wrapper.config.to_dict(), _mean_mixing_weights(wrapper.config, coverage, self.width)

    def _checkpoint_contents(
        self, wrapper: EmbFusePreTrainedModel
    ) -> tuple[dict[str, StoredTensor], dict[str, torch.Tensor | Callable[[], torch.Tensor]], torch.Tensor]:
        """Every tensor of the wrapper's checkpoint, copied from the base's files or made here; and the coverage."""
        layout = self.layout
        embedding = wrapper.get_input_embeddings()
        names = {id(p): n for n, p in wrapper.named_parameters(remove_duplicate=False)}
        embedding_name = next(n for n, m in wrapper.named_modules() if m is embedding)
        made: dict[str, torch.Tensor | Callable[[], torch.Tensor]] = {
            f"{embedding_name}.weight": self.input_table
        }
        for index, donor in enumerate(self.donors):
            made[f"{embedding_name}.source_tables.{index}"] = lambda donor=donor: self.donor_table(donor)
        small = embedding_state(
            wrapper.config,
            self._specs(
                lambda d: d.aligned.table if d.projection.plan is None else torch.empty(0, self.width)
            ),
            None if layout.plain else self.base_coverage(),
            layout.num_rows,
            self.width,
            embedding.padding_idx,
        )
        made.update({f"{embedding_name}.{key}": value for key, value in small.items()})
        head = wrapper.get_output_embeddings()
        if layout.rebuilds_head:
            made[names[id(head.weight)]] = self.head_table
        if layout.bias_bags is not None:
            made[names[id(head.bias)]] = self.bias
        copies: dict[str, StoredTensor] = {}
        written = {id(p) for n, p in wrapper.named_parameters(remove_duplicate=False) if n in made}
        prefix = f"{wrapper.base_model_prefix}."
        missing = []
        for name, tensor in wrapper.state_dict(keep_vars=True).items():
            if name in made:
                continue
            if id(tensor) in written:  # a tied alias of a tensor written under its first name
                continue
            stored = self.base.stored_key(name[len(prefix) :] if name.startswith(prefix) else name)
            if stored is not None:
                copies[name] = self.base.stored[stored]
                written.add(id(tensor))
            else:
                missing.append(name)
        made.update(self._initialised(wrapper, missing))
        return copies, made, small["coverage"]

    def _initialised(self, wrapper: EmbFusePreTrainedModel, names: list[str]) -> dict[str, torch.Tensor]:
        """Tensors the base checkpoint lacks (a new classification head): initialised as `from_pretrained` would."""
        if not names:
            return {}
        logger.info("Newly initialised (not in the base checkpoint): %s", ", ".join(names))
        base = wrapper.get_submodule(wrapper.base_model_prefix)
        with _seeded(self.recipe.seed):
            for module_name in sorted({name.rsplit(".", 1)[0] for name in names}):
                module = wrapper.get_submodule(module_name)
                module.to_empty(device="cpu", recurse=False)
                base._init_weights(module)
        state = wrapper.state_dict()  # parameters and buffers alike; the rest are still on the meta device
        return {name: state[name] for name in names}

    # --- reports -------------------------------------------------------------------------------------------

    def _row_counts(self) -> dict[str, dict[str, int]]:
        layout = self.layout
        rows = {}
        if layout.aligned is not None:
            rows["base"] = row_counts(layout.aligned)
            filled = ~layout.coverage & self._donors_have()
            rows["base"].update(
                filled_from_donors=int(filled.sum()), mean_initialised=int(self._nobody().sum())
            )
        for donor in self.donors:
            plan = donor.projection.plan
            rows[donor.info["name"]] = row_counts(
                donor.aligned, plan.stats.n_rows if plan is not None else None
            )
        return rows

    def _log_rows(self) -> None:
        for name, rows in self._row_counts().items():
            logger.info("%s", format_rows(name, rows))

    def transfer_report(self) -> dict[str, Any] | None:
        """JSON-safe: the target, the overlap, the head, and per source what was matched, decomposed, transported,
        left out (`None` for plain fusion)."""
        if self.layout.plain:
            return None
        return {**self.target.to_dict(), **self.layout.report(), "rows": self._row_counts()}


def _meta(rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """A table's shape and dtype only: what the wrapper is built with before its tables are written."""
    return torch.empty(rows, width, dtype=dtype, device="meta")


def _mean_row(table: torch.Tensor) -> torch.Tensor:
    """The mean row in float32, chunk by chunk (no float32 copy of the table)."""
    total = torch.zeros(table.shape[1])
    for start in range(0, table.shape[0], _MEAN_CHUNK):
        total += table[start : start + _MEAN_CHUNK].float().sum(0)
    return total / max(table.shape[0], 1)


def _mean_mixing_weights(config: EmbFuseConfig, coverage: torch.Tensor, width: int) -> torch.Tensor:
    """Each source's initial mixing weight averaged over the vocabulary (the gate starts at zero, so the weights
    depend on coverage alone)."""
    mixer = Mixer(config, width)
    total = torch.zeros(coverage.shape[1])
    with torch.no_grad():
        for start in range(0, coverage.shape[0], _MEAN_CHUNK):
            part = coverage[start : start + _MEAN_CHUNK]
            vectors = torch.zeros(part.shape[0], part.shape[1], width)
            weights = mixer(vectors, part, mixer.fixed_weights, float(config.mixing_temperature))
            total += weights.sum(0)
    return total / max(coverage.shape[0], 1)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's RNG for a block and restore it after: the build never reseeds the caller's generator."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield
