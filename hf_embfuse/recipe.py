"""Build recipes: the arguments of `hf_embfuse.fuse` as a validated YAML file."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .configuration_embfuse import MIXING_MODES, REGULARIZERS, SOURCE_DTYPES
from .modeling_embfuse import TASKS

# The task names come from the one task table; pydantic validates and documents the Literal as usual.
Task = Literal[tuple(task.name for task in TASKS)]  # type: ignore[valid-type]
Projection = Literal["transport", "omp", "linear", "identity"]
PieceRule = Literal["mean", "first", "last"]
# The head may also take no piece rows at all: its new rows then come from the donors alone.
OutputPieceRule = Literal["mean", "first", "last", "none"]
# Roles an added special token can take: the tokenizer attribute it becomes (`additional` = one more
# control token, e.g. a chat marker, in `additional_special_tokens`).
Role = Literal["bos", "eos", "unk", "pad", "mask", "cls", "sep", "additional"]
SPECIAL_ROLES: tuple[str, ...] = get_args(Role)
HUB_ID_PATTERN = r"^[\w.-]+/[\w.-]+$"  # `namespace/name`; the card names such models in `base_model`


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _paths_as_strings(cls, data: Any) -> Any:
        # Every path field is a string (a Hub id is one too); a `pathlib.Path` given for one is its string.
        if isinstance(data, dict):
            return {
                key: os.fspath(value) if isinstance(value, os.PathLike) else value
                for key, value in data.items()
            }
        return data


class SourceRecipe(_Strict):
    """One source: an HF checkpoint (folder or Hub id), a GGUF file, or a static word-vector file."""

    path: str = Field(
        description="Folder, Hub id, .gguf file or vector file; `pkg:NAME/sub` = inside a package."
    )
    name: str | None = Field(None, description="Display name; defaults to the path.")
    hub_id: str | None = Field(
        None,
        pattern=HUB_ID_PATTERN,
        description="Hub id (`namespace/name`) it came from, for the model card.",
    )
    kind: Literal["hf", "gguf", "vectors"] | None = Field(None, description="Reader; guessed from the path.")
    revision: str | None = None
    vocab_path: str | None = Field(None, description="Vocabulary file of a `.npy` vector table.")
    projection: Projection = Field(
        "transport",
        description="How rows are mapped into the base space: transport (k nearest anchors), omp (sparse "
        "coding over the anchors), linear or identity.",
    )
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
    transport_k: int = Field(10, ge=1, description="Anchors per row (transport), atoms per row (omp).")
    transport_temperature: float = Field(0.1, gt=0)


class AddedTokenRecipe(_Strict):
    """One token to add to the base tokenizer; a special token needs its role."""

    content: str = Field(min_length=1)
    special: bool = False
    role: Role | None = Field(None, description="The special token's role; implies `special`.")

    @model_validator(mode="after")
    def _role(self) -> AddedTokenRecipe:
        if self.special and self.role is None:
            raise ValueError(
                f"special token {self.content!r} has no role; give `role:` one of {', '.join(SPECIAL_ROLES)}"
            )
        return self

    @property
    def is_special(self) -> bool:
        return self.special or self.role is not None


class Recipe(_Strict):
    """Everything `hf-embfuse build` needs; unknown keys are errors."""

    base: str
    base_hub_id: str | None = Field(
        None, pattern=HUB_ID_PATTERN, description="Hub id of the base, when `base` is a local folder."
    )
    task: Task = "base"
    num_labels: int | None = Field(None, ge=1)
    sources: list[SourceRecipe] = Field(
        default_factory=list,
        description="Donor tables; none with a target vocabulary builds it from the base's own pieces (FVT).",
    )
    mixing: str = "learned"
    base_weight: float = Field(0.5, gt=0, le=1, description="Initial weight of the base table.")
    mixing_temperature: float = Field(1.0, gt=0)
    regularizer: str = "none"
    reg_lambda: float = Field(0.0, ge=0)
    train_sources: bool = False
    train_projections: bool = True
    source_dtype: str = "float32"
    seed: int = 0
    tokenizer: str | None = Field(
        None,
        description="Target vocabulary: a tokenizer folder, Hub id or .gguf file, or `source:N` (the tokenizer "
        "of source N, 1 = the first in `sources`); the base's own when left out.",
    )
    added_tokens: list[AddedTokenRecipe] = Field(
        default_factory=list,
        description="Tokens added to the target: `TOKEN`, or `{content, role}` for a special one.",
    )
    added_tokens_file: str | None = Field(
        None,
        description="A UTF-8 file of tokens to add, one per line: `TOKEN`, or `TOKEN<TAB>ROLE` for a special one.",
    )
    min_overlap: float = Field(
        0.01, ge=0, le=1, description="Least share of target tokens the base must have."
    )
    allow_low_overlap: bool = False
    output_head: Literal["auto", "tied", "untied"] = Field(
        "auto",
        description="LM head over a new vocabulary: tied to source 0 (the base's table), or untied and rebuilt "
        "as the mixture; auto = untied (measured better).",
    )
    donor_rows: Literal["new", "all"] = Field(
        "new",
        description="Target rows the donors cover: `new`, only those the base does not have one to one (its own "
        "rows are kept exactly), or `all` the rows they have.",
    )
    # "mean" measured a little better than tokensurgeon's "last" for SmolLM2 -> Gemma-3 (1.141x vs 1.149x).
    input_pieces: PieceRule = Field("mean", description="How the base's pieces make a new input row.")
    output_pieces: OutputPieceRule = Field(
        "mean",
        description="How the base's pieces make a new output row; `none`: the head's new rows are the donors' alone.",
    )

    @field_validator("added_tokens", mode="before")
    @classmethod
    def _added_tokens(cls, value: Any) -> Any:
        # A bare string is a plain token: `- "photosynthesis"`.
        if isinstance(value, list):
            return [{"content": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("source:"):
            number = value[len("source:") :]
            if not number.isdigit() or int(number) < 1:
                raise ValueError("`source:N` needs N >= 1, the position of a source in `sources`")
        return value

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
        if self.target_source is not None and self.target_source > len(self.sources):
            raise ValueError(f"tokenizer {self.tokenizer!r}: there are only {len(self.sources)} sources")
        if not self.sources and not self.transfers_vocabulary:
            raise ValueError(
                "no sources and no target vocabulary: nothing to build; give `sources`, or a `tokenizer` / "
                "`added_tokens` to build the new vocabulary from the base's own pieces"
            )
        return self

    @property
    def target_source(self) -> int | None:
        """N of `tokenizer: source:N` (1 = the first source), else `None`."""
        if self.tokenizer is None or not self.tokenizer.startswith("source:"):
            return None
        return int(self.tokenizer[len("source:") :])

    @property
    def transfers_vocabulary(self) -> bool:
        """Whether the model's vocabulary is a target tokenizer's rather than the base's own."""
        return self.tokenizer is not None or bool(self.added_tokens) or self.added_tokens_file is not None

    def initial_weights(self) -> list[float]:
        """Initial mixing weights, base first; sources share `1 - base_weight` unless given."""
        if not self.sources:
            return [1.0]
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


