"""Build recipes: the arguments of `hf_embfuse.fuse` as a validated YAML file."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .configuration_embfuse import MIXING_MODES, REGULARIZERS, SOURCE_DTYPES
from .modeling_embfuse import TASKS

# The task names come from the one task table; pydantic validates and documents the Literal as usual.
Task = Literal[tuple(task.name for task in TASKS)]  # type: ignore[valid-type]
Projection = Literal["transport", "linear", "identity"]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceRecipe(_Strict):
    """One source: an HF checkpoint (folder or Hub id), a GGUF file, or a static word-vector file."""

    path: str = Field(
        description="Folder, Hub id, .gguf file or vector file; `pkg:NAME/sub` = inside a package."
    )
    name: str | None = Field(None, description="Display name; defaults to the path.")
    kind: Literal["hf", "gguf", "vectors"] | None = Field(None, description="Reader; guessed from the path.")
    revision: str | None = None
    vocab_path: str | None = Field(None, description="Vocabulary file of a `.npy` vector table.")
    projection: Projection = Field("transport", description="How rows are mapped into the base space.")
    weight: float | None = Field(
        None, ge=0, description="Initial mixing weight (all sources share 1 - base_weight)."
    )
    decompose: bool = True
    min_coverage: float = Field(0.01, ge=0, le=1, description="Least share of base content tokens to cover.")
    allow_low_coverage: bool = False
    allow_pickle: bool = Field(
        False, description="Allow unpickling `.bin`/`.pt` weights (weights_only=True)."
    )
    trust_remote_code: bool = Field(False, description="Allow a tokenizer that needs custom code.")
    transport_k: int = Field(10, ge=1)
    transport_temperature: float = Field(0.1, gt=0)


class Recipe(_Strict):
    """Everything `hf-embfuse build` needs; unknown keys are errors."""

    base: str
    task: Task = "base"
    num_labels: int | None = Field(None, ge=1)
    sources: list[SourceRecipe] = Field(min_length=1)
    mixing: str = "learned"
    base_weight: float = Field(0.5, gt=0, le=1, description="Initial weight of the base table.")
    mixing_temperature: float = Field(1.0, gt=0)
    regularizer: str = "none"
    reg_lambda: float = Field(0.0, ge=0)
    train_sources: bool = False
    train_projections: bool = True
    source_dtype: str = "float32"
    seed: int = 0

    @field_validator("mixing")
    @classmethod
    def _mixing(cls, value: str) -> str:
        return _one_of(value, MIXING_MODES)

    @field_validator("regularizer")
    @classmethod
    def _regularizer(cls, value: str) -> str:
        return _one_of(value, REGULARIZERS)

    @field_validator("source_dtype")
    @classmethod
    def _source_dtype(cls, value: str) -> str:
        return _one_of(value, SOURCE_DTYPES)

    @model_validator(mode="after")
    def _weights(self) -> Recipe:
        given = [s.weight for s in self.sources if s.weight is not None]
        if given and len(given) != len(self.sources):
            raise ValueError("give `weight` for every source or for none")
        if given and abs(sum(given) + self.base_weight - 1) > 1e-4:
            raise ValueError(
                f"base_weight + source weights must sum to 1, got {self.base_weight + sum(given):.6g}"
            )
        return self

    def initial_weights(self) -> list[float]:
        """Initial mixing weights, base first; sources share `1 - base_weight` unless given."""
        if self.sources[0].weight is not None:
            return [self.base_weight, *(s.weight for s in self.sources)]
        share = (1.0 - self.base_weight) / len(self.sources)
        return [self.base_weight, *([share] * len(self.sources))]


def _one_of(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(map(repr, allowed))}")
    return value


def resolve_path(path: str, relative_to: Path | None = None) -> str:
    """Expand `$VARS` and `~`, resolve `pkg:NAME/sub/path` inside an installed package, and make a
    relative path relative to the recipe's folder. Anything that is not a local path (a Hub id) is
    returned unchanged."""
    path = os.path.expanduser(os.path.expandvars(path))
    if path.startswith("pkg:"):
        package, _, inner = path[len("pkg:") :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RecipeError(f"`{path}`: package {package!r} is not installed (pip install it, see README).")
        return str(Path(spec.submodule_search_locations[0]) / inner)
    if relative_to is not None and not os.path.isabs(path) and (relative_to / path).exists():
        return str(relative_to / path)
    return path


def parse_recipe(data: Any, relative_to: Path | None = None) -> Recipe:
    """Validate a recipe given as a mapping; errors name the key, e.g. `sources.1.projection`."""
    if not isinstance(data, dict):
        raise RecipeError(f"A recipe must be a mapping of keys to values, got {type(data).__name__}.")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"]) or "(recipe)"
            message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"  {key}: {message}")
        raise RecipeError("Invalid recipe:\n" + "\n".join(problems)) from None
    sources = [s.model_copy(update={"path": resolve_path(s.path, relative_to)}) for s in recipe.sources]
    vocab = [
        s.model_copy(update={"vocab_path": resolve_path(s.vocab_path, relative_to)}) if s.vocab_path else s
        for s in sources
    ]
    return recipe.model_copy(update={"base": resolve_path(recipe.base, relative_to), "sources": vocab})


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a YAML recipe file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"Recipe file {str(path)!r} is not valid YAML: {error}") from None
    return parse_recipe(data, relative_to=path.resolve().parent)