def validate_recipe(data: dict[str, Any], what: str = "recipe") -> Recipe:
    """`Recipe.model_validate(data)`, with errors that name each key (`sources.1.projection: ...`) instead
    of pydantic's traceback; `what` names the input in the message (`recipe`, `fuse() arguments`)."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"]) or "(recipe)"
            message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"  {key}: {message}")
        raise RecipeError(f"Invalid {what}:\n" + "\n".join(problems)) from None


def parse_recipe(data: Any, relative_to: Path | None = None) -> Recipe:
    """Validate a recipe given as a mapping; errors name the key, e.g. `sources.1.projection`."""
    if not isinstance(data, dict):
        raise RecipeError(f"A recipe must be a mapping of keys to values, got {type(data).__name__}.")
    recipe = validate_recipe(data)
    sources = [s.model_copy(update={"path": resolve_path(s.path, relative_to)}) for s in recipe.sources]
    vocab = [
        s.model_copy(update={"vocab_path": resolve_path(s.vocab_path, relative_to)}) if s.vocab_path else s
        for s in sources
    ]
    update: dict[str, Any] = {"base": resolve_path(recipe.base, relative_to), "sources": vocab}
    if recipe.tokenizer is not None and recipe.target_source is None:
        update["tokenizer"] = resolve_path(recipe.tokenizer, relative_to)
    if recipe.added_tokens_file is not None:
        update["added_tokens_file"] = resolve_path(recipe.added_tokens_file, relative_to)
    return recipe.model_copy(update=update)


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
